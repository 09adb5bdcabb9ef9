"""pgaurora itself crashing: at each step of a failover, and with its state file lost (issue 15)."""

from __future__ import annotations

import json
import subprocess

import psycopg
import pytest

from tests.helpers import PGAURORA, Command, service_config, wait_until, write_config


def _status(config) -> dict | None:
    out = subprocess.run(
        [*PGAURORA, "status", "--json", "--admin", f"http://127.0.0.1:{config.admin.port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return json.loads(out.stdout) if out.returncode == 0 else None


def _history(config) -> list[dict]:
    out = subprocess.run(
        [*PGAURORA, "events", "--limit", "100", "--admin", f"http://127.0.0.1:{config.admin.port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def _writer_host(config) -> str:
    dsn = f"host=127.0.0.1 port={config.writer.port} user=postgres password=test-pw dbname=postgres connect_timeout=10"
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT host(inet_server_addr())").fetchone()[0]


def _settled_on_new_writer(cluster, config) -> str:
    for _ in wait_until("a new writer that the other replica follows", 40):
        status = _status(config)
        if status and status["writer"]["node"] not in (None, "n1") and status["voters"]:
            return status["writer"]["node"]


@pytest.mark.parametrize("point", ["after_intent", "after_promote", "after_epoch", "after_repoint"])
def test_a_crash_at_each_failover_step_leaves_a_true_history_and_correct_routing(point, fresh_cluster, tmp_path):
    cluster = fresh_cluster(replicas=2)
    config = service_config(cluster)
    path = write_config(config, tmp_path / "cluster.toml")
    first = Command("proxy", "-c", str(path), env={"PGAURORA_CRASH_AT": point})
    try:
        first.wait_for_line("pgaurora is ready", 60)
        cluster.primary.kill()
        assert first.proc.wait(30) == -9, "\n".join(first.lines[-20:])
    finally:
        first.stop()
    second = Command("proxy", "-c", str(path))
    try:
        second.wait_for_line("pgaurora is ready", 60)
        writer = _settled_on_new_writer(cluster, config)
        history = _history(config)
        new = cluster.node(writer)
        assert _writer_host(config) == new.host
        other = next(n for n in cluster.replicas if n is not new)
        for _ in wait_until("the other replica to stream from the new writer", 20):
            if other.sql("SELECT sender_host || ':' || status FROM pg_stat_wal_receiver") == f"{new.host}:streaming":
                break
    finally:
        assert second.stop() == 0
    kinds = [e["kind"] for e in history if e["kind"].startswith("failover") or e["kind"] == "adopt"]
    started = [e for e in history if e["kind"] == "failover_started"]
    if point == "after_intent":  # nothing was promoted: the intent is abandoned, and a new failover made
        assert kinds == ["failover_started", "failover_abandoned", "failover_started", "failover"], kinds
        assert "still a replica" in next(e for e in history if e["kind"] == "failover_abandoned")["reason"]
    elif point == "after_repoint":  # the failover was whole before the re-pointing, which runs beside the loop
        assert kinds == ["failover_started", "failover"], kinds
        assert started[0]["candidate"] == writer
    else:
        assert kinds == ["failover_started", "failover_completed_after_restart"], kinds
        assert started[0]["candidate"] == writer
    assert _status(config) is None  # stopped
    assert json.loads((cluster.root / "monitor.json").read_text())["epoch"] == 2


def test_a_lost_state_file_stops_the_start_until_reset_state_rebuilds_it(fresh_cluster, tmp_path):
    cluster = fresh_cluster(replicas=2)
    config = service_config(cluster)
    path = write_config(config, tmp_path / "cluster.toml")
    first = Command("proxy", "-c", str(path))
    try:
        first.wait_for_line("pgaurora is ready", 60)
        cluster.primary.kill()
        writer = _settled_on_new_writer(cluster, config)
    finally:
        assert first.stop() == 0
    state = cluster.root / "monitor.json"
    before = json.loads(state.read_text())
    assert (before["writer"], before["epoch"]) == (writer, 2)

    for content, words in (("", "is empty"), ('{"writer": "n', "is unreadable"), (None, "is missing")):
        if content is None:
            state.unlink()
        else:
            state.write_text(content)
        out = subprocess.run([*PGAURORA, "proxy", "-c", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert words in out.stderr and "--reset-state" in out.stderr and str(state) in out.stderr

    cluster.primary.start()  # the old primary is back, still a primary on timeline 1: it must be fenced
    again = Command("proxy", "-c", str(path), "--reset-state")
    try:
        again.wait_for_line("pgaurora is ready", 60)
        status = _status(config)
        roles = {n["name"]: n["role"] for n in status["nodes"]}
        assert status["writer"]["node"] == writer and roles["n1"] == "fenced"
        assert status["epoch"] > before["epoch"], "the epoch went back after a reset"
        assert status["epoch"] >= max(n["timeline"] or 0 for n in status["nodes"])
        assert _writer_host(config) == cluster.node(writer).host
    finally:
        assert again.stop() == 0
