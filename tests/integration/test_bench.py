"""bench/proxy.py against a cluster a config file names: the running pgaurora, or one it starts itself."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.helpers import free_ports

BENCH = Path(__file__).resolve().parents[2] / "bench" / "proxy.py"
TARGETS = {"direct", "pgaurora", "pgbouncer", "haproxy", "direct-replica", "pgaurora-reader"}


def _config_file(path: Path, cluster, writer: int, reader: int, admin: int, dns: int) -> Path:
    nodes = "".join(
        f'[[nodes]]\nname = "{n["name"]}"\nhost = "{n["host"]}"\nport = {n["port"]}\n' for n in cluster.node_configs()
    )
    path.write_text(
        f'cluster = "{cluster.name}"\n{nodes}[writer]\nport = {writer}\n[reader]\nport = {reader}\n'
        f"[admin]\nport = {admin}\n[dns]\nport = {dns}\n"
        f'[monitor]\nuser = "postgres"\npassword = "{cluster.password}"\n'
        '[failover]\nenabled = false\nsync_mode = "off"\n'
    )
    return path


# PATH without this interpreter's bin directory: like a virtualenv's python run without activating it,
# so a pgaurora started from PATH would not be found (or would be another installation's).
BARE_PATH = ":".join(
    d
    for d in os.environ["PATH"].split(":")
    if not (Path(d) / "pgaurora").exists() and d != str(Path(sys.executable).parent)
)


def _bench(config: Path, out: Path, *extra: str) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--config",
            str(config),
            "--rounds",
            "3",
            "--duration",
            "1",
            "--scale",
            "1",
            "--workloads",
            "select-c16",
            "--json",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PATH": BARE_PATH},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "select-c16" in result.stdout and "/pgbouncer" in result.stdout and "round by round" in result.stdout
    doc = json.loads(out.read_text())
    spread = next(r for r in doc["rows"] if r["target"] == "pgaurora")["spread"]
    baseline = "haproxy" if "haproxy" in spread else "direct"
    assert spread[baseline]["rounds"] == 3 and spread[baseline]["min"] <= spread[baseline]["max"]
    return doc


def _bench_database_exists(cluster) -> bool:
    with psycopg.connect(
        host=cluster.primary.host, port=cluster.port, user="postgres", password=cluster.password, dbname="postgres"
    ) as conn:
        return conn.execute("SELECT count(*) FROM pg_database WHERE datname = 'pgaurora_bench'").fetchone()[0] == 1


def test_bench_measures_the_running_pgaurora_of_a_config(proxy, cluster, tmp_path):
    conf = proxy.config
    config = _config_file(
        tmp_path / "pgaurora.toml", cluster, conf.writer.port, conf.reader.port, conf.admin.port, conf.dns.port
    )
    doc = _bench(config, tmp_path / "out.json", "--targets", "pgaurora")  # the other targets: the test below
    assert {r["target"] for r in doc["rows"]} == {"direct", "pgaurora", "direct-replica", "pgaurora-reader"}
    assert all(r["tps"] > 0 for r in doc["rows"])
    ours = [r for r in doc["runs"] if r["target"] == "pgaurora"]
    assert len(ours) == 3  # its CPU read from /proc, by the PID its /status reports:
    assert all(r["cpu_us_per_tx"] is not None and r["cpu_us_per_tx"] > 0 for r in ours)
    assert not _bench_database_exists(cluster)


def test_bench_starts_and_stops_a_pgaurora_for_a_config_nobody_serves(fresh_cluster, tmp_path):
    cluster = fresh_cluster(replicas=1, max_connections=60)
    writer, reader, admin, dns = free_ports(4)
    config = _config_file(tmp_path / "pgaurora.toml", cluster, writer, reader, admin, dns)
    doc = _bench(config, tmp_path / "out.json", "--sessions", "100")  # more than the server allows
    assert {r["target"] for r in doc["rows"]} == TARGETS
    assert all(
        r["cpu_us_per_tx"] is not None and r["cpu_us_per_tx"] > 0 for r in doc["runs"] if r["target"] == "pgaurora"
    )
    assert "TooManyConnections" in doc["rss"]["pgaurora"]["error"]  # reported after the rounds, not a crash
    with socket.socket() as s:  # the benchmark stopped the pgaurora it started
        assert s.connect_ex(("127.0.0.1", writer)) != 0
    assert not _bench_database_exists(cluster)
