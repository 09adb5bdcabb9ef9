"""Scaler: adds and removes replicas of a composed cluster while both endpoints keep serving."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..core import config as config_mod
from ..core.errors import ActionFailed, ClusterError
from ..core.topology import Topology
from ..health import quorum
from ..health.commands import Drain, Retire, Undrain
from .guard import DRAIN_TIMEOUT, ComposedCluster, Host, composed, end_sessions, exclusive

log = logging.getLogger("pgaurora.scaling")

READY_TIMEOUT = 600.0  # a clone of a large primary takes a while; a reader in this long, or the add fails
QUORUM_TIMEOUT = 30.0


class Scaler:
    """One operation at a time; every step is an event. Adding: clone, configure, wait for reads. Removing:
    drain, leave synchronous replication, wait drain_timeout for the sessions, end the rest (57P01), forget."""

    def __init__(self, service: Host) -> None:
        self.service = service

    async def add(self, count: int = 1) -> list[dict[str, Any]]:
        cluster = composed(self.service, "replicas add")
        async with exclusive(self.service):
            return [await self._add_one(cluster) for _ in range(count)]

    async def _add_one(self, cluster: ComposedCluster) -> dict[str, Any]:
        writer = self._topology().writer
        if writer is None:
            raise ActionFailed("no writer is known: a new replica needs one to clone")
        started = time.monotonic()
        try:
            node = await asyncio.to_thread(cluster.add_replica, writer)
        except ClusterError as exc:
            raise ActionFailed(f"could not add a replica: {exc}") from None
        cloned = time.monotonic() - started
        try:
            await self.service.apply_config(self._with_nodes(cluster), f"replica {node.name} added")
        except BaseException:  # the monitor did not take it: nothing half-made stays behind
            await asyncio.to_thread(cluster.remove_replica, node.name, writer)
            raise
        self.service.events.record(
            "replica_added",
            f"{node.name} cloned from {writer} in {cloned:.1f} s",
            node=node.name,
            address=f"{node.host}:{node.port}",
        )
        serving = await self.service.hub.wait_for(lambda t: node.name in t.readers, READY_TIMEOUT)
        if serving is None:
            raise ActionFailed(
                f"{node.name} was added but is not serving reads after {READY_TIMEOUT:.0f} s; see `pgaurora status`"
            )
        took = time.monotonic() - started
        self.service.events.record(
            "replica_serving",
            f"{node.name} serves reads {took:.1f} s after the add began",
            node=node.name,
            seconds=round(took, 2),
        )
        return {
            "node": node.name,
            "address": f"{node.host}:{node.port}",
            "cloned_seconds": round(cloned, 2),
            "serving_seconds": round(took, 2),
        }

    async def remove(self, name: str, drain_timeout: float = DRAIN_TIMEOUT) -> dict[str, Any]:
        cluster = composed(self.service, "replicas remove")
        topology = self._topology()
        if name == topology.writer:
            raise ActionFailed(f"{name} is the writer: switch over first (`pgaurora switchover`), then remove it")
        if name not in {n.name for n in topology.nodes}:
            raise ActionFailed(f"no node named {name!r} (nodes: {', '.join(n.name for n in topology.nodes)})")
        async with exclusive(self.service):
            return await self._remove(cluster, name, drain_timeout)

    async def _remove(self, cluster: ComposedCluster, name: str, drain_timeout: float) -> dict[str, Any]:
        monitor, events = self.service.monitor, self.service.events
        await monitor.request(Drain(name))
        await monitor.request(Retire(name))
        events.record(
            "replica_removing",
            f"{name} drained and leaving synchronous replication; its sessions have {drain_timeout:g} s to finish",
            node=name,
            drain_timeout=drain_timeout,
        )
        try:
            ended = await end_sessions(self.service, cluster, name, drain_timeout)
            await self._leave_quorum(name)
        except BaseException:
            await monitor.request(Retire(name, leaving=False))
            await monitor.request(Undrain(name))
            raise
        await self.service.apply_config(self._with_nodes(cluster, without=name), f"replica {name} removed")
        await asyncio.to_thread(cluster.remove_replica, name, self._topology().writer or "")
        events.record(
            "replica_removed",
            f"{name} removed: slot dropped, files deleted; {ended} session(s) were ended after the drain timeout",
            node=name,
            sessions_ended=ended,
        )
        return {"node": name, "sessions_ended": ended}

    async def _leave_quorum(self, name: str) -> None:
        def out(t: Topology) -> bool:
            sync = quorum.parse_sync_names(t.sync_standbys) or frozenset()
            return name not in t.voters and name not in sync

        if await self.service.hub.wait_for(out, QUORUM_TIMEOUT) is None:
            raise ActionFailed(
                f"{name} is still a synchronous standby or a voter after {QUORUM_TIMEOUT:.0f} s "
                "(are the other replicas healthy?); it was put back"
            )

    def _topology(self) -> Topology:
        return self.service.hub.current

    def _with_nodes(self, cluster: ComposedCluster, without: str | None = None) -> config_mod.Config:
        """The running config with the cluster's nodes as they are now (priorities kept)."""
        config = self.service.config
        old = {n.name: n for n in config.nodes}
        nodes = [
            old[n.name].model_dump(mode="json") if n.name in old else {"name": n.name, "host": n.host, "port": n.port}
            for n in cluster.nodes
            if n.name != without and n.name not in cluster.parked
        ]
        return config_mod.build(
            {**config.model_dump(mode="json", exclude_none=True), "nodes": nodes}, "the cluster's nodes"
        )
