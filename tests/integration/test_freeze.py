"""A frozen primary in passthrough mode (issue 23): a startup that waits on it moves to the new writer at the
failover, instead of waiting out its client's connect timeout; sessions established on it end at once."""

from __future__ import annotations

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
