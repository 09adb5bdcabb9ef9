"""Replicas added and removed live, under a workload through both endpoints (`pgaurora replicas`)."""

from __future__ import annotations

import json
import re
import subprocess
import time

from pgaurora.testing.background import WriteLoop
from tests.helpers import PGAURORA, ReadSessions, ended_on_purpose, ids_on, refused, service_config, wait_until


def _replicas(admin: str, *args: str, timeout: float = 300) -> str:
    out = subprocess.run(
        [*PGAURORA, "replicas", *args, "--admin", admin], capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_scaling_one_to_three_to_one_replicas_under_load_keeps_both_endpoints_serving(fresh_cluster, service):
    cluster = fresh_cluster(replicas=1)
    svc = service(service_config(cluster), cluster=cluster)
    _removing_the_writer_or_an_unknown_node_is_refused_and_changes_nothing(svc, cluster)
    writes = WriteLoop(svc.writer, "postgres", cluster.password, "numbers")
    readers = ReadSessions(svc.reader, cluster.password, 4)
    later: ReadSessions | None = None
    try:
        writes.wait_acked(50, 10)
        added = _replicas(svc.admin_url, "add", "--count", "2")
        served = [float(x) for x in re.findall(r"serving reads ([\d.]+) s", added)]
        print(added.strip())
        assert len(served) == 2, added
        topology = svc.topology
        assert sorted(topology.readers) == ["n2", "n3", "n4"] and len(cluster.nodes) == 4
        for _ in wait_until("the new replicas to become voters of quorum commit", 10):
            if set(svc.topology.voters) == {"n2", "n3", "n4"}:
                break
        later = ReadSessions(svc.reader, cluster.password, 6)  # new sessions: on the new replicas too
        for _ in wait_until("new reader sessions on each new replica", 20):
            if all(later.on(cluster.node(n).host) for n in ("n3", "n4")):
                break
        acked = writes.acked_ids()
        for _ in wait_until("n4 to hold every write acknowledged so far", 10):
            if acked <= ids_on(cluster.node("n4")):
                break

        removed_hosts, began = {}, {}
        for name in ("n3", "n2"):  # a new replica, then one of the original ones
            host = cluster.node(name).host
            removed_hosts[name], began[name] = host, time.time()
            on_it = readers.on(host) + later.on(host)
            out = _replicas(svc.admin_url, "remove", name, "--drain-timeout", "2")
            assert f"{name} removed ({on_it} session(s) ended" in out and (on_it > 0 or name == "n2"), (out, on_it)
            assert not (cluster.root / name).exists() and name not in [n.name for n in cluster.nodes]
            slots = cluster.node("n1").sql(f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{name}'")
            assert slots == "0"
        assert sorted(svc.topology.readers) == ["n4"]
        assert json.loads((cluster.root / "cluster.json").read_text())["nodes"] == [
            ["n1", cluster.node("n1").host],
            ["n4", cluster.node("n4").host],
        ]
        acked = len(writes.acked)
        writes.wait_acked(acked + 20, 10)
    finally:
        writes.stop()
        readers.stop()
        if later is not None:
            later.stop()
    assert writes.errors == [], writes.errors[:5]
    errors = readers.errors + later.errors
    assert any(e["node"] == removed_hosts["n3"] and e["sqlstate"] == "57P01" for e in errors)  # n3's were ended
    for error in errors:  # only sessions on a removed node end, with 57P01, and only after the drain timeout
        name = next((n for n, h in removed_hosts.items() if h == error["node"]), None)
        assert name is not None and ended_on_purpose(error), error
        assert error["time"] >= began[name] + 2, (error, began[name])


def _removing_the_writer_or_an_unknown_node_is_refused_and_changes_nothing(svc, cluster) -> None:
    code, body = refused(f"{svc.admin_url}/nodes/n1", "DELETE")
    assert code == 409 and "switch over first" in body
    out = subprocess.run(
        [*PGAURORA, "replicas", "remove", "n9", "--admin", svc.admin_url], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and "no node named 'n9'" in out.stderr and "Traceback" not in out.stderr
    assert [n.name for n in cluster.nodes] == ["n1", "n2"] and svc.topology.readers == ("n2",)
