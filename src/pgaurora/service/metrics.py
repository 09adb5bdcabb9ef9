"""Prometheus metrics for GET /metrics, read at scrape time from the current Topology and ProxyState."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..core.topology import Health, Role, Topology

if TYPE_CHECKING:
    from ..core.config import Config, LagLimit
    from ..core.eventlog import EventLog
    from ..core.topology import TopologyHub
    from ..dcs.member import Member
    from ..health.heal import Supervisor
    from ..operations.backups import Backups
    from ..proxy.state import ProxyState


class Probing(Protocol):
    """The monitor, as the metrics read it."""

    def probe_age(self) -> float | None: ...


class MetricsHost(Protocol):
    """What the metrics read of the running service (service.app.Service), at scrape time."""

    @property
    def monitor(self) -> Probing: ...

    @property
    def config(self) -> Config: ...

    @property
    def hub(self) -> TopologyHub: ...

    @property
    def proxy_state(self) -> ProxyState: ...

    @property
    def member(self) -> Member | None: ...

    @property
    def supervisor(self) -> Supervisor | None: ...

    @property
    def backups(self) -> Backups | None: ...

    @property
    def events(self) -> EventLog: ...


def _counted(name: str, documentation: str, labels: list[str], counts: Mapping[Any, float]) -> Metric:
    """A counter family with one sample per key of counts (a label value, or a tuple of them)."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, count in sorted(counts.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], count)
    return family


def topology_metrics(topology: Topology) -> Iterator[Metric]:
    """Per node: up, role and lag; per cluster: the writer epoch and the topology's version."""
    up = GaugeMetricFamily("pgaurora_node_up", "1 when the monitor's last probe of the node succeeded", labels=["node"])
    role = GaugeMetricFamily("pgaurora_node_role", "1 for the node's current role", labels=["node", "role"])
    lag = GaugeMetricFamily("pgaurora_node_lag_bytes", "Replay lag behind the writer, in bytes", labels=["node"])
    lag_s = GaugeMetricFamily("pgaurora_node_lag_seconds", "Replay lag behind the writer, in seconds", labels=["node"])
    writer = GaugeMetricFamily(
        "pgaurora_writer", "1 for the node the writer endpoint routes to; all 0 while there is none", labels=["node"]
    )
    for node in topology.nodes:
        writer.add_metric([node.name], 1 if node.name == topology.writer else 0)
        up.add_metric([node.name], 0 if node.health is Health.UNREACHABLE else 1)
        for r in Role:
            role.add_metric([node.name, r.value], 1 if node.role is r else 0)
        if node.lag_bytes is not None:
            lag.add_metric([node.name], node.lag_bytes)
        if node.lag_seconds is not None:
            lag_s.add_metric([node.name], node.lag_seconds)
    yield from (writer, up, role, lag, lag_s)
    yield GaugeMetricFamily(
        "pgaurora_writer_epoch", "Writer epoch: one more on every change of writer", value=topology.epoch
    )
    yield GaugeMetricFamily("pgaurora_topology_version", "Topology snapshots published so far", value=topology.version)
    voter = GaugeMetricFamily(
        "pgaurora_node_voter",
        "1 when the node is a voter: all but sync_acks-1 voters must answer before a failover can prove it "
        "loses no acknowledged commit",
        labels=["node"],
    )
    for node in topology.nodes:
        voter.add_metric([node.name], 1 if node.name in topology.voters else 0)
    yield voter
    yield GaugeMetricFamily(
        "pgaurora_survivable_failures",
        "Nodes that can fail at once now, the writer first, with no commit lost and no person deciding; "
        "alert when it is 0",
        value=topology.survivable,
    )
    yield GaugeMetricFamily(
        "pgaurora_failover_safe",
        "1 when a failover now would keep every acknowledged commit",
        value=1 if topology.failover_safe else 0,
    )


def redundancy_metrics(
    topology: Topology, sync_mode, degraded_since: float | None, sync_acks: int = 1
) -> Iterator[Metric]:
    """Copies of each commit now and wanted (alert when fewer), streaming replicas, and how long it is short."""
    from ..health.heal import redundancy

    now = redundancy(topology, sync_mode, sync_acks)
    yield GaugeMetricFamily(
        "pgaurora_commit_copies", "Copies a commit is acknowledged from now (writer included)", value=now.copies
    )
    yield GaugeMetricFamily(
        "pgaurora_commit_copies_wanted",
        "Copies the configuration asks for; alert when pgaurora_commit_copies is lower",
        value=now.wanted,
    )
    yield GaugeMetricFamily("pgaurora_replicas_streaming", "Replicas streaming from the writer", value=now.streaming)
    yield GaugeMetricFamily("pgaurora_replicas", "Replicas the cluster should have", value=now.replicas)
    yield GaugeMetricFamily(
        "pgaurora_redundancy_degraded_seconds",
        "Seconds since the cluster last had full redundancy (0 while it has it)",
        value=0 if degraded_since is None else max(0.0, time.time() - degraded_since),
    )


def proxy_metrics(state: ProxyState) -> Iterator[Metric]:
    """Connections now, sessions established and clients refused since start."""
    yield GaugeMetricFamily("pgaurora_client_connections", "Client connections open, in any phase", value=state.clients)
    server = GaugeMetricFamily("pgaurora_server_sessions", "Established sessions, per node", labels=["node"])
    for node, sessions in sorted(state.sessions_by_node.items()):
        server.add_metric([node], len(sessions))
    yield server
    yield _counted("pgaurora_sessions", "Sessions established", ["endpoint", "node"], state.sessions_total)
    refused = "Clients the proxy answered with an error and closed"
    yield _counted("pgaurora_refused_clients", refused, ["sqlstate"], state.refused_total)
    yield CounterMetricFamily(
        "pgaurora_tls_handshakes", "Client connections that started a TLS handshake", value=state.tls_total
    )
    yield from pool_metrics(state)
    yield _counted(
        "pgaurora_limit_refused_clients",
        "Clients refused with 53300 by a connection limit (total, per address, per role)",
        ["limit"],
        state.limited_total,
    )
    yield _counted(
        "pgaurora_rule_logins",
        "Logins at a pooled endpoint per [[rules]] entry that decided (0: the default, none: no rule matched)",
        ["endpoint", "rule", "outcome"],
        state.rules_total,
    )
    yield _counted(
        "pgaurora_split_transactions",
        "Transactions a splitting endpoint routed, by the session's consistency, where they ran (replica or "
        "writer) and why: replica, write, no_replica, replica_behind (waited consistency_wait in vain), "
        "position_unknown, retried_on_writer (25006 on a replica)",
        ["endpoint", "consistency", "target", "reason"],
        state.split_total,
    )
    yield _counted(
        "pgaurora_split_waits",
        "Reads that waited for a replica to replay",
        ["endpoint", "consistency"],
        state.split_waits,
    )
    yield _counted(
        "pgaurora_split_wait_seconds",
        "Seconds reads waited for a replica to replay what they must see",
        ["endpoint", "consistency"],
        state.split_wait_seconds,
    )
    for name, counts, text in (
        ("pgaurora_allowlist_accepted", state.allowed_total, "let in by"),
        ("pgaurora_allowlist_refused", state.disallowed_total, "closed at once by"),
    ):
        yield _counted(name, f"Client connections {text} the endpoint's allow-list", ["endpoint"], counts)


def pool_metrics(state: ProxyState) -> Iterator[Metric]:
    """Per pool: clients waiting, server connections active and idle, the longest wait; pins by reason."""
    labels = ["endpoint", "node", "database", "user"]
    families = {
        "clients_waiting": GaugeMetricFamily(
            "pgaurora_pool_clients_waiting", "Clients waiting for a server connection", labels=labels
        ),
        "server_active": GaugeMetricFamily(
            "pgaurora_pool_server_active", "Server connections lent to a client now", labels=labels
        ),
        "server_idle": GaugeMetricFamily(
            "pgaurora_pool_server_idle", "Server connections idle in the pool", labels=labels
        ),
        "longest_wait_seconds": GaugeMetricFamily(
            "pgaurora_pool_longest_wait_seconds", "Longest wait for a server connection since start", labels=labels
        ),
    }
    for pool in state.pools():
        values = [pool["endpoint"], pool["node"], pool["database"], pool["user"]]
        for field, family in families.items():
            family.add_metric(values, pool[field])
    yield from families.values()
    yield _counted(
        "pgaurora_pool_pins",
        "Transaction-pooled clients pinned to one server connection until they leave, by reason",
        ["reason"],
        state.pins,
    )


def dcs_metrics(member) -> Iterator[Metric]:
    """With [dcs]: does this instance lead, does etcd answer, how often the leadership moved here."""
    from ..core.coordination import InstanceRole

    yield GaugeMetricFamily(
        "pgaurora_dcs_leader",
        "1 while this instance holds the leader key and acts",
        value=1 if member.current.role is InstanceRole.LEADER else 0,
    )
    yield GaugeMetricFamily(
        "pgaurora_dcs_up",
        "1 while etcd answered within the lease ttl",
        value=0 if member.current.role is InstanceRole.CUT_OFF else 1,
    )
    yield CounterMetricFamily(
        "pgaurora_dcs_leader_changes",
        "Times this instance became or stopped being the leader",
        value=member.leader_changes,
    )


def backup_metrics(backups) -> Iterator[Metric]:
    """With backups: the writer's archiver, failures since start, the newest backup."""
    archive = backups.archive
    if archive.last_archived_time is not None:
        yield GaugeMetricFamily(
            "pgaurora_archive_last_archived_timestamp_seconds",
            "When the writer last archived a WAL segment",
            value=archive.last_archived_time,
        )
    yield GaugeMetricFamily(
        "pgaurora_archive_pending_segments", "WAL segments waiting for the writer's archiver", value=archive.pending
    )
    yield CounterMetricFamily(
        "pgaurora_archive_failures",
        "WAL segments the archiver failed to archive, since start",
        value=backups.archive_failures,
    )
    if backups.last_backup is not None:
        yield GaugeMetricFamily(
            "pgaurora_backup_last_timestamp_seconds",
            "When the newest backup finished",
            value=backups.last_backup["timestamp"]["stop"],
        )


def custom_metrics(specs, topology: Topology) -> Iterator[Metric]:
    """Per custom endpoint: how many of its nodes take sessions now."""
    from ..core import custom_endpoints

    serving = GaugeMetricFamily(
        "pgaurora_custom_endpoint_nodes", "Nodes a custom endpoint routes to now", labels=["endpoint"]
    )
    for spec in specs:
        serving.add_metric([spec.name], len(custom_endpoints.targets(spec, topology)))
    yield serving


class Collector:
    """Reads the current snapshot and the proxy's counters at every scrape; keeps no copy of either."""

    def __init__(
        self,
        topology: Callable[[], Topology],
        state: Callable[[], ProxyState],
        member=None,
        custom=(),
        backups=None,
        sync_mode=None,
        degraded_since: Callable[[], float | None] = lambda: None,
        sync_acks: int = 1,
        probe_age: Callable[[], float | None] = lambda: None,
        event_counts: Callable[[], Mapping[str, int]] = dict,
        lag_limit: LagLimit | None = None,
    ) -> None:
        self.topology, self.state, self.member, self.custom = topology, state, member, custom
        self.backups, self.sync_mode, self.degraded_since = backups, sync_mode, degraded_since
        self.sync_acks, self.probe_age = sync_acks, probe_age
        self.event_counts, self.lag_limit = event_counts, lag_limit

    def collect(self) -> Iterator[Metric]:
        yield from topology_metrics(self.topology())
        age = self.probe_age()
        if age is not None:
            yield GaugeMetricFamily(
                "pgaurora_monitor_probe_age_seconds",
                "Seconds since the monitor last began probing the nodes; alert when it stays above a few "
                "probe intervals (the monitor is stuck)",
                value=age,
            )
        if self.sync_mode is not None:
            yield from redundancy_metrics(self.topology(), self.sync_mode, self.degraded_since(), self.sync_acks)
        yield from proxy_metrics(self.state())
        if self.member is not None:
            yield from dcs_metrics(self.member)
        if self.custom:
            yield from custom_metrics(self.custom, self.topology())
        if self.backups is not None:
            yield from backup_metrics(self.backups)
        yield from event_metrics(self.event_counts())
        yield from lag_limit_metrics(self.lag_limit)


ALERTED_EVENTS = ("failover", "failover_blocked", "switchover", "fence", "heal_given_up")
"""Event kinds always exported, from 0: Prometheus' increase() misses a counter's first appearance."""


def event_metrics(counts: Mapping[str, int]) -> Iterator[Metric]:
    """Events by kind since start (failover, switchover, failover_blocked, fence...)."""
    yield _counted(
        "pgaurora_events",
        "Events recorded since pgaurora started, by kind (pgaurora events)",
        ["kind"],
        {**dict.fromkeys(ALERTED_EVENTS, 0), **counts},
    )


def lag_limit_metrics(lag_limit: LagLimit | None) -> Iterator[Metric]:
    """[monitor] max_replica_lag, in bytes and in seconds, as far as it is set."""
    for unit, value in (("bytes", getattr(lag_limit, "bytes", None)), ("seconds", getattr(lag_limit, "seconds", None))):
        if value is not None:
            yield GaugeMetricFamily(
                f"pgaurora_max_replica_lag_{unit}", f"[monitor] max_replica_lag, in {unit}", value=value
            )


def registry_for(service: MetricsHost) -> CollectorRegistry:
    """A registry of this service's own (not the process-wide default one, which tests would share)."""
    registry = CollectorRegistry(auto_describe=False)
    supervisor = service.supervisor
    registry.register(
        Collector(
            lambda: service.hub.current,
            lambda: service.proxy_state,
            service.member,
            service.config.endpoints,
            service.backups,
            service.config.failover.sync_mode,
            lambda: supervisor.degraded_since if supervisor is not None else None,
            service.config.failover.sync_acks,
            service.monitor.probe_age,
            lambda: service.events.counts,
            service.config.monitor.max_replica_lag,
        )
    )
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
