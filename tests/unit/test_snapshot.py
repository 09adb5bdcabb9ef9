"""snapshot.build() turns probes and the monitor's memory into the Topology everyone reads."""

from __future__ import annotations

from pgaurora.core import config as config_mod
from pgaurora.health.decide import ClusterState
from pgaurora.health.probe import NodeStatus
from pgaurora.health.snapshot import build

CFG = config_mod.build(
    {
        "nodes": [{"name": f"n{i}", "host": f"127.0.0.{10 + i}"} for i in (1, 2, 3)],
        "monitor": {"max_replica_lag": "1MB"},
    }
)
STATE = ClusterState(writer="n1", epoch=1)


def _primary(lsn):
    return NodeStatus("n1", True, in_recovery=False, current_lsn=lsn, timeline=1, sync_names="ANY 1 (n2, n3)")


def _replica(name, replayed, lag_seconds=0.0):
    return NodeStatus(
        name,
        True,
        in_recovery=True,
        receive_lsn=replayed,
        replay_lsn=replayed,
        lag_seconds=lag_seconds,
        timeline=1,
        upstream_host="127.0.0.11",
        upstream_port=5432,
    )


def test_lagging_and_unreachable_replicas_are_not_readers():
    statuses = {"n1": _primary(10 * 1024**2), "n2": _replica("n2", 10 * 1024**2 - 100), "n3": _replica("n3", 1024)}
    topo = build(CFG, STATE, statuses, {}, "ok")
    assert topo.readers == ("n2",) and topo.node("n3").health.value == "lagging"
    assert topo.node("n2").lag_bytes == 100 and topo.node("n2").upstream == "127.0.0.11:5432"
    down = {**statuses, "n2": NodeStatus.unknown("n2", "refused")}
    topo = build(CFG, STATE, down, {"n2": statuses["n2"]}, "ok")
    assert topo.readers == () and topo.node("n2").role.value == "replica"
    assert topo.node("n2").health.value == "unreachable"


def test_unelected_primary_and_fenced_nodes_are_fenced():
    statuses = {
        "n1": _primary(100),
        "n2": NodeStatus("n2", True, in_recovery=False, current_lsn=5, timeline=1),
        "n3": _replica("n3", 100),
    }
    topo = build(CFG, ClusterState(writer="n1", epoch=1, fenced=frozenset({"n3"})), statuses, {}, "ok")
    assert [n.role.value for n in topo.nodes] == ["primary", "fenced", "fenced"]
    assert topo.writer == "n1" and topo.readers == ()
    assert topo.sync_standbys == "ANY 1 (n2, n3)"


def test_loss_bound_is_zero_when_synchronous_and_the_replica_gap_when_not():
    from pgaurora.core.topology import loss_bound_bytes

    statuses = {"n1": _primary(5000), "n2": _replica("n2", 4000), "n3": _replica("n3", 4500)}
    sync = build(CFG, STATE, statuses, {}, "ok")
    assert loss_bound_bytes(sync) == 0
    statuses["n1"] = NodeStatus("n1", True, in_recovery=False, current_lsn=5000, timeline=1, sync_names="")
    assert loss_bound_bytes(build(CFG, STATE, statuses, {}, "ok")) == 500


def test_a_drained_replica_is_shown_but_is_no_reader():
    statuses = {"n1": _primary(100), "n2": _replica("n2", 100), "n3": _replica("n3", 100)}
    topo = build(CFG, ClusterState(writer="n1", epoch=1, drained=frozenset({"n2"})), statuses, {}, "ok")
    assert topo.readers == ("n3",)
    assert topo.node("n2").drained and topo.node("n2").role.value == "replica" and not topo.node("n3").drained
