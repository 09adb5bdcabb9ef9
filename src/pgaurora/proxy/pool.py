"""Pool: server connections per (node, database, user), logged in with a client's key, lent to one client at a time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..core.config import BackendTls
from ..core.errors import ProxyError, UpstreamUnavailable
from ..wire import BackendKeyData, Framer, RemoteProtocolError, StartupMessage, decode_backend, encode
from ..wire.frontend import sasl_initial_response, sasl_response, simple_query
from .scram import MECHANISM, ClientExchange, ScramFailed, Secret
from .upstream import dial

if TYPE_CHECKING:
    import ssl

    from ..core.config import PoolConfig
    from ..core.topology import NodeState

log = logging.getLogger("pgaurora.pool")

NodeTls = tuple[BackendTls, "ssl.SSLContext | None"]
"""How pooled connections reach the nodes: [tls] backend_tls, and the context for it (None: plaintext)."""
NO_TLS: NodeTls = (BackendTls.DISABLE, None)

RESET_QUERY = "DISCARD ALL"  # as PgBouncer's server_reset_query: a lent-out session leaves nothing behind


class ServerLoginFailed(ProxyError):
    """The node refused the login pgaurora made with the client's key (its password changed?)."""

    sqlstate = "28P01"


class Borrower(Protocol):
    """What a server connection calls on the client it is lent to (pooled.PooledClient)."""

    def from_server(self, data: bytes) -> None: ...

    def server_lost(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PoolKey:
    node: str
    database: str
    user: str


class ServerLink(asyncio.Protocol):
    """One server connection of a pool: logs in (SCRAM with a ClientKey), then carries one borrower at a time."""

    def __init__(self, pool: Pool, client_key: bytes, secret: Secret) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[ServerLink] = asyncio.get_running_loop().create_future()
        self.owner: Borrower | None = None
        self.params: dict[str, str] = {}
        self.cancel_key: tuple[int, bytes] | None = None
        self.prepared: OrderedDict[bytes, None] = OrderedDict()  # statement names this backend holds
        self.settings: tuple[tuple[str, str], ...] = ()  # the session settings last applied
        self.created = self.idle_since = time.monotonic()
        self.broken = False
        self._framer = Framer(max_message=1 << 20)
        self._scram = ClientExchange(client_key, secret)
        self._resetting = False

    # -- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = self.pool.key
        startup = StartupMessage((("user", key.user), ("database", key.database), ("application_name", "pgaurora")))
        self.transport.write(encode(startup))  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.owner is not None:
            self.owner.from_server(data)
        elif not self.ready.done() or self._resetting:
            self._framer.feed(data)
            try:
                self._read_frames()
            except (RemoteProtocolError, ScramFailed, ProxyError) as exc:
                self._fail(exc)
        else:
            self.close()  # an idle backend spoke (terminated by an administrator): it is not trusted again

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        if not self.ready.done():
            self.ready.set_exception(UpstreamUnavailable(f"node {self.pool.node.name} closed the connection at login"))
        self.pool.forget(self)
        if self.owner is not None:
            owner, self.owner = self.owner, None
            owner.server_lost()

    # -- login, and the reset between sessions -------------------------------------------------
    def _read_frames(self) -> None:
        while (frame := self._framer.next_frame()) is not None:
            payload = bytes(frame.payload)
            if frame.type == b"R":
                self._authenticate(int.from_bytes(payload[:4], "big"), payload[4:])
            elif frame.type == b"S" and not self._resetting:
                name, value, _ = payload.split(b"\0", 2)
                self.params[name.decode()] = value.decode()
            elif frame.type == b"K":
                key = decode_backend(frame.type, payload)
                assert isinstance(key, BackendKeyData)
                self.cancel_key = (key.process_id, key.secret_key)
            elif frame.type == b"E" and not self._resetting:
                refused = ServerLoginFailed(_field(payload, b"M") or f"node {self.pool.node.name} refused the login")
                refused.sqlstate = _field(payload, b"C") or refused.sqlstate  # 3D000 for a missing database...
                raise refused
            elif frame.type == b"Z":
                self._ready()
                return

    def _authenticate(self, code: int, data: bytes) -> None:
        assert self.transport is not None
        if code == 0:
            return
        if code == 10 and MECHANISM.encode() in data.split(b"\0"):
            self.transport.write(sasl_initial_response(MECHANISM, self._scram.first()))
        elif code == 11:
            self.transport.write(sasl_response(self._scram.final(data.decode())))
        elif code == 12:
            self._scram.verify(data.decode())
        else:
            raise ServerLoginFailed(
                f"node {self.pool.node.name} asks for authentication type {code}; pooling logs in with "
                "SCRAM-SHA-256 only (password_encryption = scram-sha-256, and a scram-sha-256 line in pg_hba.conf)"
            )

    def _ready(self) -> None:
        if self._resetting:
            self._resetting = False
            self.prepared.clear()
            self.settings = ()
            self.pool.idle(self)
        elif not self.ready.done():
            self.pool.params = self.params
            self.ready.set_result(self)

    def _fail(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
        self.close()

    def reset(self) -> None:
        """After a session that may have left state behind: DISCARD ALL, then back to the idle list."""
        assert self.transport is not None
        self._resetting = True
        self._framer = Framer(max_message=1 << 30)
        self.transport.write(simple_query(RESET_QUERY))

    def close(self) -> None:
        self.broken = True
        if self.transport is not None:
            self.transport.close()


def _field(payload: bytes, code: bytes) -> str:
    """One field of an ErrorResponse payload (M: the message, C: the SQLSTATE), or ''."""
    for part in payload.split(b"\0"):
        if part[:1] == code:
            return part[1:].decode("utf-8", "replace")
    return ""


@dataclass(eq=False)
class Waiter:
    """A borrower waiting for a connection: deliver(link) when one comes, fail(error) when none does in time."""

    deliver: Callable[[ServerLink], None]
    fail: Callable[[Exception], None]
    client_key: bytes
    secret: Secret
    since: float = field(default_factory=time.monotonic)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    done: bool = False


class Pool:
    """The server connections of one (node, database, user): idle ones, lent ones, and clients waiting.
    Lending is callbacks, not tasks: an idle connection is handed over in the same call."""

    def __init__(
        self, key: PoolKey, node: NodeState, config: PoolConfig, connect_timeout: float, tls: NodeTls = NO_TLS
    ) -> None:
        self.key, self.node, self.config, self.connect_timeout = key, node, config, connect_timeout
        self.tls = tls
        self.idle_links: deque[ServerLink] = deque()
        self.links: set[ServerLink] = set()  # every open or opening one
        self.waiters: deque[Waiter] = deque()
        self.closed = False
        self.longest_wait = 0.0  # seconds, since start: the metrics show it
        self.waited_total = 0
        self.params: dict[str, str] = {}  # the node's ParameterStatus at the latest login: clients are greeted with it
        self.login: tuple[bytes, Secret] | None = None  # the latest borrower's key: min_pool_size opens with it
        self._warming = 0  # connections opening to reach min_pool_size

    @property
    def active(self) -> int:
        return len(self.links) - len(self.idle_links)

    def lend(
        self,
        deliver: Callable[[ServerLink], None],
        fail: Callable[[Exception], None],
        client_key: bytes,
        secret: Secret,
    ) -> Waiter | None:
        """deliver(link) with an idle connection now (returns None), or later with a new one or the next one
        released (returns the Waiter, for cancel()); fail(PoolTimeout) after query_wait_timeout."""
        self.login = (client_key, secret)
        while self.idle_links:
            link = self.idle_links.popleft()
            if not link.broken:
                deliver(link)
                return None
        waiter = Waiter(deliver, fail, client_key, secret)
        if len(self.links) < self.config.pool_size:
            self._open_for(waiter)
            return waiter
        self.waiters.append(waiter)
        self.waited_total += 1
        loop = asyncio.get_running_loop()
        waiter.timers.append(loop.call_later(self.config.query_wait_timeout, self._expire, waiter))
        if self.config.reserve_pool_size:
            waiter.timers.append(loop.call_later(self.config.reserve_pool_timeout, self._reserve, waiter))
        return waiter

    async def acquire(self, client_key: bytes, secret: Secret) -> ServerLink:
        """lend(), awaited."""
        future: asyncio.Future[ServerLink] = asyncio.get_running_loop().create_future()
        waiter = self.lend(future.set_result, future.set_exception, client_key, secret)
        try:
            return await future
        except asyncio.CancelledError:
            if waiter is not None:
                self.cancel(waiter)
            if future.done() and not future.cancelled() and future.exception() is None:
                self.idle(future.result())
            raise

    def cancel(self, waiter: Waiter) -> None:
        """The borrower left while it waited; a connection opening for it goes to the pool."""
        self._finish(waiter)
        if waiter in self.waiters:
            self.waiters.remove(waiter)

    def _finish(self, waiter: Waiter) -> None:
        waiter.done = True
        for timer in waiter.timers:
            timer.cancel()
        self.longest_wait = max(self.longest_wait, time.monotonic() - waiter.since)

    def _hand(self, waiter: Waiter, link: ServerLink) -> None:
        self._finish(waiter)
        waiter.deliver(link)

    def _expire(self, waiter: Waiter) -> None:
        if waiter.done:
            return
        self.cancel(waiter)
        waiter.fail(
            PoolTimeout(
                f"no server connection to {self.node.name} came free within query_wait_timeout "
                f"({self.config.query_wait_timeout:g} s); the pool holds {self.config.pool_size}"
            )
        )

    def _reserve(self, waiter: Waiter) -> None:
        if waiter not in self.waiters:  # served meanwhile, or a connection is being opened for it already
            return
        if len(self.links) < self.config.pool_size + self.config.reserve_pool_size:
            self.waiters.remove(waiter)
            self._open_for(waiter)

    def _open_for(self, waiter: Waiter) -> None:
        link = ServerLink(self, waiter.client_key, waiter.secret)
        self.links.add(link)  # counted at once: lends in the same loop iteration see it
        task = asyncio.get_running_loop().create_task(self._open(link))
        task.add_done_callback(lambda t: self._opened(t, waiter))

    def _opened(self, task: asyncio.Task[ServerLink], waiter: Waiter) -> None:
        if task.cancelled():
            error: BaseException | None = UpstreamUnavailable(f"connecting to node {self.node.name} was interrupted")
        else:
            error = task.exception()
        if error is None:
            link = task.result()
            if waiter.done:
                self.idle(link)
            else:
                self._hand(waiter, link)
        elif not waiter.done:
            self._finish(waiter)
            waiter.fail(error if isinstance(error, Exception) else UpstreamUnavailable(str(error)))

    async def _open(self, link: ServerLink) -> ServerLink:
        try:
            async with asyncio.timeout(self.connect_timeout):
                await dial(self.node, link, *self.tls)
                return await link.ready
        except BaseException:
            link.close()
            self.links.discard(link)
            if not link.ready.done():
                link.ready.cancel()
            elif not link.ready.cancelled():
                link.ready.exception()  # what is raised here says it: not "never retrieved" as well
            raise

    def release(self, link: ServerLink, reusable: bool, dirty: bool = False) -> None:
        """A borrower is done with link: to the next waiter or the idle list; reset first when dirty."""
        link.owner = None
        too_old = time.monotonic() - link.created > self.config.server_lifetime
        if not reusable or link.broken or self.closed or too_old:
            link.close()
            self._replace_for_waiter()
        elif dirty:
            link.reset()
        else:
            self.idle(link)

    def idle(self, link: ServerLink) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done:
                self._hand(waiter, link)
                return
        link.idle_since = time.monotonic()
        self.idle_links.append(link)

    def forget(self, link: ServerLink) -> None:
        self.links.discard(link)
        if link in self.idle_links:
            self.idle_links.remove(link)
        self._replace_for_waiter()

    def _replace_for_waiter(self) -> None:
        """A connection closed while clients wait: open another for the first of them."""
        if self.closed or not self.waiters or len(self.links) >= self.config.pool_size:
            return
        self._open_for(self.waiters.popleft())

    def reap(self, now: float) -> None:
        """Close idle connections past server_idle_timeout (above min_pool_size) or server_lifetime; then open
        what min_pool_size lacks."""
        for link in list(self.idle_links):
            idle_too_long = now - link.idle_since > self.config.server_idle_timeout
            if (idle_too_long and len(self.links) > self.config.min_pool_size) or (
                now - link.created > self.config.server_lifetime
            ):
                self.idle_links.remove(link)
                link.close()
        self._warm()

    def _warm(self) -> None:
        """Open idle connections up to min_pool_size, with the key of the latest client that borrowed (none
        before a client has logged in: pgaurora holds no password); one that fails stops the warming until
        a client brings a key again (its password may have changed)."""
        if self.closed or self.login is None or self._warming:
            return
        for _ in range(self.config.min_pool_size - len(self.links)):
            link = ServerLink(self, *self.login)
            self.links.add(link)
            self._warming += 1
            task = asyncio.get_running_loop().create_task(self._open(link))
            task.add_done_callback(self._warmed)

    def _warmed(self, task: asyncio.Task[ServerLink]) -> None:
        self._warming -= 1
        error = "cancelled" if task.cancelled() else task.exception()
        if error is not None:
            self.login = None
            log.warning("pool %s: a connection opened for min_pool_size failed: %s", self.key, error)
            return
        link = task.result()
        if self.closed:
            link.close()
        else:
            self.idle(link)

    def close(self, abort: bool = False) -> None:
        """The node left this endpoint: idle connections close now, lent ones when they come back (abort: now,
        and their clients hear what was lost, rather than wait on a node that failed)."""
        self.closed = True
        if abort:
            for link in [link for link in self.links if link.owner is not None]:
                link.close()
        for link in list(self.idle_links):
            link.close()
        self.idle_links.clear()
        waiters, self.waiters = list(self.waiters), deque()
        for waiter in waiters:
            if not waiter.done:
                self._finish(waiter)
                waiter.fail(PoolClosed(f"node {self.node.name} left the endpoint"))


class PoolClosed(ProxyError):
    """The node left the endpoint while a client waited for one of its connections: route it again."""

    sqlstate = "08006"


class PoolTimeout(ProxyError):
    """A client waited query_wait_timeout for a server connection."""

    sqlstate = "53300"


class Pools:
    """Every pool of one proxy, by (node, database, user); the reaper closes idle and old connections."""

    def __init__(self, config: PoolConfig, connect_timeout: float, tls: NodeTls = NO_TLS) -> None:
        self.config, self.connect_timeout, self.tls = config, connect_timeout, tls
        self.pools: dict[PoolKey, Pool] = {}
        self.closing: list[Pool] = []  # closed, with connections still lent: their transactions finish
        self._reaper: asyncio.Task[None] | None = None

    def get(self, node: NodeState, database: str, user: str) -> Pool:
        key = PoolKey(node.name, database, user)
        pool = self.pools.get(key)
        if pool is None or pool.closed or (pool.node.host, pool.node.port) != (node.host, node.port):
            login = self._login_of(database, user)
            pool = self.pools[key] = Pool(key, node, self.config, self.connect_timeout, self.tls)
            pool.login = login  # a new writer's pool warms to min_pool_size before its clients come
        return pool

    def _login_of(self, database: str, user: str) -> tuple[bytes, Secret] | None:
        """The key another pool of this role holds (the former writer's, after a failover)."""
        held = [p.login for p in self._all() if (p.key.database, p.key.user) == (database, user)]
        return next((login for login in held if login is not None), None)

    def _all(self) -> list[Pool]:
        return [*self.pools.values(), *self.closing]

    def warm(self, node: NodeState) -> None:
        """A node new to the endpoint (the writer after a failover): a pool for each role that has logged in,
        which the reaper fills to min_pool_size, so that the first transactions there need no login."""
        if not self.config.min_pool_size:
            return
        for database, user in {(p.key.database, p.key.user) for p in self._all() if p.login}:
            self.get(node, database, user)

    def close_nodes(self, keep: Callable[[str], bool], abort: bool = False) -> None:
        """Close the pools of nodes for which keep(name) is false (abort: their lent connections too)."""
        for key, pool in list(self.pools.items()):
            if not keep(key.node):
                pool.close(abort)
                del self.pools[key]
                self.closing.append(pool)
        self.closing = [pool for pool in self.closing if pool.active]

    def lent_on(self, node: str) -> int:
        """Connections to node lent to a client now (transactions in flight), closing pools included."""
        self.closing = [pool for pool in self.closing if pool.active]
        return sum(pool.active for pool in [*self.pools.values(), *self.closing] if pool.node.name == node)

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for pool in list(self.pools.values()):
                pool.reap(now)

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for pool in self.pools.values():
            pool.close()
            for link in list(pool.links):
                link.close()
