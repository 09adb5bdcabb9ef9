"""Scaler: adds and removes replicas of a composed cluster while both endpoints keep serving."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from . import config as config_mod
from .errors import ClusterError
from .health import quorum
from .health.actions import ActionFailed
from .topology import Topology

if TYPE_CHECKING:
    from .app import Service

log = logging.getLogger("pgaurora.scaling")

DRAIN_TIMEOUT = 30.0
READY_TIMEOUT = 600.0  # a clone of a large primary takes a while; a reader in this long, or the add fails
QUORUM_TIMEOUT = 30.0


def composed(service: "Service", what: str):
    """The cluster pgaurora composed (its controller), or ActionFailed saying why `what` cannot run."""
    controller = service.monitor.controller
    if controller is None or not hasattr(controller, "add_replica"):
        raise ActionFailed(f"{what} works on clusters pgaurora composes (`pgaurora up`); for a cluster of your "
                           "own, change the nodes in the config file and reload")
    if service.member is not None:
        raise ActionFailed(f"{what} is not available with several instances ([dcs])")
    return controller


@asynccontextmanager
async def exclusive(service: "Service"):
    """One scaling or maintenance operation at a time; a second is refused rather than queued."""
    if service.operations.locked():
        raise ActionFailed("another replicas add/remove or maintenance operation is running; try again when "
                           "it is done (pgaurora events)")
    async with service.operations:
        yield


async def end_sessions(service: "Service", cluster, name: str, drain_timeout: float) -> int:
    """Wait up to drain_timeout for a drained node's sessions to end by themselves, then end the rest: PostgreSQL
    sends each FATAL 57P01 (terminating connection due to administrator command). How many were ended."""
    state = service.proxy_state
    deadline = time.monotonic() + drain_timeout
    while state.count(name) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    left = state.count(name)
    if left:
        await asyncio.to_thread(cluster.node(name).sql, "SELECT count(pg_terminate_backend(pid)) FROM "
                                "pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
    return left


class Scaler:
    """One operation at a time; every step is an event. Adding: clone, configure, wait for reads. Removing:
    drain, leave synchronous replication, wait drain_timeout for the sessions, end the rest (57P01), forget."""

    def __init__(self, service: "Service") -> None:
        self.service = service

    async def add(self, count: int = 1) -> list[dict]:
        cluster = composed(self.service, "replicas add")
        async with exclusive(self.service):
            return [await self._add_one(cluster) for _ in range(count)]

    async def _add_one(self, cluster) -> dict:
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
        self.service.events.record("replica_added", f"{node.name} cloned from {writer} in {cloned:.1f} s",
                                   node=node.name, address=f"{node.host}:{node.port}")
        serving = await self.service.hub.wait_for(lambda t: node.name in t.readers, READY_TIMEOUT)
        if serving is None:
            raise ActionFailed(f"{node.name} was added but is not serving reads after {READY_TIMEOUT:.0f} s; "
                               "see `pgaurora status`")
        took = time.monotonic() - started
        self.service.events.record("replica_serving", f"{node.name} serves reads {took:.1f} s after the add began",
                                   node=node.name, seconds=round(took, 2))
        return {"node": node.name, "address": f"{node.host}:{node.port}", "cloned_seconds": round(cloned, 2),
                "serving_seconds": round(took, 2)}

    async def remove(self, name: str, drain_timeout: float = DRAIN_TIMEOUT) -> dict:
        cluster = composed(self.service, "replicas remove")
        topology = self._topology()
        if name == topology.writer:
            raise ActionFailed(f"{name} is the writer: switch over first (`pgaurora switchover`), then remove it")
        if name not in {n.name for n in topology.nodes}:
            raise ActionFailed(f"no node named {name!r} (nodes: {', '.join(n.name for n in topology.nodes)})")
        async with exclusive(self.service):
            return await self._remove(cluster, name, drain_timeout)

    async def _remove(self, cluster, name: str, drain_timeout: float) -> dict:
        monitor, events = self.service.monitor, self.service.events
        await monitor.request("drain", node=name)
        await monitor.request("retire", node=name)
        events.record("replica_removing", f"{name} drained and leaving synchronous replication; its sessions "
                      f"have {drain_timeout:g} s to finish", node=name, drain_timeout=drain_timeout)
        try:
            ended = await end_sessions(self.service, cluster, name, drain_timeout)
            await self._leave_quorum(name)
        except BaseException:
            await monitor.request("retire", node=name, leaving=False)
            await monitor.request("undrain", node=name)
            raise
        await self.service.apply_config(self._with_nodes(cluster, without=name), f"replica {name} removed")
        await asyncio.to_thread(cluster.remove_replica, name, self._topology().writer)
        events.record("replica_removed", f"{name} removed: slot dropped, files deleted; {ended} session(s) were "
                      "ended after the drain timeout", node=name, sessions_ended=ended)
        return {"node": name, "sessions_ended": ended}

    async def _leave_quorum(self, name: str) -> None:
        def out(t: Topology) -> bool:
            sync = quorum.parse_sync_names(t.sync_standbys) or frozenset()
            return name not in t.voters and name not in sync
        if await self.service.hub.wait_for(out, QUORUM_TIMEOUT) is None:
            raise ActionFailed(f"{name} is still a synchronous standby or a voter after {QUORUM_TIMEOUT:.0f} s "
                               "(are the other replicas healthy?); it was put back")

    def _topology(self) -> Topology:
        return self.service.hub.current

    def _with_nodes(self, cluster, without: str | None = None) -> config_mod.Config:
        """The running config with the cluster's nodes as they are now (priorities kept)."""
        config = self.service.config
        old = {n.name: n for n in config.nodes}
        nodes = [old[n.name].model_dump(mode="json") if n.name in old
                 else {"name": n.name, "host": n.host, "port": n.port}
                 for n in cluster.nodes if n.name != without and n.name not in cluster.parked]
        return config_mod.build({**config.model_dump(mode="json", exclude_none=True), "nodes": nodes},
                                "the cluster's nodes")
