"""PooledClient: one client of a pooled endpoint: SCRAM at the proxy, then its messages over lent server connections."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Protocol

from ..core.config import PoolMode
from ..core.errors import ProxyError
from ..wire import Authentication, BackendKeyData, Framer, ParameterStatus, RemoteProtocolError, encode, error_response
from ..wire.frontend import (
    bind_message,
    bind_statement,
    parse_message,
    parse_parts,
    read_sasl_initial,
    simple_query,
    target,
    target_message,
)
from .credentials import LookupFailed
from .pool import Pool, ServerLink
from .scram import MECHANISM, ScramFailed, Secret, ServerExchange
from .statements import NOTHING, Effect, effect

if TYPE_CHECKING:
    from ..core.config import Config
    from ..core.topology import NodeState
    from ..wire import StartupMessage
    from .credentials import Credentials
    from .state import ProxyState

log = logging.getLogger("pgaurora.proxy")

NOT_SETTINGS = frozenset({"user", "database", "replication", "options"})
_SWALLOW, _PASS, _SYNC = 0, 1, 2  # what becomes of the next ParseComplete/CloseComplete, or a Sync's place


class PoolGate(Protocol):
    """What a pooled client uses of its endpoint (endpoint.Endpoint)."""

    name: str
    config: Config
    state: ProxyState
    pool_mode: PoolMode

    @property
    def credentials(self) -> Credentials: ...

    async def pool_for(self, database: str, user: str) -> Pool: ...


def startup_settings(startup: StartupMessage) -> dict[str, str]:
    """The settings a client asked for at startup, its `options` (-c name=value) included."""
    found = {name: value for name, value in startup.parameters if name not in NOT_SETTINGS}
    words = (startup.get("options") or "").split()
    for i, word in enumerate(words):
        pair = words[i + 1] if word == "-c" and i + 1 < len(words) else word.removeprefix("-c").removeprefix("--")
        if ("=" in pair and word != pair) or (word.startswith(("-c", "--")) and "=" in pair):
            name, _, value = pair.partition("=")
            found[name.replace("-", "_")] = value
    return found


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PooledClient:
    """Reads the client's messages (whole frames), lends it a server connection per session or per
    transaction, and keeps what must follow it: its settings and its protocol-level prepared statements."""

    def __init__(self, gate: PoolGate, transport: asyncio.Transport, startup: StartupMessage) -> None:
        self.gate, self.transport = gate, transport
        self.mode = gate.pool_mode
        self.user = startup.get("user") or ""
        self.database = startup.get("database") or self.user
        self.framer = Framer()
        self.inbox: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()  # frames during authentication
        self.ready = False
        self.closed = False
        self.secret: Secret | None = None
        self.client_key = b""
        self.pool: Pool | None = None
        self.link: ServerLink | None = None
        self.acquiring: asyncio.Task[None] | None = None
        self.queue: list[tuple[bytes, bytes]] = []  # frames waiting for a server connection
        self.expected = 0  # ReadyForQuery messages owed by the server
        self.unsynced = False  # extended-protocol messages sent since the last Sync
        self.status = b"I"
        self.pins: set[str] = set()
        self.hidden = 0  # ReadyForQuery of pgaurora's own queries still to come (their replies are not relayed)
        self.replies: deque[int] = deque()  # per ParseComplete/CloseComplete/Sync owed: _SWALLOW, _PASS or _SYNC
        self.statements: OrderedDict[bytes, tuple[bytes, bytes, bytes]] = (
            OrderedDict()
        )  # name: server name, query, rest
        self.startup = startup_settings(startup)
        self.settings: dict[str, str] = {
            name: f"SELECT set_config({_literal(name)}, {_literal(value)}, false)"
            for name, value in self.startup.items()
        }
        self.pending_settings: list[tuple[str, str | None]] | None = None
        self.server_framer = Framer()
        self.cancel_key = (secrets.randbits(31), secrets.token_bytes(4))
        self.task = asyncio.get_running_loop().create_task(self._login(startup))

    # -- from the client ------------------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        self.framer.feed(data)
        try:
            while (frame := self.framer.next_frame()) is not None:
                item = (frame.type, bytes(frame.payload))
                if not self.ready:
                    self.inbox.put_nowait(item)
                elif item[0] == b"X":
                    self.close()
                    return
                else:
                    self.queue.append(item)
        except RemoteProtocolError as exc:
            self.fail(exc.sqlstate, exc.message)
            return
        if self.ready and self.queue:
            self._flush()

    def client_lost(self) -> None:
        self.close()

    # -- authentication at the proxy -----------------------------------------------------------------
    async def _login(self, startup: StartupMessage) -> None:
        try:
            self.transport.write(encode(Authentication(10, MECHANISM.encode() + b"\0\0")))
            async with asyncio.timeout(self.gate.config.proxy.startup_timeout):
                await self._scram()
                await self._first_lend()
        except ScramFailed:
            self.gate.credentials.forget(self.user)
            self.fail("28P01", f'password authentication failed for user "{self.user}"')
        except LookupFailed as exc:
            self.fail("08006", str(exc))
        except ProxyError as exc:
            if exc.sqlstate == "28P01":
                self.gate.credentials.forget(self.user)
            self.fail(exc.sqlstate, exc.message, exc.detail)
        except TimeoutError:
            self.fail("08P01", "timeout during authentication")
        except (OSError, RemoteProtocolError) as exc:
            self.fail("08006", f"could not log in to the node: {exc}")

    async def _scram(self) -> None:
        kind, payload = await self.inbox.get()
        if kind != b"p":
            raise ScramFailed("expected a SASLInitialResponse")
        mechanism, first = read_sasl_initial(payload)
        if mechanism != MECHANISM:
            raise ScramFailed(f"mechanism {mechanism} is not offered")
        found = await self.gate.credentials.secret(self.user)
        exchange = ServerExchange(found or self.gate.credentials.mock(self.user))  # the same work either way
        self.transport.write(encode(Authentication(11, exchange.first(first).encode())))
        kind, payload = await self.inbox.get()
        if kind != b"p":
            raise ScramFailed("expected a SASLResponse")
        final = exchange.final(payload.decode("utf-8", "replace"))
        if found is None or exchange.client_key is None:
            raise ScramFailed("no such role")
        self.secret, self.client_key = found, exchange.client_key
        self.transport.write(encode(Authentication(12, final.encode())) + encode(Authentication(0)))

    async def _first_lend(self) -> None:
        """Borrow a connection once: it proves the key to the node and gives the parameters to report."""
        await self._acquire()
        assert self.link is not None
        mine = {name.lower(): value for name, value in self.startup.items()}
        params = {name: mine.get(name.lower(), value) for name, value in self.link.params.items()}
        out = [encode(ParameterStatus(k, v)) for k, v in params.items()]
        out.append(encode(BackendKeyData(*self.cancel_key)))
        out.append(b"Z\x00\x00\x00\x05I")
        self.transport.write(b"".join(out))
        self.gate.state.pooled_clients[self.cancel_key] = self
        self.ready = True
        while not self.inbox.empty():
            self.queue.append(self.inbox.get_nowait())
        if self.queue:
            self._flush()
        else:
            self._maybe_release()

    # -- lending ----------------------------------------------------------------------------------
    async def _acquire(self) -> None:
        self.pool = await self.gate.pool_for(self.database, self.user)
        assert self.secret is not None
        link = await self.pool.acquire(self.client_key, self.secret)
        if self.closed:
            self.pool.release(link, reusable=True)
            return
        link.owner = self
        self.link = link
        self.server_framer = Framer()
        signature = tuple(sorted(self.settings.items()))
        if link.settings != signature:
            sql = "; ".join(["RESET ALL", *self.settings.values()])
            link.transport.write(simple_query(sql))  # type: ignore[union-attr]
            self.hidden += 1
            link.settings = signature

    def _flush(self) -> None:
        if self.link is None:
            if self.acquiring is None:
                self.acquiring = asyncio.get_running_loop().create_task(self._lend())
            return
        out: list[bytes] = []
        for kind, payload in self.queue:
            out.append(self._translate(kind, payload))
        self.queue.clear()
        self.link.transport.write(b"".join(out))  # type: ignore[union-attr]

    async def _lend(self) -> None:
        try:
            await self._acquire()
        except ProxyError as exc:
            self.fail(exc.sqlstate, exc.message, exc.detail)
            return
        except (OSError, TimeoutError) as exc:
            self.fail("08006", f"could not connect to the node: {exc}")
            return
        finally:
            self.acquiring = None
        if self.link is not None and self.queue:
            self._flush()

    def _translate(self, kind: bytes, payload: bytes) -> bytes:
        """The bytes to send the server for one client message; counts the replies it will owe."""
        raw = kind + (len(payload) + 4).to_bytes(4, "big") + payload
        if kind == b"Q":
            self.expected += 1
            self.replies.append(_SYNC)
            self._note(effect(payload[:-1]))
            return raw
        if kind == b"S":
            self.expected += 1
            self.unsynced = False
            self.replies.append(_SYNC)
            return raw
        if kind in (b"P", b"B", b"D", b"C", b"E", b"H", b"F"):
            self.unsynced = True
        if kind == b"F":
            self.expected += 1
            self.replies.append(_SYNC)
        if self.mode is not PoolMode.TRANSACTION or not self.gate.config.pool.max_prepared_statements:
            if kind == b"P":
                self._note(effect(parse_parts(payload)[1]))
                self.replies.append(_PASS)
            elif kind == b"C":
                self.replies.append(_PASS)
            return raw
        return self._renamed(kind, payload, raw)

    def _renamed(self, kind: bytes, payload: bytes, raw: bytes) -> bytes:
        """Transaction mode: named statements live under names of pgaurora's own, prepared again on whichever
        server connection the client has now."""
        if kind == b"P":
            name, query, rest = parse_parts(payload)
            self._note(effect(query))
            self.replies.append(_PASS)
            if not name:
                return raw
            server_name = b"pga_" + hashlib.sha1(query + b"\0" + rest).hexdigest()[:24].encode()
            self._remember(name, (server_name, query, rest))
            return self._ensure(server_name, query, rest, parsing=True)
        if kind == b"B":
            portal, name, rest = bind_statement(payload)
            known = self.statements.get(name) if name else None
            if known is None:
                return raw
            self.statements.move_to_end(name)
            return self._ensure(*known) + bind_message(portal, known[0], rest)
        if kind in (b"D", b"C"):
            what, name = target(payload)
            if kind == b"C":
                self.replies.append(_PASS)
            known = self.statements.get(name) if what == b"S" and name else None
            if known is None:
                return raw
            if kind == b"C":
                del self.statements[name]
                return raw  # the server's copy stays, shared by name with other clients of the same statement
            return self._ensure(*known) + target_message(kind, what, known[0])
        return raw

    def _ensure(self, server_name: bytes, query: bytes, rest: bytes, parsing: bool = False) -> bytes:
        """Parse server_name on this connection unless it holds it; parsing: the client's own Parse (its reply
        is relayed, counted already), else an injected one (its reply is swallowed)."""
        link = self.link
        assert link is not None
        if server_name in link.prepared:
            link.prepared.move_to_end(server_name)
            if parsing:  # the client parsed it again: reply with a real ParseComplete for a harmless Parse
                self.replies[-1] = _SWALLOW
                self.replies.append(_PASS)
                return target_message(b"C", b"S", server_name) + parse_message(server_name, query, rest)
            return b""
        out = b""
        if len(link.prepared) >= self.gate.config.pool.max_prepared_statements:
            oldest, _ = link.prepared.popitem(last=False)
            out += target_message(b"C", b"S", oldest)
            self._insert_before_last(_SWALLOW, parsing)
        link.prepared[server_name] = None
        if parsing:
            return out + parse_message(server_name, query, rest)
        self.replies.append(_SWALLOW)
        return out + parse_message(server_name, query, rest)

    def _insert_before_last(self, reply: int, parsing: bool) -> None:
        if parsing:  # the client's Parse reply was appended already: the Close comes first
            last = self.replies.pop()
            self.replies.append(reply)
            self.replies.append(last)
        else:
            self.replies.append(reply)

    def _remember(self, name: bytes, statement: tuple[bytes, bytes, bytes]) -> None:
        self.statements[name] = statement
        self.statements.move_to_end(name)
        while len(self.statements) > self.gate.config.pool.max_prepared_statements:
            self.statements.popitem(last=False)

    def _note(self, found: Effect) -> None:
        if found is NOTHING:
            return
        for reason in found.pins:
            if reason not in self.pins:
                self.pins.add(reason)
                self.gate.state.pins[reason] += 1
        if found.settings or found.reset_all:
            pending = self.pending_settings or []
            if found.reset_all:
                pending = [("", None)]
            self.pending_settings = pending + list(found.settings)

    # -- from the server ------------------------------------------------------------------------------
    def from_server(self, data: bytes) -> None:
        self.server_framer.feed(data)
        out: list[bytes] = []
        try:
            while (frame := self.server_framer.next_frame()) is not None:
                message = self._relayed(frame.type, frame.payload)
                if message:
                    out.append(message)
        except RemoteProtocolError as exc:
            self.fail("08P01", f"invalid data from the node: {exc.message}")
            return
        if out:
            self.transport.write(b"".join(out))
        self._maybe_release()

    def _relayed(self, kind: bytes, payload: memoryview) -> bytes:
        raw = kind + (len(payload) + 4).to_bytes(4, "big") + payload
        if self.hidden:
            if kind == b"Z":
                self.hidden -= 1
            elif kind == b"E":
                log.warning("restoring a client's settings failed on a pooled connection: %s", bytes(payload))
            return b""
        if kind in (b"1", b"3"):
            if self.replies and self.replies.popleft() == _SWALLOW:
                return b""
            return raw
        if kind == b"Z":
            while self.replies and self.replies.popleft() != _SYNC:
                pass
            self.expected = max(0, self.expected - 1)
            self.status = bytes(payload[:1])
            self._settle_settings()
        elif kind == b"C" and self.pending_settings is not None and bytes(payload[:8]) == b"ROLLBACK":
            self.pending_settings = None
        return raw

    def _settle_settings(self) -> None:
        """At the end of a transaction: the SETs in it took effect (unless it rolled back)."""
        if self.pending_settings is None or self.status != b"I":
            return
        for name, sql in self.pending_settings:
            if name == "" and sql is None:
                self.settings.clear()
            elif sql is None:
                self.settings.pop(name, None)
            else:
                self.settings[name] = sql
        self.pending_settings = None
        if self.link is not None:
            self.link.settings = tuple(sorted(self.settings.items()))

    def _maybe_release(self) -> None:
        if (
            self.mode is PoolMode.TRANSACTION
            and self.link is not None
            and not self.pins
            and self.expected == 0
            and not self.unsynced
            and not self.hidden
            and self.status == b"I"
            and not self.queue
        ):
            link, self.link = self.link, None
            assert self.pool is not None
            self.pool.release(link, reusable=True)

    def server_lost(self) -> None:
        self.link = None
        self.fail("08006", "the server connection was lost")

    # -- endings ------------------------------------------------------------------------------------------
    def cancel_target(self) -> tuple[tuple[str, int], tuple[int, bytes]] | None:
        """Where a CancelRequest for this client goes now: its server connection's node and key."""
        link = self.link
        if link is None or link.cancel_key is None:
            return None
        node: NodeState = link.pool.node
        return (node.host, node.port), link.cancel_key

    def fail(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        if not self.closed and not self.transport.is_closing():
            self.gate.state.refused(sqlstate)
            self.transport.write(error_response(sqlstate, message, detail=detail))
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.gate.state.pooled_clients.pop(self.cancel_key, None)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.acquiring is not None:
            self.acquiring.cancel()
        link, self.link = self.link, None
        if link is not None and self.pool is not None:
            clean = self.expected == 0 and not self.unsynced and self.status == b"I" and not self.hidden
            dirty = self.mode is PoolMode.SESSION or bool(self.pins)
            self.pool.release(link, reusable=clean and not link.broken, dirty=dirty)
        self.transport.close()
