"""The admin HTTP server: authenticates, validates against the route table, audits, then runs each request."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ...core import custom_endpoints
from ...core.config import CustomRole
from ...core.errors import ActionFailed, ClusterError, ConfigError
from ...core.sslcontexts import admin_context, certificate_file
from ...core.topology import Role, Topology, loss_bound_bytes
from ...health.commands import Command, Drain, Failover, Rejoin, Switchover, Undrain
from ...health.heal import redundancy
from .. import metrics
from . import auth, console
from .routes import (
    MAX_BODY_BYTES,
    ROUTES,
    AddNodesParams,
    BacktrackParams,
    BackupParams,
    ConsoleParams,
    EventsParams,
    FailoverParams,
    Invalid,
    NodeParams,
    NoParams,
    Params,
    RemoveNodeParams,
    RestartParams,
    Route,
    SessionParams,
    SwitchoverParams,
    TokenParams,
    openapi,
    validate,
)

if TYPE_CHECKING:
    from ...core.eventlog import EventLog
    from ...health.commands import Command as _Command
    from ...operations.backtrack import Backtrack
    from ...operations.guard import ComposedCluster
    from ...operations.maintenance import Maintenance
    from ...operations.scaling import Scaler


class Commands(metrics.Probing, Protocol):
    """The monitor, as the admin API uses it."""

    async def request(self, command: _Command) -> dict[str, Any]: ...


class AdminHost(metrics.MetricsHost, Protocol):
    """What the admin API uses of the running service (service.app.Service)."""

    @property
    def events(self) -> EventLog: ...

    @property
    def monitor(self) -> Commands: ...

    @property
    def cluster(self) -> ComposedCluster | None: ...

    @property
    def scaler(self) -> Scaler: ...

    @property
    def maintenance(self) -> Maintenance: ...

    @property
    def backtrack(self) -> Backtrack | None: ...

    @property
    def relay_mode(self) -> str: ...

    def reader_nodes(self) -> list[str]: ...

    async def reload(self) -> dict[str, Any]: ...

    def issue_token(self, role: str, ttl: float | None, endpoints: tuple[str, ...]) -> dict[str, Any]: ...


log = logging.getLogger("pgaurora.admin")


def status_document(service: AdminHost) -> dict:
    """Everything `pgaurora status` shows, read from the current Topology."""
    topology, config = service.hub.current, service.config
    nodes = [
        {
            "name": n.name,
            "address": n.address,
            "role": n.role.value,
            "health": n.health.value,
            "lag_bytes": n.lag_bytes,
            "lag_seconds": None if n.lag_seconds is None else round(n.lag_seconds, 3),
            "timeline": n.timeline,
            "upstream": n.upstream,
            "drained": n.drained,
            "connections": service.proxy_state.count(n.name),
        }
        for n in topology.nodes
    ]
    return {
        "cluster": topology.cluster,
        "zone": config.zone,
        "pid": os.getpid(),
        "epoch": topology.epoch,
        "topology_version": topology.version,
        "reason": topology.reason,
        "writer": {
            "endpoint": f"{config.writer.host}:{config.writer.port}",
            "node": topology.writer,
            "pool_mode": config.writer.pool_mode.value,
        },
        "reader": {
            "endpoint": f"{config.reader.host}:{config.reader.port}",
            "nodes": service.reader_nodes(),
            "policy": config.reader.policy.value,
            "pool_mode": config.reader.pool_mode.value,
            "fallback": config.reader.fallback.value,
        },
        "dns": f"{config.dns.host}:{config.dns.port}" if config.dns.enabled else None,
        "max_replica_lag_bytes": config.monitor.max_replica_lag.bytes,
        "sync_mode": config.failover.sync_mode.value,
        "sync_standbys": topology.sync_standbys,
        "loss_bound_bytes": loss_bound_bytes(topology),
        "redundancy": _redundancy(topology, service),
        "heal": service.supervisor.document() if service.supervisor is not None else None,
        "monitor": _monitor(service),
        "voters": list(topology.voters),
        "sync_acks": topology.proven,
        "promote_quorum": max(0, len(topology.voters) - topology.proven + 1),
        "survivable_failures": topology.survivable,
        "can_lose": can_lose(topology.survivable),
        "failover_safe": topology.failover_safe,
        "failover_outlook": topology.failover_outlook,
        "fenced_hint": _fenced_hint(topology, service),
        "last_unsafe_failover": _last_unsafe(service),
        "client_connections": service.proxy_state.clients,
        "limit_refusals": dict(service.proxy_state.limited_total),
        "pools": service.proxy_state.pools(),
        "split": service.proxy_state.split(),
        "pins": dict(service.proxy_state.pins),
        "relay": service.relay_mode,
        "relay_threads": service.proxy_state.native.threads if service.proxy_state.native else None,
        "nodes": nodes,
        "dcs": service.member.document() if service.member is not None else None,
        "backup": service.backups.document() if service.backups is not None else None,
        "endpoints": [
            {
                "name": e.name,
                "endpoint": f"{e.host}:{e.port}",
                "role": e.role.value,
                "pool_mode": e.pool_mode.value,
                **({"consistency": e.consistency.value} if e.role is CustomRole.SPLIT else {}),
                "nodes": [n.name for n in custom_endpoints.targets(e, topology)],
            }
            for e in config.endpoints
        ],
    }


def _monitor(service: AdminHost) -> dict[str, Any]:
    """How recently the monitor probed: a tick that blocks (or a stuck monitor) shows as a growing age."""
    age = service.monitor.probe_age()
    return {
        "probe_interval": service.config.monitor.probe_interval,
        "last_probe_seconds_ago": None if age is None else round(age, 3),
    }


def can_lose(survivable: int) -> str:
    """What the cluster can lose at once now, with no commit lost and no person deciding."""
    if survivable <= 0:
        return "nothing without a person deciding"
    if survivable == 1:
        return "the writer"
    extra = survivable - 1
    return f"the writer and {extra} replica{'s' * (extra != 1)}"


def _redundancy(topology: Topology, service: AdminHost) -> dict:
    """Copies now against copies wanted, and since when the cluster has been short of them."""
    now = redundancy(topology, service.config.failover.sync_mode, service.config.failover.sync_acks)
    since = service.supervisor.degraded_since if service.supervisor is not None else None
    return {
        "replicas": now.replicas,
        "streaming": now.streaming,
        "commit_copies": now.copies,
        "wanted_copies": now.wanted,
        "full": now.full,
        "summary": now.describe(),
        "degraded_since": since,
    }


def _last_unsafe(service: AdminHost) -> dict | None:
    """The latest failover forced with --accept-data-loss, and the loss bound it recorded."""
    event = next((e for e in reversed(service.events.recent()) if e["kind"] == "failover_unsafe"), None)
    if event is None:
        return None
    return {k: event.get(k) for k in ("time", "candidate", "old_writer", "loss_bound_bytes", "reason")}


def _fenced_hint(topology: Topology, service: AdminHost) -> str | None:
    fenced = [n.name for n in topology.nodes if n.role is Role.FENCED]
    if not fenced:
        return None
    if service.cluster is not None:
        return f"fenced: {', '.join(fenced)}; `pgaurora rejoin NODE` makes one a replica again"
    return (
        f"fenced: {', '.join(fenced)}; `pgaurora rejoin NODE --print` prints the commands that make one a "
        "replica again, to run on its host"
    )


def _refusal(problem: Invalid) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="pgaurora"'} if problem.status == 401 else None
    return _json({"error": problem.error, "problems": problem.problems}, problem.status, headers)


async def _body(request: web.Request) -> bytes:
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise Invalid(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Invalid(413, f"the body is larger than {MAX_BODY_BYTES} bytes") from None


class AdminServer:
    """Serves ROUTES: each request is authenticated, validated and scope-checked; changes are audited."""

    def __init__(self, service: AdminHost, host: str, port: int) -> None:
        self.service, self.host, self.port = service, host, port
        self.app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_json_errors])
        self.metrics = metrics.registry_for(service)
        self.local_token = auth.local_token(service.config)
        self.auth = auth.authenticator(service.config, self.local_token)
        self.sessions = auth.Sessions()
        self.app.add_routes([web.route(r.method, r.path, self._handler(r)) for r in ROUTES])
        self._runner: web.AppRunner | None = None
        self._published: Path | None = None
        a = service.config.admin
        self.ssl = admin_context(service.config.tls, a.client_ca_file) if a.tls else None

    def reload_tls(self) -> None:
        """New connections get the certificate as it is on disk now (ConfigError, old one kept, if unusable)."""
        if self.ssl is not None:
            tls = self.service.config.tls
            admin_context(tls, self.service.config.admin.client_ca_file)  # checks the files: ConfigError first
            self.ssl.load_cert_chain(certificate_file(tls), tls.key_file)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl).start()
        self._published = auth.publish(self.host, self.port, self.local_token)

    async def stop(self) -> None:
        if self._published is not None:
            auth.withdraw(self._published, self.local_token)
        if self._runner is not None:
            await self._runner.cleanup()

    def _handler(self, route: Route):
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                credential = self._authenticate(route, request)
                params = validate(route, list(request.query.items()), dict(request.match_info), await _body(request))
                self._authorize(route, params, credential)
                self._check_nodes(params)
            except Invalid as problem:
                return _refusal(problem)
            if not route.takes_body or credential is None:
                return await self._run(route, params, request)
            return await self._audited(route, request, params, credential.name)

        return handle

    def _authenticate(self, route: Route, request: web.Request) -> auth.Credential | None:
        """The request's credential: its bearer token, else its verified client certificate, else a console
        session (its cookie, or on the console page the token that logs it in); None only for /metrics with
        open_metrics. A change made with the cookie also needs the console's header: another site's form
        cannot send it (CSRF)."""
        credential = self.auth.identify(request.headers.get("Authorization"))
        if credential is None and "Authorization" not in request.headers and self.ssl is not None:
            credential = self.auth.by_certificate(_peercert(request))
        if credential is None and "Authorization" not in request.headers:
            credential = self.sessions.identify(request.cookies.get(console.COOKIE))
            if credential is None and route.path == "/":
                credential = self.sessions.identify(request.query.get("token"), cookie=False)
        if credential is not None and credential.cookie and route.takes_body:
            if request.headers.get(console.HEADER) != "1":
                raise Invalid(403, f"a change from the console must carry the {console.HEADER} header")
        if credential is None and not (route.path == "/metrics" and self.service.config.admin.open_metrics):
            given = "Authorization" in request.headers
            raise Invalid(
                401,
                "the bearer token is not valid"
                if given
                else "a bearer token is required (Authorization: Bearer TOKEN); on this host `pgaurora` "
                "commands find the local one themselves",
            )
        return credential

    @staticmethod
    def _authorize(route: Route, params: Params, credential: auth.Credential | None) -> None:
        needed = route.needed_scope(params)
        if credential is not None and not credential.scope.allows(needed):
            raise Invalid(
                403,
                f"{route.method} {route.path} needs the {needed.value} scope; token "
                f"{credential.name!r} has {credential.scope.value}",
            )

    def _check_nodes(self, params: Params) -> None:
        known = [n.name for n in self.service.hub.current.nodes]
        unknown = {k: v for k, v in params.node_refs().items() if v not in known}
        if unknown:
            names = ", ".join(repr(v) for v in sorted(set(unknown.values())))
            raise Invalid(
                404,
                f"no node named {names}; the nodes are {', '.join(known) or 'none yet'}",
                [f"{k}: no node {v!r}" for k, v in unknown.items()],
            )

    async def _audited(self, route: Route, request: web.Request, params: Params, token: str) -> web.StreamResponse:
        what, peer = f"{route.method} {request.path}", request.remote or "unknown"
        args = params.model_dump(mode="json", exclude_defaults=True)
        record = dict(token=token, peer=peer, request=what, params=args)
        self.service.events.record("audit", f"{what} by {token} from {peer}: requested", phase="requested", **record)
        response = await self._run(route, params)
        outcome = "done" if response.status < 400 else _error_of(response)
        self.service.events.record(
            "audit",
            f"{what} by {token} from {peer}: {response.status} {outcome}"[:300],
            phase="answered",
            status=response.status,
            outcome=outcome,
            **record,
        )
        return response

    async def _run(self, route: Route, params: Params, request: web.Request | None = None) -> web.StreamResponse:
        try:
            if route.with_request:
                return await getattr(self, route.handler)(params, request)
            return await getattr(self, route.handler)(params)
        except (ActionFailed, ClusterError) as exc:
            return _json({"error": str(exc), "problems": []}, status=409)
        except ConfigError as exc:
            return _json({"error": str(exc), "problems": exc.problems}, status=409)

    async def status(self, params: NoParams) -> web.Response:
        return _json(status_document(self.service))

    async def console_page(self, params: ConsoleParams, request: web.Request) -> web.StreamResponse:
        """The console; with ?token=, log the browser in (a cookie) and drop the token from the address."""
        if params.token is not None:
            expires = self.sessions.expires(params.token) or 0.0
            moved = web.HTTPSeeOther("/")
            moved.set_cookie(
                console.COOKIE,
                params.token,
                max_age=max(0, int(expires - time.time())),
                httponly=True,
                samesite="Strict",
                secure=self.ssl is not None,
                path="/",
            )
            raise moved
        return web.Response(body=console.page(), content_type="text/html", charset="utf-8")

    async def console_stream(self, params: NoParams, request: web.Request) -> web.StreamResponse:
        return await console.stream(request, self.service, lambda: status_document(self.service))

    async def console_session(self, params: SessionParams) -> web.Response:
        token, expires = self.sessions.mint(params.ttl)
        scheme = "https" if self.ssl is not None else "http"
        url = f"{scheme}://{self.host}:{self.port}/?token={token}"
        return _json({"url": url, "expires_at": round(expires, 3)})

    async def openapi(self, params: NoParams) -> web.Response:
        from importlib.metadata import version

        return _json(openapi(version("pgaurora")))

    async def scrape(self, params: NoParams) -> web.Response:
        response = web.Response(body=metrics.render(self.metrics))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def events(self, params: EventsParams) -> web.Response:
        events = self.service.events.recent()
        if params.audit:
            events = [e for e in events if e["kind"] == "audit"]
        return _json(events[-params.limit :] if params.limit else events)

    async def switchover(self, params: SwitchoverParams) -> web.Response:
        return await self._monitor_request(Switchover(to=params.to))

    async def failover(self, params: FailoverParams) -> web.Response:
        return await self._monitor_request(Failover(to=params.to, accept_data_loss=params.accept_data_loss))

    async def rejoin_plan(self, params: NodeParams) -> web.Response:
        """The commands that make a fenced node a replica of the writer, for its host's operator."""
        from ...health.rejoin_plan import plan

        try:
            return _json({"script": plan(self.service.config, self.service.hub.current, params.node)})
        except ValueError as exc:
            return _json({"error": str(exc), "problems": []}, status=409)

    async def reload(self, params: NoParams) -> web.Response:
        """Reload the endpoints' TLS certificate and key, and the config file, as SIGHUP does."""
        return _json(await self.service.reload())

    async def issue_token(self, params: TokenParams) -> web.Response:
        """A signed token for a role; it is in this answer alone (never in the audit trail or a log)."""
        return _json(self.service.issue_token(params.user, params.ttl, params.endpoints))

    async def drain(self, params: NodeParams) -> web.Response:
        return await self._monitor_request(Drain(params.node))

    async def undrain(self, params: NodeParams) -> web.Response:
        return await self._monitor_request(Undrain(params.node))

    async def rejoin(self, params: NodeParams) -> web.Response:
        return await self._monitor_request(Rejoin(params.node))

    async def add_nodes(self, params: AddNodesParams) -> web.Response:
        return await self._operation(self.service.scaler.add(params.count))

    async def remove_node(self, params: RemoveNodeParams) -> web.Response:
        return await self._operation(self.service.scaler.remove(params.node, params.drain_timeout))

    async def rolling_restart(self, params: RestartParams) -> web.Response:
        return await self._operation(
            self.service.maintenance.restart(dict(params.set), params.bindir, params.drain_timeout)
        )

    async def take_backup(self, params: BackupParams) -> web.Response:
        if self.service.backups is None:
            raise ClusterError("backups are off: start pgaurora up with --backups")
        return await self._operation(self.service.backups.backup(params.type))

    async def list_backups(self, params: NoParams) -> web.Response:
        if self.service.backups is None:
            raise ClusterError("backups are off: start pgaurora up with --backups")
        return _json(await self.service.backups.listing())

    async def backtrack(self, params: BacktrackParams) -> web.Response:
        """Rewind the cluster in place (the endpoints stay; a new epoch)."""
        if self.service.backtrack is None:
            raise ClusterError("backtrack restores from the backups: start pgaurora up with --backups")
        return await self._operation(self.service.backtrack.run(params.to))

    async def backtrack_undo(self, params: NoParams) -> web.Response:
        if self.service.backtrack is None:
            raise ClusterError("there is no backtrack to undo: backups are off")
        return await self._operation(self.service.backtrack.undo())

    async def _operation(self, work) -> web.Response:
        """A long operation runs to its end even when the client hangs up (it is shielded)."""
        return _json(await asyncio.shield(asyncio.ensure_future(work)))

    async def _monitor_request(self, command: Command) -> web.Response:
        try:
            return _json(await self.service.monitor.request(command))
        except Exception as exc:  # the monitor's refusal, whatever its type, is the answer
            return _json({"error": str(exc), "problems": []}, status=409)


@web.middleware
async def _json_errors(request: web.Request, handler) -> web.StreamResponse:
    """aiohttp's own answers (no such route, method not allowed) in the API's error shape; never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allowed = exc.headers.get("Allow") if exc.status == 405 else None
        return _json(
            {
                "error": exc.reason + (f": {request.method} {request.path}" if exc.status in (404, 405) else ""),
                "problems": [f"allowed: {allowed}"] if allowed else [],
            },
            exc.status,
        )
    except Exception as exc:  # a bug: answer 500 with what failed, log the traceback
        log.exception("admin request %s %s failed", request.method, request.path)
        return _json({"error": f"internal error: {type(exc).__name__}: {exc}", "problems": []}, 500)


def _peercert(request: web.Request) -> dict | None:
    """The client certificate the TLS handshake verified, as ssl's getpeercert() gives it; None without one."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport is not None else None
    return ssl_object.getpeercert() if ssl_object is not None else None


def _error_of(response: web.StreamResponse) -> str:
    try:
        return str(json.loads(response.text)["error"])[:200]  # type: ignore[attr-defined]  # web.Response
    except (ValueError, KeyError, AttributeError, TypeError):
        return "error"


def _json(data, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=2, default=str) + "\n",
        status=status,
        headers=headers,
        content_type="application/json",
    )
