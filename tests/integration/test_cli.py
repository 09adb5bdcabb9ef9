"""The pgaurora command as a new user runs it: up, resume, refusals, config errors, status."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from pgaurora.compose import LocalCluster
from pgaurora.core.errors import ClusterError
from tests.helpers import PGAURORA, Command, cluster_dir, free_loopback_base, free_port, free_ports, require_docker


def _psql(port: int, password: str, sql: str) -> str:
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-XAtc", sql],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PGPASSWORD": password},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def state_dir():
    root = cluster_dir()
    yield root / "demo"
    if (root / "demo" / "cluster.json").exists():
        LocalCluster.open(root / "demo").destroy()
    shutil.rmtree(root, ignore_errors=True)


def _up_args(state_dir, ports) -> list[str]:
    writer, reader, admin, dns, split = (*ports, 0) if len(ports) == 4 else ports
    return [
        "up",
        "--dir",
        str(state_dir),
        "--port",
        str(free_port()),
        "--base-address",
        free_loopback_base(3),
        "--writer-port",
        str(writer),
        "--reader-port",
        str(reader),
        "--admin-port",
        str(admin),
        "--dns-port",
        str(dns),
        "--split-port",
        str(split),
    ]


def test_up_serves_its_endpoints_then_stops_everything_on_sigterm(state_dir):
    ports = tuple(free_ports(5))
    up = Command(*_up_args(state_dir, ports), "--password", "s3cret")
    try:
        up.wait_for_line("pgaurora is ready", 90)
        text = "\n".join(up.lines)
        assert f"psql -h 127.0.0.1 -p {ports[0]} -U postgres" in text and f"dig @127.0.0.1 -p {ports[3]}" in text
        assert f"split endpoint   127.0.0.1:{ports[4]}" in text
        assert _psql(ports[0], "s3cret", "SELECT pg_is_in_recovery()") == "f"
        assert _psql(ports[1], "s3cret", "SELECT pg_is_in_recovery()") == "t"
        assert _psql(ports[4], "s3cret", "SELECT pg_is_in_recovery()") == "t"  # a read, on a replica
        wrote = _psql(ports[4], "s3cret", "CREATE TABLE split_seen (x int); SELECT pg_is_in_recovery()")
        assert wrote.splitlines()[-1] == "f"  # one transaction that writes: the writer
        status = subprocess.run(
            [*PGAURORA, "status", "--admin", f"http://127.0.0.1:{ports[2]}"], capture_output=True, text=True, timeout=30
        )
        assert status.returncode == 0 and "primary" in status.stdout
    finally:
        assert up.stop() == 0, "\n".join(up.lines)
    cluster = LocalCluster.open(state_dir)
    assert all(node.pid is None for node in cluster.nodes)

    again = Command(*_up_args(state_dir, ports))
    try:
        again.wait_for_line("pgaurora is ready", 90)
        assert any("resumed cluster 'demo'" in line for line in again.lines)
        assert _psql(ports[0], "s3cret", "SELECT 1") == "1"
    finally:
        assert again.stop() == 0


SSL_HERE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def _psql_tls(conninfo: str, sql: str) -> str:
    out = subprocess.run(
        ["psql", conninfo, "-XAtc", sql],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PGPASSWORD": "s3cret"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_up_tls_encrypts_both_legs_and_prints_a_verify_full_psql_line_passthrough_or_pooled(state_dir):
    ports = tuple(free_ports(5))
    up = Command(*_up_args(state_dir, ports), "--replicas", "1", "--password", "s3cret", "--tls")
    try:
        up.wait_for_line("pgaurora is ready", 90)
        (line,) = [s for s in up.lines if "sslmode=verify-full" in s]
        conninfo = line.split('psql "', 1)[1].rstrip('"')
        ca = conninfo.split("sslrootcert=", 1)[1]
        assert ca == str(state_dir / "tls" / "ca.crt")
        assert oct(os.stat(state_dir / "tls" / "ca.key").st_mode)[-3:] == "600"
        assert _psql_tls(conninfo, SSL_HERE) == "t"  # the node leg is TLS too
        split = conninfo.replace(f"port={ports[0]}", f"port={ports[4]}")
        read = SSL_HERE.replace("SELECT ssl", "SELECT pg_is_in_recovery(), ssl")
        assert _psql_tls(split, read) == "t|t"  # the splitting endpoint: a read, on the replica, TLS on both legs
    finally:
        assert up.stop() == 0, "\n".join(up.lines)
    again = Command(*_up_args(state_dir, ports), "--pool", "transaction")  # resumed without --tls: still TLS
    try:
        again.wait_for_line("pgaurora is ready", 90)
        assert any("sslmode=verify-full" in s for s in again.lines)
        assert any("(the current primary; pooled per transaction)" in s for s in again.lines), again.lines
        assert _psql_tls(conninfo, SSL_HERE) == "t"  # the pool's connection is TLS
    finally:
        assert again.stop() == 0


def test_up_refuses_a_directory_that_is_not_a_cluster(state_dir):
    state_dir.mkdir(parents=True)
    (state_dir / "precious.txt").write_text("do not touch")
    out = subprocess.run([*PGAURORA, "up", "--dir", str(state_dir)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "is not empty and holds no pgaurora cluster" in out.stderr
    assert (state_dir / "precious.txt").read_text() == "do not touch"


def test_proxy_config_errors_are_listed_in_one_message(tmp_path):
    bad = tmp_path / "cluster.toml"
    bad.write_text('[[nodes]]\nname = "n1"\nhost = "127.0.0.11"\nport = 99999\n[writer]\nport = "x"\n[extra]\n')
    out = subprocess.run([*PGAURORA, "proxy", "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "invalid " + str(bad) + " (3 problems)" in out.stderr
    for problem in ("nodes.0.port", "writer.port", "extra: unknown setting"):
        assert problem in out.stderr


def test_status_without_a_running_pgaurora_is_one_clear_error():
    out = subprocess.run(
        [*PGAURORA, "status", "--admin", f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "cannot reach the admin endpoint" in out.stderr and "is pgaurora running?" in out.stderr


def test_a_second_up_that_clashes_names_every_conflict_and_leaves_nothing_behind(state_dir):
    ports = tuple(free_ports(4))
    args = _up_args(state_dir, ports)
    first = Command(*args, "--password", "s3cret")
    try:
        first.wait_for_line("pgaurora is ready", 90)
        text = "\n".join(first.lines)
        assert f"DATABASE_URL=postgresql://postgres:PASSWORD@127.0.0.1:{ports[1]}/postgres   # reads" in text
        assert "s3cret" not in text  # a password given is never printed
        assert f"jdbc:postgresql://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/postgres?" in text
        other = state_dir.parent / "other"
        clash = [*args[:2], str(other), *args[3:]]  # the same addresses and ports, another --dir
        out = subprocess.run([*PGAURORA, *clash], capture_output=True, text=True, timeout=60)
    finally:
        assert first.stop() == 0
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "FATAL" not in out.stderr and "could not bind" not in out.stderr
    assert "7 addresses already in use, nothing was created or started" in out.stderr
    assert "node n1 needs" in out.stderr and "--base-address or --port" in out.stderr
    assert f"writer endpoint needs 127.0.0.1:{ports[0]}" in out.stderr and "--writer-port" in out.stderr
    assert "another pgaurora (cluster 'demo', pid" in out.stderr
    assert not other.exists(), "a refused up must not leave a directory behind"


def test_status_fits_80_columns_with_full_addresses(proxy):
    out = subprocess.run(
        [*PGAURORA, "status", "--admin", proxy.admin_url],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    for node in proxy.topology.nodes:
        (row,) = [line for line in lines if line.startswith(node.name + " ")]
        assert node.address in row and node.role.value in row and " s" in row, row
    wide = subprocess.run(
        [*PGAURORA, "status", "--wide", "--admin", proxy.admin_url],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert "upstream" in wide.stdout and "clients" in wide.stdout


# The first step, one in the middle and the last: each failure goes through the same clean-up (_discard),
# which must remove whatever the steps before it made, from nothing to everything.
@pytest.mark.parametrize("step", ["create:prepare", "create:clone:n2", "create:save"])
def test_a_create_that_fails_at_any_step_removes_what_it_made(step, monkeypatch):
    root = cluster_dir()
    try:
        cluster = LocalCluster(root / "c", replicas=1, port=free_port(), base_address=free_loopback_base(2))
        cluster.lock()
        monkeypatch.setenv("PGAURORA_FAIL_AT", step)
        with pytest.raises(ClusterError, match=f"injected failure at {step}"):
            cluster.create()
        cluster.unlock()
        assert not (root / "c").exists(), f"left behind: {list((root / 'c').rglob('*'))[:5]}"
        assert not _processes_under(root), "a PostgreSQL started by the failed create still runs"
        monkeypatch.delenv("PGAURORA_FAIL_AT")
        again = LocalCluster(root / "c", replicas=1, port=cluster.port, base_address=cluster.nodes[0].host)
        again.lock()
        again.create()  # the same call simply works the second time
        again.destroy()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_failed_create_in_a_directory_the_user_made_leaves_it_as_it_was(monkeypatch):
    """An empty directory the user made (create refuses one that holds anything else) stays, and nothing the
    create wrote is left in it: no node's files, no state, no certificates, no pgpass file."""
    root = cluster_dir()
    try:
        (root / "mine").mkdir(mode=0o755)
        cluster = LocalCluster(root / "mine", replicas=1, port=free_port(), base_address=free_loopback_base(2))
        cluster.lock()
        monkeypatch.setenv("PGAURORA_FAIL_AT", "create:clone:n2")
        with pytest.raises(ClusterError, match="injected failure at create:clone:n2"):
            cluster.create()
        cluster.unlock()
        assert (root / "mine").is_dir()
        left = sorted(p.name for p in (root / "mine").iterdir())
        assert left == ["lock"], left  # the directory's flock file alone, which the next create takes again
        assert not _processes_under(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _processes_under(root) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and str(root) in open(f"/proc/{entry}/cmdline").read():
                found.append(int(entry))
        except OSError:
            pass
    return found


def test_up_with_the_docker_backend_serves_containers_and_removes_them_on_sigterm(state_dir):
    require_docker()
    from pgaurora.compose.docker import docker_client

    ports = tuple(free_ports(4))
    up = Command(*_up_args(state_dir, ports), "--backend", "docker", "--password", "s3cret")
    try:
        up.wait_for_line("pgaurora is ready", 120)
        assert _psql(ports[0], "s3cret", "SELECT pg_is_in_recovery()") == "f"
        assert _psql(ports[1], "s3cret", "SELECT pg_is_in_recovery()") == "t"
        instance = json.loads((state_dir / "cluster.json").read_text())["instance"]
        names = [c.name for c in docker_client().containers.list()]
        assert sum(name.startswith(f"pgaurora-{instance}-") for name in names) == 3, names
    finally:
        assert up.stop() == 0, "\n".join(up.lines)
    left = [c.name for c in docker_client().containers.list(all=True) if c.name.startswith(f"pgaurora-{instance}-")]
    assert not left, f"containers left behind: {left}"


def test_up_pool_transaction_pools_both_endpoints_and_says_so(state_dir):
    ports = tuple(free_ports(4))
    up = Command(*_up_args(state_dir, ports), "--password", "s3cret", "--pool", "transaction")
    try:
        up.wait_for_line("pgaurora is ready", 90)
        text = "\n".join(up.lines)
        assert "(the current primary; pooled per transaction)" in text, text
        assert _psql(ports[0], "s3cret", "SELECT pg_is_in_recovery()") == "f"
        assert _psql(ports[1], "s3cret", "SELECT pg_is_in_recovery()") == "t"
        status = subprocess.run(
            [*PGAURORA, "status", "--json", "--admin", f"http://127.0.0.1:{ports[2]}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        doc = json.loads(status.stdout)
        assert (doc["writer"]["pool_mode"], doc["reader"]["pool_mode"]) == ("transaction", "transaction")
        assert {p["endpoint"] for p in doc["pools"]} == {"writer", "reader"}
    finally:
        assert up.stop() == 0, "\n".join(up.lines)
