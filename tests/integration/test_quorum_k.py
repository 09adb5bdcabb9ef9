"""A commit quorum of k (issue 28): with ANY k, the writer and k-1 replicas lost together fail over with no
acknowledged commit lost, k changes live, and a shrinking set never opens a window for a lossy promotion."""

from __future__ import annotations

import shutil
import time

import pytest

from pgaurora.core import config as config_mod
from tests.helpers import ServiceThread, admin, ids_on, make_cluster, service_config, wait_until

pytestmark = pytest.mark.integration

REPLICAS = 5


@pytest.fixture(scope="module")
def quorum():
    """Five replicas, commits on ANY 2, pgaurora healing what the faults take (so each round starts whole)."""
    cluster = make_cluster(replicas=REPLICAS)
    config = service_config(
        cluster,
        failover={"sync_acks": 2},
        heal={"enabled": True, "backoff": 0.2},
        proxy={"failover_connect_timeout": 5},
    )
    svc = ServiceThread(config, cluster=cluster)
    svc.wait_ready()
    loop = svc.write_loop("marks")
    try:
        yield cluster, svc, loop
    finally:
        loop.stop()
        svc.stop()
        cluster.destroy()
        shutil.rmtree(cluster.root.parent, ignore_errors=True)


def _at_rest(svc, acks: int, timeout: float = 60) -> dict:
    """Every node back, every replica a voter, commits on ANY acks and the proof relying on as many."""
    for _ in wait_until(f"the whole cluster on ANY {acks}, every replica a voter", timeout):
        t = svc.topology
        replicas = [n.name for n in t.nodes if n.name != t.writer]
        if (
            t.writer is not None
            and len(t.readers) == REPLICAS
            and sorted(t.voters) == sorted(replicas)
            and t.proven == acks
            and t.sync_standbys.startswith(f"ANY {acks} (")
        ):
            return admin(f"{svc.admin_url}/status")
    raise AssertionError("unreachable")


def _kill_writer_and(svc, cluster, victims: list[str]) -> tuple[str, float]:
    """SIGKILL the writer and these replicas at the same moment; returns the old writer and when."""
    old = svc.topology.writer
    at = time.time()
    for name in [old, *victims]:
        cluster.node(name).kill()
    return old, at


def _writes_back_after(loop, at: float, timeout: float = 15) -> float:
    for _ in wait_until("writes to be acknowledged again", timeout):
        later = [t for _, t in loop.acked if t > at + 0.05]
        if later:
            return later[0] - at
    raise AssertionError("unreachable")


def _nothing_lost(svc, cluster, loop) -> None:
    for _ in wait_until("the writer to answer", 30):
        writer = svc.topology.writer
        if writer is not None and cluster.node(writer).running:
            break
    on_writer = ids_on(cluster.node(writer), "marks")
    lost = {i for i, _ in loop.acked} - on_writer
    assert not lost, f"{len(lost)} acknowledged commits are missing on {writer}: {sorted(lost)[:10]}"


def test_with_two_acks_the_writer_and_a_replica_killed_together_fail_over_with_nothing_lost(quorum):
    cluster, svc, loop = quorum
    status = _at_rest(svc, 2)
    assert (status["promote_quorum"], status["survivable_failures"]) == (4, 2)
    assert status["can_lose"] == "the writer and 1 replica"
    metrics = admin(f"{svc.admin_url}/metrics")
    assert "pgaurora_survivable_failures 2.0" in metrics
    killed: list[str] = []
    backs = []
    for _ in range(5):
        _at_rest(svc, 2)
        loop.wait_acked(len(loop.acked) + 30)
        replicas = [n.name for n in svc.topology.nodes if n.name != svc.topology.writer]
        victim = next((n for n in replicas if n not in killed), replicas[0])  # a different replica each round
        killed.append(victim)
        old, at = _kill_writer_and(svc, cluster, [victim])
        for _ in wait_until(f"a writer other than {old} (with {victim} gone too)", 15):
            if svc.topology.writer not in (None, old):
                break
        backs.append(_writes_back_after(loop, at))
        _nothing_lost(svc, cluster, loop)
    print(f"ANY 2 of 5, writer and one replica killed: writes back after {[round(b, 2) for b in backs]} s")
    assert max(backs) <= 3.0, backs
    assert len(set(killed)) == 5


def test_k_raised_live_to_three_survives_the_writer_and_two_replicas(quorum):
    cluster, svc, loop = quorum
    _at_rest(svc, 2)
    raised = config_mod.build(
        {
            **svc.service.config.model_dump(mode="json", exclude_none=True),
            "failover": {**svc.service.config.failover.model_dump(mode="json", exclude_none=True), "sync_acks": 3},
        },
    )
    svc.call(svc.service.apply_config(raised, "sync_acks 3"))
    status = _at_rest(svc, 3)
    assert status["can_lose"] == "the writer and 2 replicas"
    loop.wait_acked(len(loop.acked) + 30)
    replicas = [n.name for n in svc.topology.nodes if n.name != svc.topology.writer]
    old, at = _kill_writer_and(svc, cluster, replicas[:2])
    for _ in wait_until(f"a writer other than {old} (with {replicas[:2]} gone too)", 15):
        if svc.topology.writer not in (None, old):
            break
    back = _writes_back_after(loop, at)
    _nothing_lost(svc, cluster, loop)
    print(f"ANY 3 of 5, writer and two replicas killed: writes back after {back:.2f} s")
    assert back <= 3.0


def test_a_shrinking_set_then_the_writer_lost_never_promotes_a_node_missing_a_commit(quorum):
    cluster, svc, loop = quorum
    lowered = config_mod.build(
        {
            **svc.service.config.model_dump(mode="json", exclude_none=True),
            "failover": {**svc.service.config.failover.model_dump(mode="json", exclude_none=True), "sync_acks": 2},
        },
    )
    svc.call(svc.service.apply_config(lowered, "sync_acks 2"))
    _at_rest(svc, 2)
    loop.wait_acked(len(loop.acked) + 30)
    victim = sorted(n.name for n in svc.topology.nodes if n.name != svc.topology.writer)[0]
    cluster.node(victim).kill()
    for _ in wait_until(f"the synchronous standbys to leave out {victim}", 15):
        if victim not in svc.topology.sync_standbys:
            break
    old, _ = _kill_writer_and(svc, cluster, [])  # the moment the set shrank: the voters have not yet
    for _ in wait_until(f"a writer other than {old}", 15):
        if svc.topology.writer not in (None, old):
            break
    _nothing_lost(svc, cluster, loop)
