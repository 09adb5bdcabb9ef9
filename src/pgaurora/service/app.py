"""Service: wires the monitor, healing, endpoints, DNS, the operations and the admin API together, and stops them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..core import config as config_mod
from ..core import reconfigure
from ..core.config import Config, Fallback, PoolMode
from ..core.errors import ClusterError, ConfigError
from ..core.eventlog import EventLog
from ..core.sslcontexts import Contexts
from ..core.topology import Health, NodeState, Role, Topology, TopologyHub
from ..dcs.member import Member
from ..dns.resolver import Zone
from ..dns.server import DnsServer
from ..health.commands import Reconfigure, Replace
from ..health.control import NodeController
from ..health.heal import Nodes, StartCommands, Supervisor
from ..health.monitor import Monitor
from ..operations.backtrack import Backtrack
from ..operations.backups import Backups
from ..operations.guard import ComposedCluster
from ..operations.maintenance import Maintenance
from ..operations.scaling import Scaler
from ..proxy.credentials import Credentials
from ..proxy.endpoint import Endpoint
from ..proxy.relays import proxy_state
from ..proxy.router import EndpointKind, Router
from ..proxy.tokens import TokenRefused
from .admin.server import AdminServer

log = logging.getLogger("pgaurora")


class Cluster(ComposedCluster, NodeController, Nodes, Protocol):
    """The one contract the running service has with a cluster pgaurora composed (compose.LocalCluster or
    DockerCluster): what the operations, the monitor (rejoin, switchover) and self-healing call."""


class Service:
    def __init__(
        self,
        config: Config,
        cluster: Cluster | None = None,
        events: EventLog | None = None,
        reset_state: bool = False,
        config_path: str | None = None,
    ) -> None:
        self.config = config
        self.cluster = cluster  # the cluster pgaurora composed (`pgaurora up`); None for `proxy -c`
        self.config_path = config_path  # `proxy -c FILE`: what a reload reads again
        self.hub = TopologyHub(Topology(cluster=config.cluster))
        self.events = events or EventLog()
        self.proxy_state = proxy_state(config)
        self.router = Router(self.hub, config, self.proxy_state)
        self.tls = Contexts(config.tls)
        self.credentials = credentials_for(config, self.hub)
        common = (config, self.hub, self.router, self.proxy_state, self.tls)
        self.writer = Endpoint(EndpointKind.WRITER, config.writer, *common, credentials=self.credentials)
        self.reader = Endpoint(EndpointKind.READER, config.reader, *common, credentials=self.credentials)
        self.custom = [
            Endpoint(EndpointKind.READER, spec, *common, custom=spec, credentials=self.credentials)
            for spec in config.endpoints
        ]
        self.member = Member(config, self.events) if config.dcs is not None else None
        self.monitor = Monitor(config, self.hub, self.events, cluster, reset_state, self.member)
        self.monitor.in_flight = self.proxy_state.lent_on  # a switchover lets pooled transactions finish
        if self.member is not None:
            self.member.on_change = self.monitor.wake  # followers route a new writer within one watch round trip
        self.dns = (
            DnsServer(
                self.hub,
                Zone(config.zone, config.dns.ttl, config.reader.fallback is Fallback.WRITER, config.endpoints),
                config.dns.host,
                config.dns.port,
            )
            if config.dns.enabled
            else None
        )
        self.operations = asyncio.Lock()  # replicas add/remove and maintenance: one at a time
        self.scaler = Scaler(self)
        self.maintenance = Maintenance(self)
        self.backups = self._backups(config, cluster)
        self.backtrack = Backtrack(self, self.backups.config.backtrack_keep) if self.backups is not None else None
        self.supervisor = self._supervisor(config, cluster)
        self.admin = AdminServer(self, config.admin.host, config.admin.port)
        self._monitor_task: asyncio.Task | None = None
        self._heal_task: asyncio.Task | None = None

    def _supervisor(self, config: Config, cluster: Cluster | None) -> Supervisor | None:
        """Self-healing: of the nodes pgaurora composes, or through [heal] commands; off with [heal] enabled."""
        if not config.heal.enabled or (cluster is None and not config.heal.commands):
            return None
        nodes: Nodes = cluster if cluster is not None else StartCommands(config.heal.commands)
        return Supervisor(
            nodes,
            self.hub,
            self.monitor,
            self.events,
            config.heal,
            config.failover.sync_mode,
            config.failover.sync_acks,
        )

    def _backups(self, config: Config, cluster: Cluster | None) -> Backups | None:
        if config.backup is None:
            return None
        if cluster is None:
            raise ConfigError(
                [
                    "backup: backups work on clusters pgaurora composes (`pgaurora up --backups`); for a "
                    "cluster of your own, run pgBackRest beside it"
                ]
            )
        if cluster.backend != "local":
            raise ConfigError(
                [
                    "backup: backups need the nodes as local processes (--backend local): pgBackRest "
                    "runs beside them, on this host"
                ]
            )
        return Backups(self, config.backup, cluster)

    @property
    def relay_mode(self) -> str:
        """The relay sessions actually use: native, python, kernel or hybrid."""
        state = self.proxy_state
        if state.native is not None:
            return "native"
        return "python" if state.sockmap is None else "kernel" if state.both_ways else "hybrid"

    def reader_nodes(self) -> list[str]:
        topology = self.hub.current
        if topology.readers:
            return list(topology.readers)
        fallback = self.config.reader.fallback is Fallback.WRITER
        return [topology.writer] if fallback and topology.writer else []

    def reload_tls(self) -> bool:
        """Read the endpoints' certificate and key again (SIGHUP, POST /reload): new sessions use them,
        live ones keep theirs. False when TLS is off; ConfigError (old ones kept) when unusable."""
        reloaded = self.tls.reload()
        self.admin.reload_tls()
        if reloaded:
            self.events.record(
                "tls_reloaded",
                f"new sessions use {self.config.tls.cert_file} as read now",
                cert_file=self.config.tls.cert_file,
            )
        return reloaded

    def issue_token(self, role: str, ttl: float | None, endpoints: tuple[str, ...]) -> dict[str, Any]:
        """POST /tokens: a token signed with the current [tokens] key (ClusterError when there is none)."""
        tokens = self.credentials.tokens if self.credentials is not None else None
        if tokens is None:
            raise ClusterError("tokens need a pooled endpoint and [tokens] keys in the config")
        names = {"writer", "reader", *(e.name for e in self.config.endpoints)}
        unknown = sorted(set(endpoints) - names)
        if unknown:
            raise ClusterError(f"no such endpoint: {', '.join(unknown)}")
        try:
            issued = tokens.issue(role, ttl, endpoints)
        except TokenRefused as exc:
            raise ClusterError(str(exc)) from None
        self.events.record("token_issued", f"a token for role {role} until {issued.expires_at}", role=role,
                           expires_at=issued.expires_at, key=issued.key_id)  # fmt: skip
        return {"token": issued.token, "user": role, "expires_at": issued.expires_at, "key": issued.key_id}

    async def reload(self) -> dict[str, Any]:
        """SIGHUP, POST /reload: the certificate, and the config file validated whole. Nothing changes when
        the file has a problem, or changes a setting that needs a restart (ConfigError says which)."""
        result: dict = {"tls_reloaded": self.reload_tls()}
        if self.config_path is None:
            result["config"] = "no config file (pgaurora up): only the certificate is reloaded"
            return result
        diff = await self.apply_config(config_mod.load(self.config_path), f"{self.config_path} reloaded")
        result.update(changed=list(diff.live), added=list(diff.added), removed=list(diff.removed))
        return result

    async def apply_config(self, new: Config, why: str) -> reconfigure.Changes:
        """Run with `new` from now on, without dropping a session (a reload, replicas added or removed).
        ConfigError, and nothing changes, when it changes a setting that needs a restart."""
        diff = reconfigure.changes(self.config, new)
        if diff.restart:
            raise ConfigError(
                [f"{name}: changed, and needs a restart; nothing was applied" for name in diff.restart],
                self.config_path or "the new configuration",
            )
        if diff.any:
            await self.monitor.request(Reconfigure(new, diff.added, diff.removed))
            self._take_config(new)
            self.events.record(
                "config_reloaded", why, changed=list(diff.live), added=list(diff.added), removed=list(diff.removed)
            )
        return diff

    async def replace_nodes(
        self, new: Config, writer: str, reason: str, stop_leaving: Callable[[], Awaitable[None]] | None = None
    ) -> dict:
        """Serve another set of nodes, `writer` their primary, in a new epoch (a backtrack and its undo); with
        stop_leaving, after holding writes and draining pooled transactions (Replace)."""
        result = await self.monitor.request(Replace(new, writer, reason, stop_leaving))
        self._take_config(new)
        return result

    def _take_config(self, config: Config) -> None:
        """The new settings for routing and DNS (the monitor took its own between two ticks)."""
        self.config = self.router.config = config
        for endpoint in (self.writer, self.reader, *self.custom):
            endpoint.config = config
        if self.credentials is not None:
            self.credentials.reload_tokens(config.tokens, config.cluster)
        if self.dns is not None:
            self.dns.zone = Zone(
                config.zone, config.dns.ttl, config.reader.fallback is Fallback.WRITER, config.endpoints
            )

    async def start(self) -> None:
        if self.member is not None:
            await self.member.start()
        await self.monitor.tick()  # the endpoints open on a real topology, not an empty one
        if self.backups is not None:
            await self.backups.start()
        if self.backtrack is not None:
            self.backtrack.start()
        for part in (self.writer, self.reader, *self.custom, self.dns, self.admin):
            if part is not None:
                await part.start()
        self._monitor_task = asyncio.get_running_loop().create_task(self._run_monitor())
        if self.supervisor is not None:
            self._heal_task = asyncio.get_running_loop().create_task(self._run_supervisor(self.supervisor))

    async def _run_monitor(self) -> None:
        while True:
            try:
                await self.monitor.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("monitor loop failed; restarting it")
                await asyncio.sleep(self.config.monitor.probe_interval)

    async def _run_supervisor(self, supervisor: Supervisor) -> None:
        """Heals beside the monitor (never inside its tick); with several instances, only the leader heals."""
        while True:
            try:
                if self.member is None or self.member.leading():
                    await supervisor.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("self-healing round failed; the next one comes")
            await asyncio.sleep(self.config.monitor.probe_interval)

    async def stop(self) -> None:
        if self._heal_task is not None:
            self._heal_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heal_task
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor_task
        for part in (self.admin, self.dns, *self.custom, self.reader, self.writer):
            if part is not None:
                await part.stop()
        await self.monitor.close()
        if self.backtrack is not None:
            await self.backtrack.stop()
        if self.backups is not None:
            await self.backups.stop()
        if self.member is not None:
            await self.member.close()
        if self.proxy_state.sockmap is not None:
            self.proxy_state.sockmap.close()
        if self.proxy_state.native is not None:
            self.proxy_state.native.close()

    async def wait_ready(self, timeout: float = 30) -> bool:
        """True once a writer is known, and with replicas a reader and (quorum commit) the voters."""
        want_readers = len(self.config.nodes) > 1
        want_voters = want_readers and self.monitor.policy.synchronous
        ready = await self.hub.wait_for(
            lambda t: (
                t.writer is not None and (bool(t.readers) or not want_readers) and (bool(t.voters) or not want_voters)
            ),
            timeout,
        )
        return ready is not None


def credentials_for(config: Config, hub: TopologyHub) -> Credentials | None:
    """Where pooled endpoints read roles' secrets: auth_file, or auth_query on the writer (else any node up)."""
    specs = [config.writer, config.reader, *config.endpoints]
    if all(spec.pool_mode is PoolMode.PASSTHROUGH for spec in specs):
        return None

    def nodes() -> list[NodeState]:
        topology = hub.current
        up = [n for n in topology.nodes if n.health is not Health.UNREACHABLE and n.role is not Role.FENCED]
        return sorted(up, key=lambda n: n.name != topology.writer)

    return Credentials(config.pool, config.tls, nodes, config.tokens, config.cluster)
