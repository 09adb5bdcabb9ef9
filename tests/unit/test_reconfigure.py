"""What a reload changes, and which changes need a restart."""

from __future__ import annotations

import pytest

from pgaurora.core.config import build
from pgaurora.core.reconfigure import changes

BASE = {"nodes": [{"name": "n1", "host": "127.0.0.11"}, {"name": "n2", "host": "127.0.0.12"}]}


def _with(**sections):
    data = {**BASE, **sections}
    return build(data)


@pytest.mark.parametrize(
    "new, live, restart, added, removed",
    [
        (_with(), (), (), (), ()),
        (_with(reader={"policy": "least_connections"}), ("reader.policy",), (), (), ()),
        (
            _with(monitor={"max_replica_lag": "1MB", "probe_interval": 0.2}),
            ("monitor.max_replica_lag.bytes", "monitor.probe_interval"),
            (),
            (),
            (),
        ),
        (_with(dns={"ttl": 5}, proxy={"startup_timeout": 3}), ("dns.ttl", "proxy.startup_timeout"), (), (), ()),
        (_with(writer={"port": 7000}), (), ("writer.port",), (), ()),
        (_with(reader={"port": 7001, "policy": "least_connections"}), ("reader.policy",), ("reader.port",), (), ()),
        (_with(proxy={"relay": "python"}, monitor={"password": "x"}), (), ("monitor.password", "proxy.relay"), (), ()),
        (
            _with(pool={"pool_size": 5, "auth_file": __file__}, reader={"pool_mode": "session"}),
            (),
            ("pool.auth_file", "pool.pool_size", "reader.pool_mode"),
            (),
            (),
        ),
        (build({"nodes": [*BASE["nodes"], {"name": "n3", "host": "127.0.0.13"}]}), (), (), ("n3",), ()),
        (build({"nodes": BASE["nodes"][:1]}), (), (), (), ("n2",)),
        (
            build({"nodes": [BASE["nodes"][0], {"name": "n2", "host": "127.0.0.12", "priority": 5}]}),
            ("nodes.n2.priority",),
            (),
            (),
            (),
        ),
        (build({"nodes": [BASE["nodes"][0], {"name": "n2", "host": "127.0.0.99"}]}), (), ("nodes.n2.address",), (), ()),
    ],
)
def test_changes(new, live, restart, added, removed):
    diff = changes(build(BASE), new)
    assert (diff.live, diff.restart, diff.added, diff.removed) == (live, restart, added, removed)
    assert diff.any == bool(live or restart or added or removed)
