"""Quorum commit under double faults: no acknowledged commit is lost, and refusals say why (issue 9)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import asyncpg
import pytest

from tests.helpers import admin_tokens, ids_on, observe, service_config, wait_until

PGAURORA = [sys.executable, "-m", "pgaurora"]


@contextmanager
def _walreceiver_paused(node, primary):
    """SIGSTOP the node's WAL receiver only: the node answers probes, but acknowledges nothing. Once the
    primary's walsender gives up on it (wal_sender_timeout), nothing more is even sent to it, so WAL
    written from then on cannot reach it from a socket buffer when it resumes."""
    pid = None
    for _ in wait_until(f"{node.name}'s WAL receiver", 10):
        pid = node.sql("SELECT pid FROM pg_stat_wal_receiver")
        if pid:
            break
    os.kill(int(pid), signal.SIGSTOP)
    gone = f"SELECT count(*) FROM pg_stat_replication WHERE application_name = '{node.name}'"
    for _ in wait_until(f"the primary's walsender to give up on {node.name}", 15):
        if primary.sql(gone) == "0":
            break
    try:
        yield
    finally:
        try:
            os.kill(int(pid), signal.SIGCONT)
        except ProcessLookupError:
            pass


def _more_acks(loops, count: int, what: str) -> None:
    """Wait until the write loops got `count` more acknowledgements than now."""
    before = sum(len(w.acked) for w in loops)
    for _ in wait_until(what, 20):
        if sum(len(w.acked) for w in loops) > before + count:
            break


def _kinds(svc) -> list[str]:
    return [e["kind"] for e in svc.events.recent()]


def _cli(svc, *args, token: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PGAURORA_ADMIN_TOKEN": token} if token else None
    return subprocess.run(
        [*PGAURORA, *args, "--admin", svc.admin_url], capture_output=True, text=True, timeout=120, env=env
    )


def test_primary_and_the_acknowledging_standby_dying_together_block_failover_until_it_returns(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2)
    svc = service(service_config(cluster, proxy={"failover_connect_timeout": 2.0}), cluster=cluster)
    n1, n2, n3 = cluster.nodes
    loops = [svc.write_loop(f"numbers{i}") for i in range(3)]
    try:
        for w in loops:
            w.wait_acked(20)
        with _walreceiver_paused(n3, n1):
            _more_acks(loops, 300, "n2 alone to acknowledge commits")
            n1.kill()
            n2.kill()
        for _ in wait_until("the monitor to refuse the failover", 15):
            if "failover_blocked" in _kinds(svc):
                break
        blocked = next(e for e in svc.events.recent() if e["kind"] == "failover_blocked")
        assert "n2 is unreachable; n3 cannot prove it has every acknowledged commit" in blocked["reason"]
        assert "pgaurora failover --to n3 --accept-data-loss" in blocked["reason"]
        for _ in observe("no promotion while n2 is away", 3):
            assert svc.topology.writer == "n1" and n3.sql("SELECT pg_is_in_recovery()") == "t"
        status = json.loads(_cli(svc, "status", "--json").stdout)
        assert status["failover_safe"] is False and status["voters"] == ["n2", "n3"]
        with pytest.raises(asyncpg.CannotConnectNowError) as refused:  # 57P03, after failover_connect_timeout
            host, port = svc.writer
            asyncio.run(asyncpg.connect(host=host, port=port, user="postgres", password="test-pw", timeout=10))
        assert "cannot prove" in refused.value.detail

        n2.start()
        for _ in wait_until("n2, the most advanced node, to be promoted", 30):
            if svc.topology.writer == "n2":
                break
    finally:
        for w in loops:
            w.stop()
    for i, w in enumerate(loops):
        lost = w.acked_ids() - ids_on(n2, f"numbers{i}")
        assert not lost, f"lost {len(lost)} acknowledged commits in numbers{i}"


def test_shrunk_quorum_with_a_standby_behind_refuses_then_accept_data_loss_records_the_bound(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2)
    tokens, token = admin_tokens(cluster.root.parent, ops="operate", boss="admin")
    svc = service(service_config(cluster, admin={"tokens": tokens}), cluster=cluster)
    n1, n2, n3 = cluster.nodes
    writes = svc.write_loop()
    try:
        writes.wait_acked(20)
        with _walreceiver_paused(n3, n1):
            _more_acks([writes], 100, "n2 alone to acknowledge commits")
            n2.kill()
            for _ in wait_until("the sync set to shrink to n3", 15):
                if svc.topology.sync_standbys == "ANY 1 (n3)":
                    break
            for _ in observe("n2 to stay a voter while n3 is behind", 2):
                assert svc.topology.voters == ("n2", "n3")
            n1.kill()
            for _ in wait_until("the monitor to refuse the failover", 15):
                if "failover_blocked" in _kinds(svc):
                    break
        for _ in observe("no promotion once n3 runs again, for it cannot catch up from a dead primary", 2):
            assert svc.topology.writer == "n1"
        plain = _cli(svc, "failover", "--to", "n3", token=token["ops"])
        assert plain.returncode == 1 and "cannot prove it has every acknowledged commit" in plain.stderr
        weak = _cli(svc, "failover", "--to", "n3", "--accept-data-loss", token=token["ops"])
        assert weak.returncode == 1 and "needs the admin scope; token 'ops' has operate" in weak.stderr
        forced = _cli(svc, "failover", "--to", "n3", "--accept-data-loss", token=token["boss"])
        assert forced.returncode == 0, forced.stderr
    finally:
        writes.stop()
    event = json.loads(forced.stdout)
    assert (event["new_writer"], event["forced"]) == ("n3", True)
    assert event["loss_bound_bytes"] > 0
    unsafe = next(e for e in svc.events.recent() if e["kind"] == "failover_unsafe")
    audit = [e for e in svc.events.recent() if e["kind"] == "audit" and e["request"] == "POST /failover"]
    assert [(e["token"], e["phase"], e.get("status")) for e in audit] == [
        ("ops", "requested", None),
        ("ops", "answered", 409),
        ("boss", "requested", None),
        ("boss", "answered", 200),
    ]
    assert unsafe["loss_bound_bytes"] == event["loss_bound_bytes"]
    status = json.loads(_cli(svc, "status", "--json").stdout)
    assert status["last_unsafe_failover"]["loss_bound_bytes"] == event["loss_bound_bytes"]
    assert "may be lost" in _cli(svc, "status").stdout
    lost = writes.acked_ids() - ids_on(n3)
    assert lost, "n3 missed the commits n2 alone acknowledged: this failover did lose data, as it said"


def test_a_standby_that_caught_up_before_the_voters_shrank_is_promoted_with_nothing_lost(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2)
    svc = service(service_config(cluster), cluster=cluster)
    n1, n2, n3 = cluster.nodes
    writes = svc.write_loop()
    try:
        writes.wait_acked(20)
        n2.kill()
        for _ in wait_until("the voters to shrink to n3 once it has caught up", 15):
            if svc.topology.voters == ("n3",) and svc.topology.failover_safe:
                break
        _more_acks([writes], 20, "commits acknowledged by n3 alone")
        n1.kill()
        for _ in wait_until("n3 to be promoted", 15):
            if svc.topology.writer == "n3":
                break
    finally:
        writes.stop()
    assert not writes.acked_ids() - ids_on(n3)
    assert "failover_blocked" not in _kinds(svc)
