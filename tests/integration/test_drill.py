"""`pgaurora drill` end to end, and its report checked against an independent count of rows."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from pgaurora.drill import faults
from pgaurora.drill.engine import Drill
from pgaurora.drill.target import ComposedTarget
from pgaurora.drill.workload import TABLE
from tests.helpers import PGAURORA, Command, free_loopback_base, require_docker, service_config, write_config

EVERY_FAULT = "kill-primary,stop-primary,pause-primary,kill-replica,isolate-primary,switchover,restart-pgaurora"
# On Docker, the faults whose injection differs from local processes (docker kill, stop and pause), and a
# switchover; the others act on addresses and on pgaurora itself, the same on both backends.
DOCKER_FAULTS = "kill-primary,stop-primary,pause-primary,switchover"


def _drill(*args: str) -> subprocess.CompletedProcess[str]:
    """`pgaurora drill ARGS` on addresses of its own, its report at 100 columns."""
    return subprocess.run(
        [*PGAURORA, "drill", *args, "--base-address", free_loopback_base(4)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "100"},
    )


@pytest.mark.parametrize("backend", ["local", "docker"])
def test_a_drill_of_every_fault_loses_nothing_and_draws_its_timeline(backend, tmp_path):
    if backend == "docker":
        require_docker()
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    faults = EVERY_FAULT if backend == "local" else DOCKER_FAULTS
    run = _drill("--backend", backend, "--faults", faults, "--rounds", "1", "--json", str(out), "--plot", str(png))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["fault"] for r in report["rounds"]] == faults.split(",")
    for r in report["rounds"]:
        assert r["lost"] == 0 and r["write_downtime"] is not None and r["write_downtime"] <= 5.0, r
        assert r["redundant_again"] is not None and r["redundant_again"] <= 30.0, r  # pgaurora healed it alone
    outcomes = {r["fault"]: r["outcome"] for r in report["rounds"]}
    assert outcomes.get("isolate-primary", "no failover").startswith("no failover"), outcomes
    assert outcomes["kill-primary"].startswith("failover n1 -> ")
    c = report["consistency"]
    assert (c["lost"], c["split_brain"]) == (0, 0) and c["acknowledged"] > 100
    assert set(c["missing"].values()) == {0}
    assert "summary per fault" in run.stdout and "lost writes" in run.stdout
    assert "pgaurora heals this cluster itself" in run.stdout
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert 800 <= width <= 3000 and 400 <= height <= 2000


def test_the_drill_report_matches_the_rows_on_every_node():
    root = Path(tempfile.mkdtemp(prefix="pgaurora-drill-test-"))
    os.chmod(root, 0o755)
    target = ComposedTarget(root, replicas=2, base_address=free_loopback_base(3))
    try:
        target.start()
        drill = Drill(target, faults.parse("kill-primary,switchover"), rounds=1, writers=2, readers=1)
        report = drill.run()
        acked = [(a.writer, a.seq) for a in drill.log.acks]
        for node in target.cluster.nodes:
            dsn = f"host={node.host} port={node.port} user=postgres password={target.password} dbname=postgres"
            with psycopg.connect(dsn) as conn:
                rows = conn.execute(f"SELECT writer, seq FROM {TABLE}").fetchall()
            assert report.consistency.missing[node.name] == len(set(acked) - set(rows))
            if node.name == report.consistency.final_writer:
                assert report.consistency.duplicates == len(rows) - len(set(rows))
        assert report.consistency.acknowledged == len(set(acked)) > 0
        assert report.consistency.lost == 0
    finally:
        target.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert not target.cluster.root.exists()


def test_the_drill_refuses_what_it_cannot_do_before_starting_anything():
    unknown = subprocess.run(
        [*PGAURORA, "drill", "--faults", "kill-primary,melt-disk"], capture_output=True, text=True, timeout=60
    )
    assert unknown.returncode == 2 and "unknown fault melt-disk" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_a_drill_of_an_existing_cluster_allows_only_faults_that_need_no_host(fresh_cluster, tmp_path):
    cluster = fresh_cluster(replicas=2)
    config = service_config(cluster)
    path = write_config(config, tmp_path / "cluster.toml")
    refused = subprocess.run(
        [*PGAURORA, "drill", "--config", str(path), "--faults", "isolate-primary,kill-primary"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "cannot inject kill-primary" in refused.stderr
    proxy = Command("proxy", "-c", str(path))
    try:
        proxy.wait_for_line("pgaurora is ready", 60)
        out = tmp_path / "out.json"
        run = subprocess.run(
            [
                *PGAURORA,
                "drill",
                "--config",
                str(path),
                "--faults",
                "isolate-primary",
                "--rounds",
                "1",
                "--writers",
                "2",
                "--readers",
                "2",
                "--json",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    finally:
        assert proxy.stop() == 0
    report = json.loads(out.read_text())
    (only,) = report["rounds"]
    assert only["outcome"].startswith("no failover") and only["lost"] == 0
    assert report["consistency"]["lost"] == 0 and report["consistency"]["acknowledged"] > 0
    assert cluster.primary.sql("SELECT to_regclass('pgaurora_drill') IS NULL") == "t", "the drill left its table"


def test_a_drill_of_the_writer_and_a_replica_killed_together_with_two_acks_loses_nothing(tmp_path):
    """Issue 28: the fault kill-primary-and-replica, on a cluster whose commits wait for 2 of 3 standbys."""
    out = tmp_path / "out.json"
    run = _drill(
        "--replicas",
        "3",
        "--sync-acks",
        "2",
        "--faults",
        "kill-primary-and-replica",
        "--rounds",
        "2",
        "--json",
        str(out),
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    for r in report["rounds"]:
        assert r["outcome"].startswith("failover n") and "killed with it" in r["outcome"], r
        assert r["lost"] == 0 and r["write_downtime"] is not None and r["write_downtime"] <= 5.0, r
    c = report["consistency"]
    assert (c["lost"], c["split_brain"]) == (0, 0) and c["acknowledged"] > 50
    one_ack = subprocess.run(
        [*PGAURORA, "drill", "--replicas", "3", "--faults", "kill-primary-and-replica"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert one_ack.returncode == 1 and "give --sync-acks 2" in one_ack.stderr, one_ack.stderr


def test_a_drill_through_transaction_pooled_endpoints_drops_no_connection(tmp_path):
    """drill --pool transaction: a switchover costs clients nothing, a crash only the statements in flight
    (08007), and no client loses its connection in either (issue 23)."""
    out = tmp_path / "out.json"
    run = _drill("--pool", "transaction", "--faults", "switchover,kill-primary,stop-primary", "--rounds", "1",
                 "--json", str(out))  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rounds = {r["fault"]: r for r in json.loads(out.read_text())["rounds"]}
    assert {fault: r["dropped"] for fault, r in rounds.items()} == dict.fromkeys(rounds, 0), rounds
    assert rounds["switchover"]["errors"] == {}, rounds["switchover"]
    for fault in ("kill-primary", "stop-primary"):
        assert set(rounds[fault]["errors"]) <= {"08007"}, rounds[fault]
    assert "connections dropped 0" in run.stdout
