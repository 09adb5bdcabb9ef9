"""Admin HTTP endpoint: GET /status, /events and /metrics, POST /switchover, /failover and /rejoin/{node}."""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import custom_endpoints, metrics
from .errors import ClusterError, ConfigError
from .health.actions import ActionFailed
from .scaling import DRAIN_TIMEOUT
from .topology import Role, Topology

if TYPE_CHECKING:
    from .app import Service


def loss_bound_bytes(topology: Topology) -> int | None:
    """How much acknowledged WAL a failover could lose now: 0 under synchronous commit, else how far
    the writer is ahead of the most advanced replica (None when that cannot be known)."""
    if topology.sync_standbys:
        return 0
    writer = topology.writer_node
    replicas = [n.lsn for n in topology.nodes if n.role is Role.REPLICA and n.lsn is not None]
    if writer is None or writer.lsn is None or not replicas:
        return None
    return max(0, writer.lsn - max(replicas))


def status_document(service: "Service") -> dict:
    """Everything `pgaurora status` shows, read from the current Topology."""
    topology, config = service.hub.current, service.config
    nodes = [{"name": n.name, "address": n.address, "role": n.role.value, "health": n.health.value,
              "lag_bytes": n.lag_bytes, "lag_seconds": None if n.lag_seconds is None else round(n.lag_seconds, 3),
              "timeline": n.timeline, "upstream": n.upstream, "drained": n.drained,
              "connections": service.proxy_state.count(n.name)} for n in topology.nodes]
    return {
        "cluster": topology.cluster, "zone": config.zone, "pid": os.getpid(), "epoch": topology.epoch,
        "topology_version": topology.version, "reason": topology.reason,
        "writer": {"endpoint": f"{config.writer.host}:{config.writer.port}", "node": topology.writer},
        "reader": {"endpoint": f"{config.reader.host}:{config.reader.port}", "nodes": service.reader_nodes(),
                   "policy": config.reader.policy.value, "fallback": config.reader.fallback.value},
        "dns": f"{config.dns.host}:{config.dns.port}" if config.dns.enabled else None,
        "sync_mode": config.failover.sync_mode.value, "sync_standbys": topology.sync_standbys,
        "loss_bound_bytes": loss_bound_bytes(topology),
        "voters": list(topology.voters), "promote_quorum": len(topology.voters),
        "failover_safe": topology.failover_safe, "failover_outlook": topology.failover_outlook,
        "fenced_hint": _fenced_hint(topology, service),
        "last_unsafe_failover": _last_unsafe(service),
        "client_connections": service.proxy_state.clients,
        "relay": service.relay_mode,
        "relay_threads": service.proxy_state.native.threads if service.proxy_state.native else None,
        "nodes": nodes,
        "dcs": service.member.document() if service.member is not None else None,
        "backup": service.backups.document() if service.backups is not None else None,
        "endpoints": [{"name": e.name, "endpoint": f"{e.host}:{e.port}", "role": e.role.value,
                       "nodes": [n.name for n in custom_endpoints.targets(e, topology)]} for e in config.endpoints],
    }


def _last_unsafe(service: "Service") -> dict | None:
    """The latest failover forced with --accept-data-loss, and the loss bound it recorded."""
    event = next((e for e in reversed(service.events.recent()) if e["kind"] == "failover_unsafe"), None)
    if event is None:
        return None
    return {k: event.get(k) for k in ("time", "candidate", "old_writer", "loss_bound_bytes", "reason")}


def _fenced_hint(topology: Topology, service: "Service") -> str | None:
    fenced = [n.name for n in topology.nodes if n.role is Role.FENCED]
    if not fenced:
        return None
    if service.monitor.controller is not None:
        return f"fenced: {', '.join(fenced)}; `pgaurora rejoin NODE` makes one a replica again"
    return (f"fenced: {', '.join(fenced)}; `pgaurora rejoin NODE --print` prints the commands that make one a "
            "replica again, to run on its host")


class AdminServer:
    def __init__(self, service: "Service", host: str, port: int) -> None:
        self.service, self.host, self.port = service, host, port
        self.app = web.Application()
        self.metrics = metrics.registry_for(service)
        self.app.add_routes([web.get("/status", self.status), web.get("/events", self.events),
                             web.get("/metrics", self.scrape),
                             web.post("/switchover", self.switchover), web.post("/failover", self.failover),
                             web.post("/rejoin/{node}", self.rejoin), web.get("/rejoin/{node}", self.rejoin_plan),
                             web.post("/reload", self.reload),
                             web.post("/drain/{node}", self.drain), web.post("/undrain/{node}", self.undrain),
                             web.post("/nodes", self.add_nodes), web.delete("/nodes/{node}", self.remove_node),
                             web.post("/maintenance/restart", self.rolling_restart),
                             web.post("/backups", self.take_backup), web.get("/backups", self.list_backups),
                             web.post("/backtrack", self.backtrack), web.post("/backtrack/undo", self.backtrack_undo)])
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def status(self, request: web.Request) -> web.Response:
        return _json(status_document(self.service))

    async def scrape(self, request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render(self.metrics))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def events(self, request: web.Request) -> web.Response:
        limit = request.query.get("limit", "")
        if limit and not limit.isdigit():
            return _json({"error": "limit must be a whole number"}, status=400)
        return _json(self.service.events.recent(int(limit) if limit else None))

    async def switchover(self, request: web.Request) -> web.Response:
        return await self._monitor_request("switchover", to=request.query.get("to") or None)

    async def failover(self, request: web.Request) -> web.Response:
        accept = request.query.get("accept_data_loss", "")
        if accept not in ("", "0", "1", "true", "false"):
            return _json({"error": "accept_data_loss must be 1 or 0"}, status=400)
        return await self._monitor_request("failover", to=request.query.get("to") or None,
                                           accept_data_loss=accept in ("1", "true"))

    async def rejoin_plan(self, request: web.Request) -> web.Response:
        """The commands that make a fenced node a replica of the writer, for its host's operator."""
        from .health.rejoin_plan import plan
        try:
            return _json({"script": plan(self.service.config, self.service.hub.current, request.match_info["node"])})
        except ValueError as exc:
            return _json({"error": str(exc)}, status=409)

    async def reload(self, request: web.Request) -> web.Response:
        """Reload the endpoints' TLS certificate and key, as SIGHUP does."""
        try:
            return _json(await self.service.reload())
        except ConfigError as exc:
            return _json({"error": str(exc), "problems": exc.problems}, status=409)

    async def drain(self, request: web.Request) -> web.Response:
        return await self._monitor_request("drain", node=request.match_info["node"])

    async def undrain(self, request: web.Request) -> web.Response:
        return await self._monitor_request("undrain", node=request.match_info["node"])

    async def add_nodes(self, request: web.Request) -> web.Response:
        """Add replicas (?count=N, default 1); answers once each serves reads."""
        count = request.query.get("count", "1")
        if not count.isdigit() or not 1 <= int(count) <= 15:
            return _json({"error": "count must be a whole number from 1 to 15"}, status=400)
        return await self._operation(self.service.scaler.add(int(count)))

    async def remove_node(self, request: web.Request) -> web.Response:
        """Drain a replica, give its sessions ?drain_timeout= seconds (default 30), end the rest, remove it."""
        try:
            timeout = float(request.query.get("drain_timeout", DRAIN_TIMEOUT))
        except ValueError:
            timeout = -1.0
        if not 0 <= timeout <= 3600:
            return _json({"error": "drain_timeout must be a number of seconds from 0 to 3600"}, status=400)
        return await self._operation(self.service.scaler.remove(request.match_info["node"], timeout))

    async def rolling_restart(self, request: web.Request) -> web.Response:
        """Body: {"set": {"shared_buffers": "256MB"}, "bindir": null, "drain_timeout": 30}."""
        try:
            body = await request.json() if request.can_read_body else {}
            settings = {str(k): str(v) for k, v in (body.get("set") or {}).items()}
            bindir, timeout = body.get("bindir"), float(body.get("drain_timeout", DRAIN_TIMEOUT))
        except (ValueError, AttributeError, TypeError):
            return _json({"error": 'the body must be JSON like {"set": {"name": "value"}, "bindir": null, '
                                   '"drain_timeout": 30}'}, status=400)
        if not settings and not bindir:
            return _json({"error": "nothing to apply: give settings to set, a bindir, or both"}, status=400)
        if not 0 <= timeout <= 3600:
            return _json({"error": "drain_timeout must be a number of seconds from 0 to 3600"}, status=400)
        return await self._operation(self.service.maintenance.restart(settings, bindir, timeout))

    async def take_backup(self, request: web.Request) -> web.Response:
        """A backup now (?type=full|diff|incr, default full), from a healthy replica when there is one."""
        if self.service.backups is None:
            return _json({"error": "backups are off: start pgaurora up with --backups"}, status=409)
        return await self._operation(self.service.backups.backup(request.query.get("type", "full")))

    async def list_backups(self, request: web.Request) -> web.Response:
        if self.service.backups is None:
            return _json({"error": "backups are off: start pgaurora up with --backups"}, status=409)
        try:
            return _json(await self.service.backups.listing())
        except ClusterError as exc:
            return _json({"error": str(exc)}, status=409)

    async def backtrack(self, request: web.Request) -> web.Response:
        """Rewind the cluster in place to ?to=TIME (the endpoints stay; a new epoch)."""
        if self.service.backtrack is None:
            return _json({"error": "backtrack restores from the backups: start pgaurora up with --backups"},
                         status=409)
        if not request.query.get("to"):
            return _json({"error": "to=TIME is required, e.g. to=2026-11-28 10:15:00%2B00"}, status=400)
        return await self._operation(self.service.backtrack.run(request.query["to"]))

    async def backtrack_undo(self, request: web.Request) -> web.Response:
        if self.service.backtrack is None:
            return _json({"error": "there is no backtrack to undo: backups are off"}, status=409)
        return await self._operation(self.service.backtrack.undo())

    async def _operation(self, work) -> web.Response:
        """A long operation runs to its end even when the client hangs up (it is shielded)."""
        try:
            return _json(await asyncio.shield(asyncio.ensure_future(work)))
        except (ActionFailed, ConfigError, ClusterError) as exc:
            return _json({"error": str(exc)}, status=409)

    async def rejoin(self, request: web.Request) -> web.Response:
        return await self._monitor_request("rejoin", node=request.match_info["node"])

    async def _monitor_request(self, kind: str, **args) -> web.Response:
        try:
            return _json(await self.service.monitor.request(kind, **args))
        except Exception as exc:
            return _json({"error": str(exc)}, status=409)


def _json(data, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=2, default=str) + "\n", status=status,
                        content_type="application/json")
