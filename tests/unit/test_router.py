"""Router policies over a Topology: writer, round robin, least connections, fallback."""

from __future__ import annotations

import pytest

from pgaurora.core import config as config_mod
from pgaurora.core.errors import NoReaderAvailable, NoWriterAvailable
from pgaurora.core.topology import Health, NodeState, Role, Topology, TopologyHub
from pgaurora.proxy.router import EndpointKind, Router
from pgaurora.proxy.state import ProxyState

NODES = tuple(
    NodeState(f"n{i}", f"127.0.0.{10 + i}", 5432, Role.PRIMARY if i == 1 else Role.REPLICA, Health.HEALTHY)
    for i in (1, 2, 3)
)


def _router(readers=("n2", "n3"), writer="n1", **reader) -> Router:
    cfg = config_mod.build({"nodes": [{"name": n.name, "host": n.host} for n in NODES], "reader": reader})
    hub = TopologyHub(Topology("demo", NODES, writer=writer, readers=readers))
    return Router(hub, cfg, ProxyState())


def test_writer_goes_to_the_primary_and_fails_typed_without_one():
    assert [n.name for n in _router().candidates(EndpointKind.WRITER)] == ["n1"]
    with pytest.raises(NoWriterAvailable) as info:
        _router(writer=None).candidates(EndpointKind.WRITER)
    assert info.value.sqlstate == "57P03"


def test_round_robin_alternates_and_keeps_the_rest_as_retries():
    router = _router()
    picks = [[n.name for n in router.candidates(EndpointKind.READER)] for _ in range(4)]
    assert picks == [["n2", "n3"], ["n3", "n2"], ["n2", "n3"], ["n3", "n2"]]


def test_least_connections_prefers_the_idle_replica():
    router = _router(policy="least_connections")
    router.state.sessions_by_node["n2"] = {object(), object()}
    assert all(router.candidates(EndpointKind.READER)[0].name == "n3" for _ in range(3))


def test_reader_falls_back_to_primary_or_refuses():
    assert [n.name for n in _router(readers=()).candidates(EndpointKind.READER)] == ["n1"]
    with pytest.raises(NoReaderAvailable):
        _router(readers=(), fallback="refuse").candidates(EndpointKind.READER)


def test_established_sessions_stay_valid_only_on_their_role():
    router = _router()
    moved = Topology("demo", NODES, writer="n2", readers=("n3",))
    assert not router.still_valid(EndpointKind.WRITER, "n1", moved)
    assert router.still_valid(EndpointKind.WRITER, "n2", moved)
    fenced = Topology("demo", (NodeState("n1", "127.0.0.11", 5432, Role.FENCED), *NODES[1:]), writer="n2")
    assert not router.still_valid(EndpointKind.READER, "n1", fenced)
    assert router.still_valid(EndpointKind.READER, "n3", fenced)
