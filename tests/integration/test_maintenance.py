"""`pgaurora maintenance restart`: a rolling restart under a workload through both endpoints."""

from __future__ import annotations

import json
import os
import subprocess

from pgaurora.testing.background import WriteLoop
from tests.helpers import PGAURORA, ReadSessions, admin, ended_on_purpose, ids_on, service_config, wait_until


def _maintenance(admin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PGAURORA, "maintenance", "restart", *args, "--admin", admin], capture_output=True, text=True, timeout=600
    )


def _new_binaries(cluster) -> str:
    """Another install of the same PostgreSQL, as a new minor version's package would be: links to each program."""
    target = cluster.root / "bin-next"
    target.mkdir()
    for program in os.listdir(cluster.bindir):
        os.symlink(os.path.join(cluster.bindir, program), target / program)
    return str(target)


def test_a_bad_setting_is_refused_before_any_node_restarts(fresh_cluster, service):
    cluster = fresh_cluster(replicas=1)
    svc = service(service_config(cluster), cluster=cluster)
    pids = [n.pid for n in cluster.nodes]
    for args, problem in (
        (["--set", "shared_buffers=lots"], 'invalid value for parameter "shared_buffers"'),
        (["--set", "no_such_setting=1"], 'unrecognized configuration parameter "no_such_setting"'),
        (["--set", "primary_conninfo=x"], "managed by pgaurora"),
        (["--bindir", "/nonexistent"], "binaries not found"),
    ):
        out = _maintenance(svc.admin_url, *args)
        assert out.returncode == 1 and problem in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    assert [n.pid for n in cluster.nodes] == pids
    cluster.node("n2").stop()  # an unhealthy cluster: the restart refuses to start
    for _ in wait_until("n2 to show as unreachable", 10):
        if svc.topology.by_name["n2"].health.value == "unreachable":
            break
    out = _maintenance(svc.admin_url, "--set", "shared_buffers=96MB")
    assert out.returncode == 1 and "cannot start: the cluster is not healthy (n2 is" in out.stderr, out.stderr
    assert cluster.node("n1").pid == pids[0]


def test_rolling_restart_applies_a_setting_and_new_binaries_to_every_node_losing_no_write(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2)
    svc = service(service_config(cluster), cluster=cluster)
    bindir = _new_binaries(cluster)
    writes = WriteLoop(svc.writer, "postgres", cluster.password, "numbers")
    readers = ReadSessions(svc.reader, cluster.password, 4)
    try:
        writes.wait_acked(50, 10)
        admin(f"{svc.admin_url}/drain/n3", "POST")
        out = _maintenance(svc.admin_url, "--set", "shared_buffers=96MB", "--bindir", bindir, "--drain-timeout", "1")
        assert out.returncode == 0, out.stdout + out.stderr
        print(out.stdout)
        writes.wait_acked(len(writes.acked) + 50, 10)
    finally:
        writes.stop()
        readers.stop()
    lines = out.stdout.splitlines()
    for name in ("n1", "n2", "n3"):  # progress, live, for every node
        assert any(f"{name} restarted, caught up" in line for line in lines), out.stdout
    assert any("switching over from n1" in line for line in lines)
    assert any("n3 restarted, caught up and left drained, as it was" in line for line in lines), out.stdout
    assert svc.topology.by_name["n3"].drained  # the operator's drain outlived the restart
    pause = float(out.stdout.split("writer unavailable ")[1].split(" s")[0])
    assert pause < 3, out.stdout
    for node in cluster.nodes:
        assert node.sql("SHOW shared_buffers") == "96MB", node.name
        argv0 = open(f"/proc/{node.pid}/cmdline").read().split("\0")[0]
        assert argv0.startswith(bindir), (node.name, argv0)
    assert json.loads((cluster.root / "cluster.json").read_text())["bindir"] == bindir
    writer = cluster.node(svc.topology.writer)
    assert svc.topology.writer != "n1" and writes.acked_ids() <= ids_on(writer)  # 0 acknowledged writes lost
    gaps = [b - a for (_, a), (_, b) in zip(writes.acked, writes.acked[1:], strict=False)]
    print(f"longest pause between acknowledged writes: {max(gaps):.2f} s")
    assert all(ended_on_purpose(e) for e in readers.errors), [e for e in readers.errors if not ended_on_purpose(e)]
    assert any(e["sqlstate"] == "57P01" for e in readers.errors), readers.errors[:3]
