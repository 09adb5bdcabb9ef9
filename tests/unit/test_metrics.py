"""/metrics: what a scrape reports, from a Topology snapshot and the proxy's counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pgaurora.core.topology import Health, NodeState, Role, Topology
from pgaurora.proxy.state import ProxyState
from pgaurora.service import metrics


def _scrape(topology: Topology, state: ProxyState, **options) -> dict[tuple, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.Collector(lambda: topology, lambda: state, **options))
    text = metrics.render(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class _Session:
    def __init__(self, kind: str, node: str) -> None:
        self.kind, self.node, self.cancel_key = kind, node, None


def _topology() -> Topology:
    return Topology(
        "demo",
        nodes=(
            NodeState("n1", "127.0.0.1", 5432, Role.PRIMARY, Health.HEALTHY, lag_bytes=0),
            NodeState("n2", "127.0.0.2", 5432, Role.REPLICA, Health.LAGGING, lag_bytes=4096, lag_seconds=1.5),
            NodeState("n3", "127.0.0.3", 5432, Role.UNKNOWN, Health.UNREACHABLE),
        ),
        writer="n1",
        epoch=3,
        version=7,
    )


def test_scrape_reports_each_nodes_health_role_and_lag():
    got = _scrape(_topology(), ProxyState())
    assert [got[("pgaurora_node_up", (("node", n),))] for n in ("n1", "n2", "n3")] == [1, 1, 0]
    assert got[("pgaurora_node_role", (("node", "n1"), ("role", "primary")))] == 1
    assert got[("pgaurora_node_role", (("node", "n1"), ("role", "replica")))] == 0
    assert got[("pgaurora_node_role", (("node", "n3"), ("role", "unknown")))] == 1
    assert got[("pgaurora_node_lag_bytes", (("node", "n2"),))] == 4096
    assert got[("pgaurora_node_lag_seconds", (("node", "n2"),))] == 1.5
    assert ("pgaurora_node_lag_bytes", (("node", "n3"),)) not in got  # unknown is absent, not zero
    assert got[("pgaurora_writer_epoch", ())] == 3 and got[("pgaurora_topology_version", ())] == 7


def test_scrape_counts_sessions_per_endpoint_and_refusals_per_sqlstate():
    state = ProxyState()
    for _ in range(3):
        state.client_opened()
    live = _Session("writer", "n1")
    for session in (live, _Session("reader", "n2"), _Session("reader", "n2")):
        state.session_started(session)
    state.session_ended(live)
    state.refused("08P01")
    state.refused("08P01")
    state.refused("57P03")
    state.tls_started()
    got = _scrape(_topology(), state)
    assert got[("pgaurora_tls_handshakes_total", ())] == 1
    assert got[("pgaurora_client_connections", ())] == 3
    assert got[("pgaurora_server_sessions", (("node", "n1"),))] == 0
    assert got[("pgaurora_server_sessions", (("node", "n2"),))] == 2
    assert got[("pgaurora_sessions_total", (("endpoint", "writer"), ("node", "n1")))] == 1
    assert got[("pgaurora_sessions_total", (("endpoint", "reader"), ("node", "n2")))] == 2
    assert got[("pgaurora_refused_clients_total", (("sqlstate", "08P01"),))] == 2
    assert got[("pgaurora_refused_clients_total", (("sqlstate", "57P03"),))] == 1


def test_scrape_reports_the_voters_and_whether_a_failover_now_is_safe():
    from dataclasses import replace

    got = _scrape(replace(_topology(), voters=("n2", "n3"), failover_safe=False), ProxyState())
    assert [got[("pgaurora_node_voter", (("node", n),))] for n in ("n1", "n2", "n3")] == [0, 1, 1]
    assert got[("pgaurora_failover_safe", ())] == 0
    got = _scrape(replace(_topology(), voters=("n2",), failover_safe=True), ProxyState())
    assert got[("pgaurora_failover_safe", ())] == 1


def test_the_monitors_probe_age_is_scraped_once_it_has_probed():
    assert ("pgaurora_monitor_probe_age_seconds", ()) not in _scrape(_topology(), ProxyState())
    scraped = _scrape(_topology(), ProxyState(), probe_age=lambda: 2.5)
    assert scraped[("pgaurora_monitor_probe_age_seconds", ())] == 2.5
