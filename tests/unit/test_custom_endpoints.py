"""Custom endpoints: which nodes serve, under the reader endpoint's rules, and the config that names them."""

from __future__ import annotations

import pytest

from pgaurora.core.config import CustomEndpointConfig, build
from pgaurora.core.custom_endpoints import serving, targets
from pgaurora.core.errors import ConfigError
from pgaurora.core.topology import Health, NodeState, Role, Topology

NODES = (
    NodeState("n1", "127.0.0.11", 5432, Role.PRIMARY, Health.HEALTHY),
    NodeState("n2", "127.0.0.12", 5432, Role.REPLICA, Health.HEALTHY),
    NodeState("n3", "127.0.0.13", 5432, Role.REPLICA, Health.HEALTHY),
    NodeState("n4", "127.0.0.14", 5432, Role.REPLICA, Health.LAGGING),
)
TOPOLOGY = Topology("demo", NODES, writer="n1", readers=("n2", "n3"))


def _spec(**kw) -> CustomEndpointConfig:
    return CustomEndpointConfig(name="reports", port=6440, **kw)


@pytest.mark.parametrize(
    "spec, names",
    [
        (_spec(nodes=("n3",)), ["n3"]),
        (_spec(nodes=("n1", "n3")), ["n3"]),  # role reader: never the writer
        (_spec(nodes=("n1", "n3"), role="any"), ["n3", "n1"]),  # role any: the writer too
        (_spec(exclude=("n2",)), ["n3"]),  # every node but n2; n4 lags, n1 writes
        (_spec(nodes=("n4",)), []),  # lagging: no
        (_spec(nodes=("n4",), fallback="writer"), ["n1"]),  # ... unless it falls back to the writer
    ],
)
def test_targets(spec, names):
    assert [n.name for n in targets(spec, TOPOLOGY)] == names


def test_a_drained_or_fenced_member_serves_no_new_session():
    drained = Topology("demo", NODES, writer="n1", readers=("n2",))  # snapshot.build left n3 out
    assert serving(_spec(nodes=("n3",)), drained) == []


NODES_CFG = [{"name": f"n{i}", "host": f"127.0.0.{10 + i}"} for i in (1, 2)]


def test_custom_endpoint_config_problems_are_named():
    with pytest.raises(ConfigError) as info:
        build({"nodes": NODES_CFG, "endpoints": [{"name": "n1", "port": 6440, "nodes": ["n9"]}]})
    problem = str(info.value)
    assert "duplicate endpoint or node name 'n1'" in problem and "endpoints.n1: unknown nodes n9" in problem
    with pytest.raises(ConfigError, match="give either nodes or exclude, not both"):
        build({"nodes": NODES_CFG, "endpoints": [{"name": "r", "port": 6440, "nodes": ["n2"], "exclude": ["n1"]}]})
    with pytest.raises(ConfigError, match=r"duplicate listen address '127\.0\.0\.1:6432'"):
        build({"nodes": NODES_CFG, "endpoints": [{"name": "r", "port": 6432, "nodes": ["n2"]}]})
