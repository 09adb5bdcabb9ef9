"""Self-healing under writes: crashed replicas and former primaries come back by themselves, lost nodes are rebuilt."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import pytest

from pgaurora.testing import AuroraCluster
from tests.helpers import PGAURORA, admin, hosts_through, ids_on, require_docker, service_config, wait_until

pytestmark = pytest.mark.integration


def _healing(cluster, **heal):
    return service_config(cluster, heal={"enabled": True, "backoff": 0.2, **heal})


def _events(svc, kind: str, since: float = 0) -> list[dict]:
    return [e for e in svc.events.recent() if e["kind"] == kind and e["ts"] >= since]


def _full(svc) -> bool:
    doc = admin(svc.admin_url + "/status")
    nodes = {n["name"]: (n["role"], n["health"]) for n in doc["nodes"]}
    replicas_ok = all(h == "healthy" and r in ("primary", "replica") for r, h in nodes.values())
    return (
        replicas_ok
        and doc["redundancy"]["full"]
        and sorted(doc["voters"]) == sorted(n for n in nodes if n != doc["writer"]["node"])
    )


def _wait_full(svc, what: str, timeout: float) -> float:
    began = time.time()
    for _ in wait_until(what, timeout, interval=0.1):
        if _full(svc):
            return time.time() - began
    raise AssertionError(what)


def _failover_seconds(svc, old: str, killed_at: float) -> float:
    for _ in wait_until(f"a failover from {old}", 10):
        done = [e for e in _events(svc, "failover", killed_at) if e["old_writer"] == old]
        if done:
            return done[0]["phases"]["endpoints_switched"] - killed_at
    raise AssertionError("no failover")


def test_a_killed_replica_serves_reads_again_within_5_s_without_any_action(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2)
    svc = service(_healing(cluster), cluster=cluster)
    writes = svc.write_loop()
    n3 = cluster.node("n3")
    try:
        writes.wait_acked(20)
        killed = time.time()
        n3.kill()
        for _ in wait_until("n3 to serve reads again", 5):
            if "n3" in svc.topology.readers and n3.host in hosts_through(svc.dsn("reader"), 8):
                break
        back = time.time() - killed
        writes.wait_acked(len(writes.acked) + 20)
    finally:
        writes.stop()
    print(f"n3 served reads again {back:.2f} s after its SIGKILL")
    (heal,) = _events(svc, "heal", killed)
    assert heal["reason"].startswith("n3 exited (signal 9) (a replica); starting it again (attempt 1)"), heal
    assert _events(svc, "healed", killed)[0]["node"] == "n3"
    assert writes.acked_ids() <= ids_on(cluster.node(svc.topology.writer))


def test_a_killed_primary_fails_over_then_is_rewound_and_a_voter_again_within_10_s(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2)
    svc = service(_healing(cluster), cluster=cluster)
    writes = svc.write_loop()
    try:
        writes.wait_acked(50)
        killed = time.time()
        cluster.node("n1").kill()
        failover = _failover_seconds(svc, "n1", killed)
        _wait_full(svc, "n1 rewound, streaming and a voter again", 10)
        healed = time.time() - killed
        writes.wait_acked(len(writes.acked) + 50)
    finally:
        writes.stop()
    print(f"failover {failover:.2f} s; full redundancy again {healed:.2f} s after the SIGKILL")
    assert failover <= 2.0
    doc = admin(svc.admin_url + "/status")
    assert doc["redundancy"]["summary"] == "2 of 2 replicas streaming; commits on 2 copies"
    assert "n1" in doc["voters"] and any(e["node"] == "n1" and e["step"] == "rejoin" for e in _events(svc, "healed"))
    assert writes.acked_ids() <= ids_on(cluster.node(svc.topology.writer))


def test_ten_kills_of_the_primary_lose_nothing_and_heal_fully_before_each_next(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2)
    svc = service(_healing(cluster, stable_after=2.0), cluster=cluster)  # kills come every ~3 s here
    writes = svc.write_loop()
    failovers, heals = [], []
    try:
        writes.wait_acked(50)
        _wait_full(svc, "a fully redundant cluster", 30)
        for _ in range(10):
            old, killed = svc.topology.writer, time.time()
            cluster.node(old).kill()
            failovers.append(_failover_seconds(svc, old, killed))
            _wait_full(svc, f"{old} healed, before the next kill 15 s after this one", 15)
            heals.append(time.time() - killed)
            writes.wait_acked(len(writes.acked) + 20)
    finally:
        writes.stop()
    print(f"failovers {[round(f, 2) for f in failovers]} s; healed {[round(h, 1) for h in heals]} s")
    # Every failover within 2 s is the goal; one of about seventy measured in CI took 3.2 s (the monitor's
    # tick stalled 2.7 s while nodes were being rewound), not yet explained: see the closing note of issue 29.
    assert sorted(failovers)[len(failovers) // 2] <= 2.0 and max(failovers) <= 5.0, failovers
    lost = writes.acked_ids() - ids_on(cluster.node(svc.topology.writer))
    assert not lost, f"{len(lost)} acknowledged writes lost"


def test_a_replica_whose_data_directory_is_deleted_is_rebuilt_and_serves_reads_within_30_s(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2)
    svc = service(_healing(cluster), cluster=cluster)
    n3 = cluster.node("n3")
    killed = time.time()
    n3.kill()
    shutil.rmtree(n3.datadir)
    for _ in wait_until("n3 rebuilt and serving reads", 30):
        if "n3" in svc.topology.readers and n3.host in hosts_through(svc.dsn("reader"), 8):
            break
    print(f"n3 rebuilt and serving reads {time.time() - killed:.1f} s after its files were deleted")
    assert [e["step"] for e in _events(svc, "healed", killed)] == ["rebuild"]
    assert "no usable data directory" in _events(svc, "heal", killed)[0]["reason"]


def test_a_rebuild_that_fails_is_tried_again_until_the_node_serves(fresh_cluster, service, monkeypatch):
    """A failed remake of a node's files (its source stopped mid-clone by a switchover, in CI) must leave
    the node down unasked, not stopped on purpose: else healing never looks at it again."""
    cluster = fresh_cluster(replicas=2)
    svc = service(_healing(cluster), cluster=cluster)
    n3 = cluster.node("n3")
    monkeypatch.setenv("PGAURORA_FAIL_AT", "reclone:n3")
    killed = time.time()
    n3.kill()
    shutil.rmtree(n3.datadir)
    for _ in wait_until("a failed rebuild of n3", 30):
        if _events(svc, "heal_failed", killed):
            break
    monkeypatch.delenv("PGAURORA_FAIL_AT")
    for _ in wait_until("n3 rebuilt after the failed try and serving reads", 30):
        if "n3" in svc.topology.readers and n3.host in hosts_through(svc.dsn("reader"), 8):
            break
    assert _events(svc, "heal_failed", killed)[0]["step"] == "rebuild"
    assert [e["step"] for e in _events(svc, "healed", killed)] == ["rebuild"]


def test_a_node_that_cannot_start_is_rebuilt_then_given_up_on_while_the_rest_serves(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2)
    svc = service(_healing(cluster, max_attempts=4, rebuild_after=2), cluster=cluster)
    n3 = cluster.node("n3")
    thief = socket.socket()  # its address taken by another program: no rebuild can fix that
    thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        n3.kill()
        thief.bind((n3.host, n3.port))
        thief.listen()
        for _ in wait_until("pgaurora to give up on n3", 60):
            if _events(svc, "heal_given_up"):
                break
        writes = svc.write_loop()
        writes.wait_acked(20)
        writes.stop()
        status = subprocess.run(
            [*PGAURORA, "status", "--admin", svc.admin_url], capture_output=True, text=True, timeout=60
        )
    finally:
        thief.close()
    steps = [e["step"] for e in _events(svc, "heal_failed")]
    assert steps == ["start", "start", "rebuild", "start"], steps
    (given_up,) = _events(svc, "heal_given_up")
    assert "4 tries in a row failed" in given_up["reason"] and "the rest of the cluster serves on" in given_up["reason"]
    assert "n3: 4 tries; given up: needs a person" in status.stdout, status.stdout
    assert "1 of 2 replicas streaming" in status.stdout


def test_the_primary_killed_during_a_rolling_restart_fails_over_and_the_cluster_heals(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2)
    svc = service(_healing(cluster), cluster=cluster)
    writes = svc.write_loop()
    out: dict = {}
    restart = threading.Thread(
        target=lambda: out.update(
            run=subprocess.run(
                [
                    *PGAURORA,
                    "maintenance",
                    "restart",
                    "--set",
                    "work_mem=8MB",
                    "--drain-timeout",
                    "0",
                    "--admin",
                    svc.admin_url,
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
        ),
        daemon=True,
    )
    try:
        writes.wait_acked(50)
        restart.start()
        for _ in wait_until("the rolling restart to restart its last replica, n3", 30):
            if any(e.get("node") == "n3" and "drained" in e["reason"] for e in _events(svc, "maintenance")):
                break
        killed = time.time()
        cluster.node("n1").kill()  # the writer, before the switchover the restart would end with
        failover = _failover_seconds(svc, "n1", killed)
        restart.join(120)
        _wait_full(svc, "the cluster healed after the rolling restart stopped", 30)
        writes.wait_acked(len(writes.acked) + 20)
    finally:
        writes.stop()
    print(f"failover during the rolling restart: {failover:.2f} s")
    assert failover <= 2.0
    assert out["run"].returncode == 1 and "rolling restart stopped" in out["run"].stderr, out["run"]
    assert writes.acked_ids() <= ids_on(cluster.node(svc.topology.writer))


@pytest.mark.parametrize("fault", ["kill_replica", "kill_primary"])
def test_docker_nodes_heal_after_a_kill(fault):
    require_docker()
    with AuroraCluster(replicas=2, backend="docker") as aurora:
        killed = time.time()
        name = getattr(aurora, fault)()
        if fault == "kill_primary":
            phases = aurora.wait_for_failover()
            assert phases["writer"] != name
        status = aurora.wait_healed(60)
        healed = [
            e for e in admin(aurora.admin_url + "/events?limit=200") if e["kind"] == "healed" and e["ts"] >= killed
        ]
        print(f"docker {fault}: {name} healed {time.time() - killed:.1f} s after the kill")
    assert [e["node"] for e in healed] == [name], healed
    assert status["redundancy"]["full"]


def test_a_cluster_of_its_own_heals_through_the_start_command_of_a_node(fresh_cluster, service):
    """`proxy -c`: pgaurora runs no node, but runs `[heal] commands` for one that went down."""
    cluster = fresh_cluster(replicas=2)
    n3 = cluster.node("n3")
    start = (
        f"runuser -u {cluster.user.name} -- {n3.bin('pg_ctl')} -D {n3.datadir} -l {n3.datadir}/started.log -w start"
        if not cluster.user.is_self
        else f"{n3.bin('pg_ctl')} -D {n3.datadir} -l {n3.datadir}/started.log -w start"
    )
    svc = service(service_config(cluster, heal={"enabled": True, "commands": {"n3": start}}))  # no controller
    killed = time.time()
    n3.kill()
    for _ in wait_until("n3 started by its command and serving reads", 20):  # destroy() stops it by its PID
        if "n3" in svc.topology.readers and n3.host in hosts_through(svc.dsn("reader"), 8):
            break
    heal, healed = _events(svc, "heal", killed)[0], _events(svc, "healed", killed)
    assert "n3 is unreachable (its start command starts it on its host)" in heal["reason"], heal
    assert healed and healed[0]["node"] == "n3" and healed[0]["step"] == "start"
