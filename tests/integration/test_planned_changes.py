"""Planned changes under load through transaction-pooled endpoints cost clients no error (issue 23): a rolling
restart with a new setting (its switchover included), and a replica removed from under the reader endpoint."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import psycopg
import pytest

from tests.helpers import admin, service_config, wait_until

pytestmark = pytest.mark.integration

ENV = {**os.environ, "PGPASSWORD": "test-pw", "PGUSER": "postgres"}


def _serving(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2)
    pool = {"pool_size": 8, "auth_user": "pgaurora_auth", "auth_password": cluster.auth_password}
    modes = {"writer": {"pool_mode": "transaction"}, "reader": {"pool_mode": "transaction"}}
    svc = service(service_config(cluster, pool=pool, **modes), cluster=cluster)
    primary = cluster.primary
    subprocess.run(["pgbench", "-i", "-q", "-h", primary.host, "-p", str(primary.port), "postgres"], check=True,
                   env=ENV, capture_output=True)  # fmt: skip
    return cluster, svc


def _pgbench(address: tuple[str, int], seconds: int, logs: Path, *extra: str) -> subprocess.Popen:
    host, port = address
    return subprocess.Popen(
        ["pgbench", "-n", "-c", "32", "-j", "2", "-T", str(seconds), "-l", f"--log-prefix={logs}/tx", *extra,
         "-h", host, "-p", str(port), "postgres"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip


def _no_failure(bench: subprocess.Popen, logs: Path) -> float:
    """Checks that pgbench failed nothing and aborted no client; the worst transaction latency, in seconds."""
    out, err = bench.communicate(timeout=180)
    assert bench.returncode == 0, err
    assert "number of failed transactions: 0" in out, out
    assert "aborted" not in err, err
    worst = max(int(line.split()[2]) for path in logs.glob("tx.*") for line in path.read_text().splitlines())
    tps = next(line for line in out.splitlines() if line.startswith("tps"))
    print(f"pgbench: worst transaction {worst / 1e6:.2f} s; {tps}")
    return worst / 1e6


def _committed(cluster) -> int:
    return int(cluster.node(cluster_writer(cluster)).sql("SELECT count(*) FROM pgbench_history"))


def cluster_writer(cluster) -> str:
    return next(n.name for n in cluster.nodes if n.running and n.sql("SELECT pg_is_in_recovery()") == "f")


def test_a_rolling_restart_under_pgbench_through_the_pooled_writer_fails_no_transaction(
    fresh_cluster, service, tmp_path
):
    cluster, svc = _serving(fresh_cluster, service)
    bench = _pgbench(svc.writer, 20, tmp_path)  # the restart took 2.8 s here
    try:
        for _ in wait_until("pgbench to commit 300 transactions", 20):
            if _committed(cluster) >= 300:
                break
        result = admin(f"{svc.admin_url}/maintenance/restart", "POST",
                       {"set": {"max_locks_per_transaction": "128"}}, timeout=120)  # fmt: skip
        assert bench.poll() is None, "the restart outlasted pgbench: it did not all run under load"
        worst = _no_failure(bench, tmp_path)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert result["switchover"]["new_writer"] != "n1", result  # the writer moved (a switchover) and came through
    assert worst < result["switchover"]["write_pause_seconds"] + 10, worst  # a wait, bounded by the switchover
    for node in cluster.nodes:
        assert node.sql("SHOW max_locks_per_transaction") == "128"


class SlowRead(threading.Thread):
    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.result = dsn, None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                self.result = conn.execute("SELECT host(inet_server_addr()) FROM pg_sleep(3)").fetchone()[0]
        except psycopg.Error as exc:
            self.result = str(exc)


def _slow_read_on(node, svc) -> SlowRead:
    """A three-second read through the pooled reader that landed on node (tries until one does)."""
    for _ in wait_until(f"a slow read on {node.name}", 30):
        read = SlowRead(svc.dsn("reader"))
        read.start()
        for _ in wait_until("the read to start somewhere", 5):
            sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%FROM pg_sleep(3)'"
            if read.result is None and int(node.sql(sleeping + " AND pid <> pg_backend_pid()")) == 1:
                return read
            if read.result is not None:
                break
        read.join(10)
    raise AssertionError("unreachable")


def test_a_replica_removed_under_pgbench_select_through_the_pooled_reader_fails_no_transaction(
    fresh_cluster, service, tmp_path
):
    cluster, svc = _serving(fresh_cluster, service)
    bench = _pgbench(svc.reader, 15, tmp_path, "-S")
    try:
        for _ in wait_until("reads on both replicas", 20):
            busy = [n.name for n in cluster.replicas if int(n.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE client_addr IS NOT NULL AND usename = 'postgres' "
                "AND application_name <> 'pgaurora-monitor'")) > 0]  # fmt: skip
            if len(busy) == 2:
                break
        removed = cluster.node("n3")
        slow = _slow_read_on(removed, svc)
        result = admin(f"{svc.admin_url}/nodes/n3", "DELETE", {"drain_timeout": 10}, timeout=120)
        slow.join(30)
        assert slow.result == removed.host, slow.result  # it finished there, not cut short
        assert bench.poll() is None, "the removal outlasted pgbench: it did not all run under load"
        worst = _no_failure(bench, tmp_path)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert result["sessions_ended"] == 0, result
    assert worst < 2.0, worst  # reads move to the other replica: no wait beyond a transaction
    assert "n3" not in [n["name"] for n in admin(svc.admin_url + "/status")["nodes"]]
