"""Build the immutable Topology from the monitor's memory and the latest probes (pure)."""

from __future__ import annotations

from collections.abc import Mapping

from ..core.config import Config
from ..core.topology import Health, NodeState, Role, Topology
from . import quorum
from .decide import ClusterState, behind_timeline
from .probe import NodeStatus


def _role(name: str, state: ClusterState, status: NodeStatus, last: NodeStatus | None) -> Role:
    if name in state.fenced:
        return Role.FENCED
    if name == state.writer:
        return Role.PRIMARY
    seen = status if status.reachable else last
    if seen is None:
        return Role.UNKNOWN
    if seen.in_recovery:
        return Role.REPLICA
    # a primary that the monitor did not elect is never routed to
    return Role.FENCED if state.writer is not None else Role.UNKNOWN


def _lag(status: NodeStatus, writer: NodeStatus | None) -> tuple[int | None, float | None]:
    if not status.is_replica:
        return (0, 0.0) if status.is_primary else (None, None)
    lag_bytes = None
    if writer is not None and writer.is_primary and writer.current_lsn is not None:
        lag_bytes = max(0, writer.current_lsn - (status.replay_lsn or 0))
    return lag_bytes, status.lag_seconds


def build(
    config: Config,
    state: ClusterState,
    statuses: Mapping[str, NodeStatus],
    last: Mapping[str, NodeStatus],
    reason: str,
    failover_safe: bool = False,
    failover_outlook: str = "",
    proxies: tuple[str, ...] = (),
) -> Topology:
    writer_status = statuses.get(state.writer) if state.writer else None
    nodes, readers = [], []
    for node in config.nodes:
        status = statuses.get(node.name) or NodeStatus.unknown(node.name, "not probed yet")
        role = _role(node.name, state, status, last.get(node.name))
        lag_bytes, lag_seconds = _lag(status, writer_status)
        health = Health.HEALTHY if status.reachable else Health.UNREACHABLE
        if (
            role is Role.REPLICA
            and health is Health.HEALTHY
            and config.monitor.max_replica_lag.exceeded(lag_bytes, lag_seconds)
        ):
            health = Health.LAGGING
        nodes.append(
            NodeState(
                node.name,
                node.host,
                node.port,
                role,
                health,
                lag_bytes,
                lag_seconds,
                status.timeline,
                status.wal_position if status.reachable else None,
                _upstream(status),
                node.name in state.drained,
            )
        )
        if role is Role.REPLICA and health is Health.HEALTHY and node.name not in state.drained:
            readers.append(node.name)
    sync = writer_status.sync_names if writer_status is not None and writer_status.reachable else ""
    return Topology(
        cluster=config.cluster,
        nodes=tuple(nodes),
        writer=state.writer,
        readers=tuple(readers),
        epoch=state.epoch,
        reason=reason,
        sync_standbys=sync or "",
        voters=tuple(sorted(state.voters)),
        proven=state.proven,
        survivable=survivable(state, statuses),
        failover_safe=failover_safe,
        failover_outlook=failover_outlook,
        proxies=proxies,
    )


def survivable(state: ClusterState, statuses: Mapping[str, NodeStatus]) -> int:
    """How many nodes can fail at once now, the writer among them, and a promotion still prove it loses no
    commit: the writer, plus the voters that answer beyond the |V| - p + 1 a proof needs. 0 when nothing is
    proven (asynchronous commit, or right after a change of writer) or the writer is already down."""
    writer = statuses.get(state.writer) if state.writer else None
    if not state.voters or writer is None or not writer.reachable:
        return 0
    answering = sum(
        1 for v in state.voters if (s := statuses.get(v)) is not None and s.reachable and not behind_timeline(state, s)
    )
    extra = answering - quorum.needed(state.voters, state.proven)
    return 1 + extra if extra >= 0 else 0


def _upstream(status: NodeStatus) -> str | None:
    if status.upstream_host is None:
        return None
    return f"{status.upstream_host}:{status.upstream_port}"
