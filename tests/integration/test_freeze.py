"""A frozen primary: in passthrough mode (issue 23), a startup that waits on it moves to the new writer at the
failover, instead of waiting out its client's connect timeout; sessions established on it end at once. And a
frozen primary that wakes up during the failover hands no replica WAL the new writer lacks."""

from __future__ import annotations

import os
import signal
import threading
import time

import psycopg
import pytest

from tests.helpers import service_config, wait_until
from tests.integration.test_heal import _full, _wait_full

pytestmark = pytest.mark.integration


class Opener:
    """Opens a connection every 100 ms (10 s connect and statement timeouts, as the issue's clients), each in
    its own thread; records when each began, and when it ran a query on a writer or failed."""

    def __init__(self, dsn: str) -> None:
        self.dsn, self.results, self.stopping = dsn, [], threading.Event()
        self.threads: list[threading.Thread] = []
        self.opener = threading.Thread(target=self._open, daemon=True)
        self.opener.start()

    def _open(self) -> None:
        while not self.stopping.wait(0.1):
            thread = threading.Thread(target=self._one, daemon=True)
            self.threads.append(thread)
            thread.start()

    def _one(self) -> None:
        began = time.time()
        try:
            with psycopg.connect(self.dsn, connect_timeout=10, options="-c statement_timeout=10000") as conn:
                recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            self.results.append((began, time.time(), None if not recovery else "a replica"))
        except psycopg.Error as exc:
            self.results.append((began, time.time(), str(exc).splitlines()[0]))

    def stop(self) -> list[tuple[float, float, str | None]]:
        self.stopping.set()
        self.opener.join(5)
        for thread in self.threads:
            thread.join(15)
        return sorted(self.results)


def test_connections_opened_while_the_primary_is_frozen_reach_the_new_writer_within_3_5_s(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2)
    config = service_config(cluster, monitor={"probe_interval": 0.5}, heal={"enabled": True, "backoff": 0.2})
    svc = service(config, cluster=cluster)
    _wait_full(svc, "a fully redundant cluster", 30)
    worst = []
    for round_number in range(5):
        old = cluster.node(svc.topology.writer)
        opener = Opener(svc.dsn("writer"))
        for _ in wait_until("a connection before the freeze", 10):
            if any(error is None for _, _, error in opener.results):
                break
        frozen = time.time()
        old.pause()
        try:
            for _ in wait_until(f"round {round_number}: a failover away from the frozen {old.name}", 20):
                if svc.topology.writer not in (None, old.name):
                    break
            for _ in wait_until("connections opened after the failover to succeed", 10):
                if any(began > time.time() - 1 and error is None for began, _, error in opener.results):
                    break
        finally:
            results = opener.stop()
            old.resume()
        after = [(began, done, error) for began, done, error in results if began >= frozen]
        assert after, "no connection was opened after the freeze"
        failed = [error for _, _, error in after if error is not None]
        assert not failed, f"round {round_number}: {failed[:3]}"
        reached = max(done for _, done, _ in after) - frozen  # the last to succeed began during the freeze
        worst.append(round(reached, 2))
        assert reached <= 3.5, f"round {round_number}: a connection reached a writer {reached:.2f} s after the freeze"
        _wait_full(svc, f"round {round_number}: {old.name} rejoined before the next freeze", 40)
    print(f"connections opened during the freeze reached the new writer at most {worst} s after it")
    assert _full(svc)


def test_a_frozen_primary_waking_during_the_failover_hands_no_replica_wal_the_new_writer_lacks(fresh_cluster, service):
    """The primary's walsenders stop first, so that a table it then creates (synchronous_commit = local) is
    flushed there and sent nowhere; then the whole primary freezes. Right after the failover's decision, the
    walsender to the replica that is not the candidate wakes up: before the monitor detached replicas ahead of
    the promotion, that replica received the table, forked off the new writer's timeline and stayed there."""
    cluster = fresh_cluster(replicas=2)
    svc = service(service_config(cluster, monitor={"probe_interval": 0.5}), cluster=cluster)
    _wait_full(svc, "a fully redundant cluster", 30)
    old = cluster.node(svc.topology.writer)
    senders = dict(row.split("|") for row in old.sql("SELECT application_name, pid FROM pg_stat_replication").split())
    assert len(senders) == 2, senders
    for pid in senders.values():
        os.kill(int(pid), signal.SIGSTOP)
    try:
        old.sql("SET synchronous_commit = local; CREATE TABLE late AS SELECT generate_series(1, 1000) AS x")
        old.pause()
        for _ in wait_until("the failover's decision", 20, interval=0.005):
            started = [e for e in svc.events.recent() if e["kind"] == "failover_started"]
            if started:
                break
        other = next(name for name in senders if name != started[0]["candidate"])
        os.kill(int(senders[other]), signal.SIGCONT)  # wakes up, and sends the table if `other` still listens
        for _ in wait_until("a new writer", 20):
            if svc.topology.writer not in (None, old.name):
                break
    finally:
        old.resume()
    writer = cluster.node(svc.topology.writer)
    timeline = int(writer.sql("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"))
    replica = cluster.node(next(name for name in senders if name != writer.name))
    for _ in wait_until(f"{replica.name} streaming the new writer's timeline {timeline}", 8, interval=0.1):
        if replica.sql("SELECT status || ' ' || received_tli FROM pg_stat_wal_receiver") == f"streaming {timeline}":
            break
    assert not [e for e in svc.events.recent() if e["kind"] == "rejoin" and replica.name in e["reason"]]
    has_late = [node.sql("SELECT to_regclass('late') IS NOT NULL") for node in (writer, replica)]
    assert has_late[0] == has_late[1], f"{writer.name} and {replica.name} disagree on the late table: {has_late}"
