"""`pgaurora up --sync-acks k`: refused, with one clear message, where k acknowledgements cannot be had."""

from __future__ import annotations

import pytest

from pgaurora.cli.up import _check_acks
from pgaurora.core.config import build
from pgaurora.core.errors import ClusterError, ConfigError


def test_sync_acks_needs_as_many_replicas_and_synchronous_commit():
    _check_acks(None, 2, True)
    _check_acks(2, 2, True)
    _check_acks(1, 0, False)
    with pytest.raises(ClusterError, match="needs at least 3 replicas, and the cluster has 2"):
        _check_acks(3, 2, True)
    with pytest.raises(ClusterError, match="needs synchronous commit; drop --async"):
        _check_acks(2, 5, False)


def test_the_config_refuses_sync_acks_with_asynchronous_commit():
    nodes = [{"name": "n1", "host": "127.0.0.11"}]
    assert build({"nodes": nodes, "failover": {"sync_acks": 2}}).failover.sync_acks == 2
    with pytest.raises(ConfigError, match="sync_acks = 2 needs synchronous commit"):
        build({"nodes": nodes, "failover": {"sync_acks": 2, "sync_mode": "off"}})
    with pytest.raises(ConfigError, match="sync_acks"):
        build({"nodes": nodes, "failover": {"sync_acks": 0}})
