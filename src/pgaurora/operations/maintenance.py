"""Maintenance: the rolling restart that applies restart-only settings or new binaries, one node at a time."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from ..core.errors import ActionFailed, ClusterError
from ..core.topology import Health, Role, Topology
from ..health.commands import Drain, Switchover, Undrain
from .guard import DRAIN_TIMEOUT, ComposedCluster, Host, composed, end_sessions, exclusive

CATCH_UP_TIMEOUT = 120.0
SETTING = re.compile(r"^[a-z_][a-z0-9_.]{0,62}$")
MANAGED = {
    "primary_conninfo",
    "primary_slot_name",
    "synchronous_standby_names",
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "cluster_name",
    "ssl_cert_file",
    "ssl_key_file",
}


def check_settings(settings: dict[str, str]) -> None:
    """Names a rolling restart may set: well formed, and not one pgaurora manages itself."""
    problems = [f"{name!r} is not a setting name" for name in settings if not SETTING.match(name)]
    problems += [f"{name} is managed by pgaurora and cannot be set here" for name in settings if name in MANAGED]
    if problems:
        raise ActionFailed("; ".join(problems))


def _caught_up(topology: Topology, name: str, drained: bool) -> bool:
    """Serving reads again; for a replica an operator drained, healthy (in time and lag) instead."""
    if not drained:
        return name in topology.readers
    node = topology.by_name.get(name)
    return node is not None and node.role is Role.REPLICA and node.health is Health.HEALTHY


class Maintenance:
    """Replicas first, each drained, restarted and back in routing once caught up; then a planned switchover to
    a restarted replica; then the old primary, now a replica. Every step is a `maintenance` event, and the
    restart stops, leaving every node running, at the first step that fails or when the cluster is unhealthy."""

    def __init__(self, service: Host) -> None:
        self.service = service
        self._epoch: int | None = None  # the writer's epoch when the running restart began

    async def restart(
        self, settings: dict[str, str], bindir: str | None = None, drain_timeout: float = DRAIN_TIMEOUT
    ) -> dict[str, Any]:
        cluster = composed(self.service, "maintenance restart")
        check_settings(settings)
        async with exclusive(self.service):
            self._epoch = None
            self._require_healthy("cannot start")
            topology = self.service.hub.current
            self._epoch = topology.epoch  # a change of writer under the restart ends it: its plan no longer holds
            replicas = [n.name for n in topology.nodes if n.role is Role.REPLICA]
            writer = topology.writer
            if writer is None:  # _require_healthy() saw one: it went away since
                raise ActionFailed("rolling restart stopped: there is no writer now")
            try:
                expected = await asyncio.to_thread(cluster.check_restart, replicas[0], settings, bindir)
            except ClusterError as exc:
                raise ActionFailed(f"nothing was restarted: {exc}") from None
            started = time.monotonic()
            self._step(
                f"rolling restart of {', '.join(replicas)} then {topology.writer}", settings=settings, bindir=bindir
            )
            for name in replicas:
                await self._restart_replica(cluster, name, settings, bindir, drain_timeout)
            self._require_healthy("stopped before the switchover")
            self._step(f"switching over from {topology.writer} to a restarted replica")
            try:
                switched = await self.service.monitor.request(Switchover())
            except ActionFailed as exc:
                raise ActionFailed(f"rolling restart stopped at the switchover: {exc}") from None
            self._epoch = switched["epoch"]  # its own change of writer
            await self._rejoined(writer)
            await self._restart_replica(cluster, writer, settings, bindir, drain_timeout)
            if bindir:
                await asyncio.to_thread(cluster.use_bindir, bindir)
            values = await self._values(cluster, settings)
            wrong = {n: v for n, v in values.items() if v != expected}
            if wrong:
                raise ActionFailed(f"restarted, but these nodes do not show the new settings: {wrong}")
            took = time.monotonic() - started
            self._step(
                f"done in {took:.1f} s; writer unavailable {switched['write_pause_seconds']:.2f} s "
                f"(the switchover to {switched['new_writer']})",
                done=True,
            )
            return {
                "nodes": [*replicas, topology.writer],
                "settings": expected,
                "bindir": bindir,
                "switchover": switched,
                "write_pause_seconds": switched["write_pause_seconds"],
                "seconds": round(took, 2),
            }

    async def _restart_replica(
        self, cluster: ComposedCluster, name: str, settings: dict[str, str], bindir: str | None, drain_timeout: float
    ) -> None:
        self._require_healthy(f"stopped before {name}")
        monitor = self.service.monitor
        kept_drained = self.service.hub.current.by_name[name].drained  # an operator's drain outlives the restart
        await monitor.request(Drain(name))
        ended = await end_sessions(self.service, cluster, name, drain_timeout)
        self._step(
            f"{name} drained ({ended} session(s) ended at the {drain_timeout:g} s drain timeout); restarting", node=name
        )
        try:
            await asyncio.to_thread(cluster.restart_node, name, settings, bindir)
        except ClusterError as exc:
            raise ActionFailed(f"rolling restart stopped: {exc}") from None
        finally:
            if not kept_drained:
                await monitor.request(Undrain(name))
        back = await self.service.hub.wait_for(lambda t: _caught_up(t, name, kept_drained), CATCH_UP_TIMEOUT)
        if back is None:
            raise ActionFailed(
                f"rolling restart stopped: {name} restarted but did not catch up in "
                f"{CATCH_UP_TIMEOUT:.0f} s; see `pgaurora status`"
            )
        where = "left drained, as it was" if kept_drained else "back in the reader endpoint"
        self._step(f"{name} restarted, caught up and {where}", node=name)

    async def _rejoined(self, name: str) -> None:
        """The old primary shows as a healthy replica (the monitor sees it at its next probe)."""

        def replica(t: Topology) -> bool:
            node = t.by_name.get(name)
            return node is not None and node.role is Role.REPLICA and node.health is Health.HEALTHY

        if await self.service.hub.wait_for(replica, CATCH_UP_TIMEOUT) is None:
            raise ActionFailed(
                f"rolling restart stopped: {name} did not come back as a healthy replica after the "
                f"switchover in {CATCH_UP_TIMEOUT:.0f} s; see `pgaurora status`"
            )

    def _require_healthy(self, what: str) -> None:
        topology = self.service.hub.current
        problems = [
            f"{n.name} is {n.role.value}, {n.health.value}"
            for n in topology.nodes
            if n.health is not Health.HEALTHY or n.role not in (Role.PRIMARY, Role.REPLICA)
        ]
        if topology.writer is None:
            problems.append("no writer is known")
        if not any(n.role is Role.REPLICA for n in topology.nodes):
            problems.append("there is no replica to switch over to")
        if self._epoch is not None and topology.epoch != self._epoch:
            problems.append(
                f"the writer changed during the restart (epoch {self._epoch} -> {topology.epoch}, "
                f"now {topology.writer})"
            )
        if problems:
            raise ActionFailed(f"rolling restart {what}: the cluster is not healthy ({'; '.join(problems)})")

    async def _values(self, cluster: ComposedCluster, settings: dict[str, str]) -> dict[str, dict[str, str]]:
        """Each node's pg_settings.setting for every setting asked for, as the nodes run now."""
        names = ", ".join(f"'{name}'" for name in settings)
        query = f"SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings WHERE name IN ({names})"
        values = {}
        for node in (n for n in cluster.nodes if n.name not in cluster.parked):
            out = await asyncio.to_thread(node.sql, query) if settings else ""
            values[node.name] = dict(pair.split("=", 1) for pair in out.split(",") if pair)
        return values

    def _step(self, reason: str, **fields: Any) -> None:
        self.service.events.record("maintenance", reason, **fields)
