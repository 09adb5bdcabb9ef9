"""Endpoint: one listening server (writer or reader) that routes new connections and drains old ones."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from collections.abc import Callable

import asyncpg

from ..core.config import Config, CustomEndpointConfig, CustomRole, Fallback, Listen, PoolMode
from ..core.errors import NodeTlsFailed, NoReaderAvailable, NoWriterAvailable, ProxyError, UpstreamUnavailable
from ..core.ownlogin import connect_own
from ..core.sslcontexts import Contexts
from ..core.topology import Health, NodeState, Role, Topology, TopologyHub
from ..wire import CancelRequest, encode
from .client import ClientProtocol
from .credentials import Credentials
from .pool import Pool, Pools
from .relay import Session
from .router import EndpointKind, Router
from .split import ReplayWatch, Splitter
from .state import ProxyState, Tracked
from .upstream import ServerProtocol, connect

log = logging.getLogger("pgaurora.proxy")


class Endpoint:
    def __init__(
        self,
        kind: EndpointKind,
        listen: Listen,
        config: Config,
        hub: TopologyHub,
        router: Router,
        state: ProxyState,
        tls: Contexts | None = None,
        custom: CustomEndpointConfig | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.kind, self.listen, self.config = kind, listen, config
        self.custom = custom  # a custom endpoint: reader-like, over its own members
        self.name = custom.name if custom is not None else kind.value
        self.tls = tls  # None: no TLS on either leg
        self.hub, self.router, self.state = hub, router, state
        self.server: asyncio.Server | None = None
        spec = custom if custom is not None else getattr(config, kind.value)
        self.pool_mode: PoolMode = spec.pool_mode
        pooled = self.pool_mode is not PoolMode.PASSTHROUGH
        node_tls = (config.tls.backend_tls, tls.client if tls is not None else None)
        self.pools = Pools(config.pool, config.proxy.connect_timeout, node_tls) if pooled else None
        if self.pools is not None:
            state.pool_sets[self.name] = self.pools
        if self.pools is not None and credentials is None:
            raise ValueError(f"the {self.name} endpoint pools connections, and needs credentials")
        self._credentials = credentials
        self.starting: set[ClientProtocol] = set()  # clients whose startup waits on a node that has not answered
        self._sweeper: asyncio.Task[None] | None = None  # closes idle pooled clients (client_idle_timeout)
        self._writer_pools: dict[tuple[str, str], tuple[int, Pool]] = {}  # (database, user): (version, pool)
        # a splitting endpoint: reads through its splitter, everything else (logins too) as the writer's
        self.splitter = (
            Splitter(custom, hub, self.pools, self._connect_node)
            if custom is not None and custom.role is CustomRole.SPLIT and self.pools is not None
            else None
        )
        self._route = (EndpointKind.WRITER, None) if self.splitter is not None else (kind, custom)
        # the reader endpoint: sessions that name pgaurora.min_lsn get a replica that replayed past it
        self.replay = ReplayWatch(self._connect_node) if kind is EndpointKind.READER and custom is None else None
        hub.subscribe(self._on_topology)

    @property
    def credentials(self) -> Credentials:
        assert self._credentials is not None, "only a pooled endpoint authenticates clients itself"
        return self._credentials

    @property
    def address(self) -> str:
        return f"{self.listen.host}:{self.listen.port}"

    def admits(self, peer: str) -> bool:
        """Is a connection from this address allowed in (the allow-list as configured now), and counted."""
        spec = self.custom if self.custom is not None else getattr(self.config, self.kind.value)
        allowed = not spec.allow or _in_networks(peer, spec.allow)
        (self.state.allowed_total if allowed else self.state.disallowed_total)[self.name] += 1
        return allowed

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: ClientProtocol(self), self.listen.host, self.listen.port, backlog=4096, reuse_address=True
        )
        if self.pools is not None:
            self.pools.start()
            if self.config.proxy.client_idle_timeout:
                self._sweeper = loop.create_task(self._close_idle_clients(self.config.proxy.client_idle_timeout))

    async def _close_idle_clients(self, timeout: float) -> None:
        """client_idle_timeout: a pooled client idle between transactions that long is closed, as PostgreSQL's
        idle_session_timeout closes a session."""
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            for client in [c for c in self.state.pooled_clients.values() if c.gate is self]:
                since = client.idle_since()
                if since is not None and now - since >= timeout:
                    client.fail("57P05", "terminating connection due to idle-session timeout (client_idle_timeout)")

    async def _connect_node(self, node: NodeState) -> asyncpg.Connection:
        """A connection of pgaurora's own (the monitor's role), to ask a node its WAL positions."""
        return await connect_own(
            self.config, node.host, node.port, self.config.proxy.connect_timeout, f"pgaurora-{self.name}"
        )

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.splitter is not None:
            self.splitter.close()
        if self.replay is not None:
            self.replay.close()
        if self.server is not None:
            self.server.close()
        for session in self._sessions(lambda node: True):
            session.terminate("57P01", "terminating connection: pgaurora is shutting down")
        for client in [c for c in self.state.pooled_clients.values() if c.gate is self]:
            client.fail("57P01", "terminating connection: pgaurora is shutting down")
        if self.pools is not None:
            await self.pools.stop()

    def _sessions(self, on_node: Callable[[str], bool]) -> list[Tracked]:
        """This endpoint's sessions on the nodes for which on_node(name) is true."""
        return [
            session
            for node, sessions in list(self.state.sessions_by_node.items())
            if on_node(node)
            for session in list(sessions)
            if session.kind == self.name
        ]

    # -- routing ----------------------------------------------------------------------------
    async def open_upstream(self, client: ClientProtocol) -> ServerProtocol:
        """Connect to the node for this endpoint; the writer waits out a failover."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.proxy.failover_connect_timeout
        while True:
            topology = self.hub.current
            try:
                nodes = self.router.candidates(self.kind, topology, self.custom)
                if client.min_lsn is not None:
                    nodes = [await self.past(nodes, client.min_lsn, topology)]
                return await self._dial_any(client, nodes)
            except ProxyError as exc:
                remaining = deadline - loop.time()
                if self.kind is EndpointKind.READER or isinstance(exc, NodeTlsFailed):
                    raise
                if remaining <= 0:
                    if not self.config.failover.enabled:
                        raise
                    raise _writer_unavailable(exc, self.hub.current) from None
                await self.hub.wait_for(_changed_since(topology), remaining)

    @property
    def takes_min_lsn(self) -> bool:
        return self.replay is not None

    async def past(self, nodes: list[NodeState], lsn: int, topology: Topology) -> NodeState:
        """The reader endpoint, for a session that named pgaurora.min_lsn: the first of nodes that has replayed
        past lsn within reader.consistency_wait; else the writer (fallback = writer), else 57P03."""
        assert self.replay is not None, "only the reader endpoint takes pgaurora.min_lsn"
        replicas = [n for n in nodes if n.role is Role.REPLICA]
        loop = asyncio.get_running_loop()
        began = loop.time()
        found = await self.replay.first_past(replicas, lsn, self.config.reader.consistency_wait) if replicas else None
        waited = loop.time() - began if replicas else None
        writer = topology.writer_node
        if found is not None:
            self.state.split_counted(self.name, "min_lsn", "replica", waited)
            return found
        if writer is not None and self.config.reader.fallback is Fallback.WRITER:
            self.state.split_counted(self.name, "min_lsn", "replica_behind" if replicas else "no_replica", waited)
            return writer
        raise NoReaderAvailable(
            f"no replica has replayed past pgaurora.min_lsn {_lsn_text(lsn)}",
            detail=f"waited {self.config.reader.consistency_wait:g} s (reader.consistency_wait); fallback is refuse",
        )

    async def pool_past(self, database: str, user: str, lsn: int) -> Pool:
        """A pooled reader's pool for a transaction of a session that named pgaurora.min_lsn."""
        assert self.pools is not None
        topology = self.hub.current
        nodes = self.router.candidates(self.kind, topology, self.custom)
        return self.pools.get(await self.past(nodes, lsn, topology), database, user)

    def known_params(self, database: str, user: str) -> dict[str, str] | None:
        """The parameters a node reported to a pool of this database and user, if any pool logged in yet."""
        assert self.pools is not None
        for key, pool in self.pools.pools.items():
            if key.database == database and key.user == user and pool.params and not pool.closed:
                return pool.params
        return None

    def current_pool(self, database: str, user: str) -> Pool | None:
        """The pool of the node this endpoint routes to now, or None when there is none (pool_for waits). The
        writer's is kept per topology version: it is asked at every transaction."""
        assert self.pools is not None
        topology = self.hub.current
        kept = self._writer_pools.get((database, user))
        if kept is not None and kept[0] == topology.version and not kept[1].closed:
            return kept[1]
        kind, custom = self._route
        try:
            pool = self.pools.get(self.router.candidates(kind, topology, custom)[0], database, user)
        except ProxyError:
            return None
        if kind is EndpointKind.WRITER:
            self._writer_pools[(database, user)] = (topology.version, pool)
        return pool

    async def pool_for(self, database: str, user: str, avoid: str | None = None) -> Pool:
        """The pool of the node this endpoint routes to now, other than `avoid` (a node that just refused a
        connection) until the topology changes (a failover, or the node found up again); the writer waits out
        a failover, up to failover_connect_timeout."""
        assert self.pools is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.proxy.failover_connect_timeout
        refused_under = self.hub.current.version  # avoid the node until the monitor has published news
        kind, custom = self._route
        while True:
            topology = self.hub.current
            skip = avoid if topology.version == refused_under else None
            try:
                nodes = [n for n in self.router.candidates(kind, topology, custom) if n.name != skip]
                if nodes:
                    return self.pools.get(nodes[0], database, user)
                raise UpstreamUnavailable(f"node {avoid} is down")
            except ProxyError as exc:
                remaining = deadline - loop.time()
                if kind is EndpointKind.READER or remaining <= 0:
                    raise _writer_unavailable(exc, topology) from None
            await self.hub.wait_for(_changed_since(topology), remaining)

    async def _dial_any(self, client: ClientProtocol, nodes: list[NodeState]) -> ServerProtocol:
        errors, tls_failures = [], []
        for node in nodes:
            try:
                return await self._dial(client, node)
            except (OSError, TimeoutError) as exc:
                errors.append(f"{node.name} ({node.address}): {exc or 'connect timed out'}")
            except NodeTlsFailed as exc:
                errors.append(f"{node.name} ({node.address}): {exc.message}")
                tls_failures.append(exc)
        if tls_failures and len(tls_failures) == len(nodes):
            raise NodeTlsFailed(tls_failures[0].message, detail="; ".join(errors))  # no failover mends that
        raise UpstreamUnavailable(f"could not connect to the {self.name}", detail="; ".join(errors))

    async def _dial(self, client: ClientProtocol, node: NodeState) -> ServerProtocol:
        context = self.tls.client if self.tls is not None else None
        async with asyncio.timeout(self.config.proxy.connect_timeout):
            return await connect(client, node, self.config.tls.backend_tls, context)

    async def forward_cancel(self, event: CancelRequest) -> None:
        """Send a CancelRequest to the node whose backend issued that key (learned on either endpoint)."""
        address = self.state.cancel_keys.get((event.process_id, event.secret_key))
        pooled = self.state.pooled_clients.get((event.process_id, event.secret_key))
        if pooled is not None and (where := pooled.cancel_target()) is not None:
            address, key = where
            event = CancelRequest(*key)
        if address is None:
            return  # as PostgreSQL does, ignore unknown keys silently
        writer = None
        try:
            async with asyncio.timeout(self.config.proxy.connect_timeout):
                reader, writer = await asyncio.open_connection(*address)
                writer.write(encode(event))
                await writer.drain()
                await reader.read()  # PostgreSQL closes once it has acted on the request
        except (OSError, TimeoutError) as exc:
            log.warning("could not forward cancel request to %s:%s: %s", *address, exc)
        finally:
            if writer is not None:
                writer.close()

    # -- draining ------------------------------------------------------------------------------
    def watch(self, session: Session) -> None:
        """A session that started while the topology changed may already be stale."""
        if not self.router.still_valid(self.kind, session.node, self.hub.current):
            self._drop(session, self.hub.current)

    def _on_topology(self, old: Topology, new: Topology) -> None:
        if (old.writer, old.epoch) == (new.writer, new.epoch) and _standing(old) == _standing(new):
            return
        for session in self._sessions(lambda node: not self.router.still_valid(self.kind, node, new)):
            self._drop(session, new)
        self._reroute_startups(new)
        if self.pools is not None:
            # a new writer (a failover) or a fenced replica: transactions on the node that left are lost, and end
            # now; while a switchover holds writes (no writer), they may finish (drain_timeout)
            abort = self.kind is not EndpointKind.WRITER or new.writer is not None
            if self.kind is EndpointKind.WRITER and new.writer is not None and (writer := new.node(new.writer)):
                self.pools.warm(writer)  # with the keys the pools about to close hold
            self.pools.close_nodes(lambda node: self.router.still_valid(self.kind, node, new), abort)
            if self.kind is not EndpointKind.WRITER:  # drained or removed: lend it nothing new, let lent ones finish
                self.pools.close_nodes(lambda node: (state := new.node(node)) is not None and not state.drained)

    def _reroute_startups(self, topology: Topology) -> None:
        for client in list(self.starting):
            node = client.server.node if client.server is not None else None
            if node is not None and not self._may_start_on(node, topology) and client.reroute():
                log.info("a startup waiting on %s moved: that node is no longer one to start on", node.name)

    def _may_start_on(self, node: NodeState, topology: Topology) -> bool:
        """May a startup still waiting on node go on waiting? Not once it stopped being the writer, or (a
        replica) was fenced or found unreachable."""
        if not self.router.still_valid(self.kind, node.name, topology):
            return False
        state = topology.node(node.name)
        return self.kind is EndpointKind.WRITER or (state is not None and state.health is not Health.UNREACHABLE)

    def _drop(self, session: Tracked, topology: Topology) -> None:
        why = (
            f"node {session.node} is no longer the writer"
            if self.kind is EndpointKind.WRITER
            else f"node {session.node} was fenced"
        )
        session.terminate("57P01", f"terminating connection: {why} (epoch {topology.epoch})")


@functools.lru_cache(maxsize=64)
def _parsed(networks: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def _in_networks(peer: str, networks: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in _parsed(networks) if network.version == address.version)


def _lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _standing(topology: Topology) -> list[tuple[str, Role, Health, bool]]:
    return [(n.name, n.role, n.health, n.drained) for n in topology.nodes]


def _changed_since(seen: Topology) -> Callable[[Topology], bool]:
    """A predicate for TopologyHub.wait_for: any topology newer than seen."""
    return lambda t: t.version != seen.version


def _writer_unavailable(exc: ProxyError, topology: Topology) -> ProxyError:
    """After waiting out failover_connect_timeout: a writer that is down and was not replaced (the monitor
    refuses to promote) is 57P03 with the monitor's reason, rather than a bare 08006."""
    writer = topology.writer_node
    if writer is not None and writer.health is Health.UNREACHABLE:
        return NoWriterAvailable(f"writer {writer.name} is down and no replica was promoted", detail=topology.reason)
    return exc
