"""PooledClient: one client of a pooled endpoint: SCRAM at the proxy, then its messages over lent server connections."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import secrets
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

from ..core.config import PoolMode, RuleMethod
from ..core.errors import ProxyError, UpstreamUnavailable
from ..core.topology import Role
from ..wire import Authentication, BackendKeyData, ParameterStatus, RemoteProtocolError, encode, error_response
from ..wire.frontend import (
    bound_name,
    parse_message,
    parse_parts,
    read_sasl_initial,
    rebound,
    simple_query,
    target,
    target_message,
)
from . import rules
from .credentials import LookupFailed
from .pool import Pool, PoolClosed, ServerLink, Waiter
from .replies import PASS, SWALLOW, SYNC, ServerStream
from .scram import MECHANISM, ScramFailed, Secret, ServerExchange
from .split import CONSISTENCIES, LSN_HINT, Verdict, declares_read_only, opens_transaction, parse_lsn
from .statements import NOTHING, Effect, effect, setting_value
from .tokens import TokenRefused

if TYPE_CHECKING:
    from ..core.config import Config
    from ..core.topology import NodeState
    from ..wire import StartupMessage
    from .credentials import Credentials
    from .split import Splitter
    from .state import ProxyState

log = logging.getLogger("pgaurora.proxy")

NOT_SETTINGS = frozenset({"user", "database", "replication", "options"})


class PoolGate(Protocol):
    """What a pooled client uses of its endpoint (endpoint.Endpoint)."""

    name: str
    config: Config
    state: ProxyState
    pool_mode: PoolMode

    @property
    def credentials(self) -> Credentials: ...

    async def pool_for(self, database: str, user: str, avoid: str | None = None) -> Pool: ...

    def current_pool(self, database: str, user: str) -> Pool | None: ...

    def known_params(self, database: str, user: str) -> dict[str, str] | None: ...

    @property
    def splitter(self) -> Splitter | None: ...

    @property
    def takes_min_lsn(self) -> bool: ...

    async def pool_past(self, database: str, user: str, lsn: int) -> Pool: ...


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


# a COMMIT anywhere among the statements sent: a lost server then leaves the outcome unknown (08007, not 40001)
_COMMIT = re.compile(rb"(?:^|;)\s*(?:commit|end)\b", re.IGNORECASE)
_ENDS = re.compile(rb"\s*(rollback|abort|commit|end)\b", re.IGNORECASE)  # what ends a failed transaction


def _ready(status: bytes) -> bytes:
    return b"Z\x00\x00\x00\x05" + status


def _command(tag: bytes) -> bytes:
    return b"C" + (len(tag) + 5).to_bytes(4, "big") + tag + b"\0"


def _aborted() -> bytes:
    return error_response(
        "25P02", "current transaction is aborted, commands ignored until end of transaction block", severity="ERROR"
    )


@functools.lru_cache(maxsize=256)
def _statuses(node_params: tuple[tuple[str, str], ...], startup: tuple[tuple[str, str], ...]) -> bytes:
    """The ParameterStatus messages of a greeting: the node's parameters, with the client's own startup
    settings in their place. Built once per pair (every new client of a pool asks for the same)."""
    mine = {name.lower(): value for name, value in startup}
    return b"".join(encode(ParameterStatus(k, mine.get(k.lower(), v))) for k, v in node_params)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _set_config(name: str, value: str) -> str:
    return f"SELECT set_config({_literal(name)}, {_literal(value)}, false)"


_UNDECIDED = frozenset({b"1", b"2", b"t", b"T", b"n", b"N", b"S"})  # replies that say nothing of how a read went


def _sqlstate(body: bytes | bytearray) -> str | None:
    """The SQLSTATE field of an ErrorResponse's body."""
    for field in bytes(body).split(b"\0"):
        if field[:1] == b"C":
            return field[1:].decode("ascii", "replace")
    return None


KNOBS = {
    "pgaurora.consistency": CONSISTENCIES,
    "pgaurora.min_lsn": None,  # a WAL position
}


def _refused_knob(found: Effect) -> bytes | None:
    """A Query that fails as PostgreSQL fails a bad SET (22023), for a bad value of one of pgaurora's settings."""
    for name, sql in found.settings:
        if name not in KNOBS or sql is None:
            continue
        value, allowed = setting_value(sql) or "", KNOBS[name]
        if (value.lower() in allowed) if allowed is not None else parse_lsn(value) is not None:
            continue
        hint = f"Available values: {', '.join(allowed)}." if allowed is not None else LSN_HINT
        message = f'invalid value for parameter "{name}": "{value}"'
        return simple_query(
            f"DO $pgaurora$ BEGIN RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = {_literal(message)},"
            f" HINT = {_literal(hint)}; END $pgaurora$"
        )
    return None


MAX_MESSAGE = 1 << 30
_NOT_NOW = frozenset({"57P01", "57P02", "57P03"})  # a node's refusals that pass: shutting down, starting up
RESTORE = "SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL"  # RESET ALL leaves the role as it is
_SASL_OFFER = encode(Authentication(10, MECHANISM.encode() + b"\0\0"))
_PASSWORD_REQUEST = encode(Authentication(3))  # a token is sent as a cleartext password, over TLS only
_AUTH_OK = encode(Authentication(0))
_EXTENDED = frozenset({b"P", b"B", b"D", b"C", b"F"})


class PooledClient:
    """Splits the client's stream into messages by their headers, lends it a server connection per session or
    per transaction, and keeps what must follow it: its settings and its protocol-level prepared statements."""

    def __init__(
        self, gate: PoolGate, transport: asyncio.Transport, startup: StartupMessage, peer: str = "", tls: bool = False
    ) -> None:
        self.gate, self.transport = gate, transport
        self.mode = gate.pool_mode
        self.renaming = self.mode is PoolMode.TRANSACTION and gate.config.pool.max_prepared_statements > 0
        self.user = startup.get("user") or ""
        self.database = startup.get("database") or self.user
        self.buffer = b""  # a message from the client not yet whole
        self.exchange: ServerExchange | None = None  # SCRAM with the client, between its two messages
        self.early: list[tuple[bytes, bytes]] = []  # messages that came before the greeting was sent
        self.ready = False
        self.closed = False
        self.secret: Secret | None = None
        self.known: Secret | None = None  # the role's secret, once read (None: no such role, a mock one is used)
        self.client_key = b""
        self.pool: Pool | None = None
        self.link: ServerLink | None = None
        self.waiting: Waiter | None = None
        self.acquiring: asyncio.Task[None] | None = None
        self.queue: list[tuple[bytes, bytes]] = []  # (type, whole message) waiting for a server connection
        self.unsynced = False  # extended-protocol messages sent since the last Sync
        self.pins: set[str] = set()
        self.stream = ServerStream(self._ready_for_query)
        # a statement's name -> the name pgaurora prepares it under, its query, its parameter types
        self.statements: OrderedDict[bytes, tuple[bytes, bytes, bytes]] = OrderedDict()
        self.startup = startup_settings(startup)
        self.settings: dict[str, str] = {name: _set_config(name, value) for name, value in self.startup.items()}
        self.signature = tuple(sorted(self.settings.items()))  # compared at every lend: kept, not rebuilt
        self.pending_settings: list[tuple[str, str | None]] | None = None
        self.committing = False  # a COMMIT is among what was sent since the last ReadyForQuery
        self.failed = False  # its server died inside a transaction block: pgaurora answers until ROLLBACK
        self.dropping = False  # its server died inside an extended batch: skip to the batch's Sync
        self.batch: list[tuple[bytes, bytes]] = []  # an extended batch in a failed transaction, to its Sync
        self.lost = b""  # the error a client idle in a lost transaction gets at its next command
        self.cancel_key = (secrets.randbits(31), secrets.token_bytes(4))
        self.active_at = time.monotonic()  # when the client last sent something, for client_idle_timeout
        self.task: asyncio.Task[None] | None = None  # a secret lookup, or a wait for a node, while logging in
        loop = asyncio.get_running_loop()
        self.deadline: asyncio.TimerHandle | None = loop.call_later(gate.config.proxy.startup_timeout, self._too_slow)
        self.rule = "0"  # the [[rules]] entry that decided how it logs in (0: the default), for the metrics
        self.verdict: Verdict | None = None  # a splitting endpoint: what its current transaction was routed as
        self.wrote_at: float | None = None  # ... and when its last transaction on the writer ended
        self.probing: bytearray | None = None  # a read on a replica: its replies held until a row or an error
        self.sent_read: list[tuple[bytes, bytes]] = []  # ... and what it sent, to run again on the writer
        self.to_writer: str | None = None  # why the writer runs what is queued (a read refused with 25006...)
        self.routed = False  # the connection held was lent for what is queued (not the login's)
        self.opened: bytes | None = None  # splitting: a BEGIN answered here, sent with what follows it
        self._knobs: tuple[object, dict[str, str | None]] = (None, {})  # (signature, values) for knob()
        self.by_token = False
        self._begin_login(peer, tls)

    # -- from the client ------------------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        self.active_at = time.monotonic()
        if self.buffer:
            data, self.buffer = self.buffer + data, b""
        i, n, messages = 0, len(data), self.queue if self.ready else []
        while i + 5 <= n:
            length = int.from_bytes(data[i + 1 : i + 5], "big")
            if length < 4 or length > MAX_MESSAGE:
                self.fail("08P01", f"invalid message length {length}")
                return
            end = i + 1 + length
            if end > n:
                break
            kind = data[i : i + 1]
            if kind == b"X":
                if self.ready and self.queue and self.link is not None:
                    self._flush()  # what came before the Terminate in the same packet still goes to the server
                self.close()
                return
            messages.append((kind, data[i:end] if i or end != n else data))
            i = end
        self.buffer = data[i:]
        if not self.ready:
            for kind, raw in messages:
                self._authenticating(kind, raw[5:])
        elif self.queue:
            self._flush()

    def client_lost(self) -> None:
        self.close()

    # -- authentication at the proxy: callbacks, no task unless a secret must be read ---------------------
    def _begin_login(self, peer: str, tls: bool) -> None:
        """The first rule that matches this client decides: SCRAM, a token over TLS, or a refusal (28000)."""
        found = rules.match(self.gate.config.rules, self.gate.name, self.database, self.user, peer, tls)
        self.rule = str(found.number) if found is not None else "none"
        if found is None or found.method is RuleMethod.REJECT:
            detail = rules.no_rule_message(self.gate.name, self.database, self.user, peer, tls)
            self._refused("28000", detail if found is None else f"pgaurora rule {found.number} rejects this client")
        elif found.method is RuleMethod.TOKEN and not tls:
            message = f'token authentication failed for user "{self.user}": a token is only accepted over TLS'
            self._refused("28P01", message, "Connect with sslmode=require or stricter.")
        elif found.method is RuleMethod.TOKEN:
            self.by_token = True
            self.transport.write(_PASSWORD_REQUEST)
        else:
            self.transport.write(_SASL_OFFER)

    def _refused(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        self.gate.state.rule_counted(self.gate.name, self.rule, "refused")
        self.fail(sqlstate, message, detail)

    def _authenticating(self, kind: bytes, payload: bytes) -> None:
        if self.closed:
            return
        if self.secret is not None or self.task is not None:  # logged in, or waiting: after the greeting
            self.early.append((kind, kind + (len(payload) + 4).to_bytes(4, "big") + payload))
            return
        try:
            if kind != b"p":
                raise ScramFailed("expected a SASL response")
            if self.by_token:
                self._token(payload)
            elif self.exchange is None:
                self._initial(payload)
            else:
                self._final(self.exchange, payload)
        except ScramFailed:
            self._refuse()
        except RemoteProtocolError as exc:
            self.fail(exc.sqlstate, exc.message)

    def _initial(self, payload: bytes) -> None:
        mechanism, first = read_sasl_initial(payload)
        if mechanism != MECHANISM:
            raise ScramFailed(f"mechanism {mechanism} is not offered")
        credentials = self.gate.credentials
        if credentials.cached(self.user):
            self._challenge(credentials.secret_now(self.user), first)
        else:
            self.task = asyncio.get_running_loop().create_task(self._look_up(first))

    async def _look_up(self, first: str) -> None:
        try:
            found = await self.gate.credentials.secret(self.user)
        except LookupFailed as exc:
            self.fail("08006", str(exc))
            return
        finally:
            self.task = None
        try:
            self._challenge(found, first)
        except ScramFailed:
            self._refuse()

    def _challenge(self, found: Secret | None, first: str) -> None:
        self.exchange = ServerExchange(found or self.gate.credentials.mock(self.user))  # the same work either way
        self.known = found
        self.transport.write(encode(Authentication(11, self.exchange.first(first).encode())))

    def _final(self, exchange: ServerExchange, payload: bytes) -> None:
        final = exchange.final(payload.decode("utf-8", "replace"))
        if self.known is None or exchange.client_key is None:
            raise ScramFailed("no such role")
        self.secret, self.client_key, self.exchange = self.known, exchange.client_key, None
        self.gate.credentials.remember(self.user, self.client_key)
        self.transport.write(encode(Authentication(12, final.encode())) + _AUTH_OK)
        self._authenticated()

    def _token(self, payload: bytes) -> None:
        """A token sent as the password (over TLS): its signature, expiry, role and endpoint, then the role's
        secret and the key pgaurora holds to log it into the nodes."""
        tokens = self.gate.credentials.tokens
        token = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
        try:
            if tokens is None:
                raise TokenRefused("no [tokens] keys are configured")
            tokens.verify(token, self.user, self.gate.name)
        except TokenRefused as exc:
            self._refused("28P01", f'token authentication failed for user "{self.user}": {exc}')
            return
        self.task = asyncio.get_running_loop().create_task(self._token_login())

    async def _token_login(self) -> None:
        credentials = self.gate.credentials
        try:
            secret = await credentials.secret(self.user)
        except LookupFailed as exc:
            self.fail("08006", str(exc))
            return
        finally:
            self.task = None
        key = credentials.login_key(self.user, secret) if secret is not None else None
        if secret is None or key is None:
            why = "pgaurora holds no login for this role (add it to [tokens] login_file)"
            self._refused("28P01", f'token authentication failed for user "{self.user}": {why}')
            return
        self.secret, self.client_key = secret, key
        self.transport.write(_AUTH_OK)
        self._authenticated()

    def _authenticated(self) -> None:
        """Logged in at the proxy: greet at once when the nodes' parameters are known, else through a lend."""
        self.gate.state.rule_counted(self.gate.name, self.rule, "accepted")
        known = self.gate.known_params(self.database, self.user)
        if known:  # the nodes' parameters are known: the session begins without a server connection
            self._welcome(known)
            return
        pool = self.gate.current_pool(self.database, self.user)
        if pool is None:
            self.task = asyncio.get_running_loop().create_task(self._greet_later())
        else:  # the first client of this pool: a connection proves the key and tells the parameters
            assert self.secret is not None
            self.waiting = pool.lend(self._greet, self._not_lent, self.client_key, self.secret)

    async def _greet_later(self) -> None:
        """No node to route to now (a failover): wait for one, as a new session on the writer does."""
        try:
            pool = await self.gate.pool_for(self.database, self.user)
        except ProxyError as exc:
            self.fail(exc.sqlstate, exc.message, exc.detail)
            return
        finally:
            self.task = None
        assert self.secret is not None
        self.waiting = pool.lend(self._greet, self._not_lent, self.client_key, self.secret)

    def _greet(self, link: ServerLink) -> None:
        """The first lend proved the key to the node: report its parameters; the session begins."""
        self.waiting = None
        self._lent(link)
        if self.link is not None:
            self._welcome(link.params)

    def _welcome(self, params: dict[str, str]) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.transport.write(self._greeting(params))
        self.gate.state.pooled_clients[self.cancel_key] = self
        self.ready = True
        self.queue, self.early = self.early, []
        if self.queue:
            self._flush()
        self._maybe_release()

    def _refuse(self) -> None:
        self.gate.credentials.forget(self.user)
        self._refused("28P01", f'password authentication failed for user "{self.user}"')

    def _too_slow(self) -> None:
        self.deadline = None
        if not self.ready:
            self.fail("08P01", "timeout during authentication")

    def _greeting(self, node_params: dict[str, str]) -> bytes:
        """ParameterStatus (the node's, with this client's own startup settings), BackendKeyData, ReadyForQuery."""
        statuses = _statuses(tuple(node_params.items()), tuple(self.startup.items()))
        return b"".join([statuses, encode(BackendKeyData(*self.cancel_key)), _ready(b"I")])

    # -- lending ----------------------------------------------------------------------------------
    def knob(self, name: str) -> str | None:
        """The value this session carries for a setting (from its startup packet or its own SET), if any; read
        once per set of settings (the splitting endpoint asks at every transaction)."""
        if self._knobs[0] is not self.signature:
            self._knobs = (self.signature, {})
        known = self._knobs[1]
        if name not in known:
            sql = self.settings.get(name)
            known[name] = None if sql is None else setting_value(sql)
        return known[name]

    def reads_only(self) -> bool:
        """Is every transaction of this session read-only (default_transaction_read_only, or SET SESSION
        CHARACTERISTICS AS TRANSACTION READ ONLY)?"""
        if (self.knob("default_transaction_read_only") or "off").lower() in ("on", "true", "1", "yes"):
            return True
        characteristics = self.settings.get("session characteristics")
        return characteristics is not None and declares_read_only(characteristics.encode())

    def _open_here(self) -> bool:
        """Splitting endpoint: a lone BEGIN is answered here, and sent with the statement after it, which
        decides where the transaction goes (SET TRANSACTION READ ONLY: a replica)."""
        kind, raw = self.queue[0]
        if len(self.queue) != 1 or kind != b"Q" or self.opened is not None or not opens_transaction(raw[5:-1]):
            return False
        self.queue, self.opened = [], raw
        self.stream.status = b"T"
        self.transport.write(_command(b"BEGIN") + _ready(b"T"))
        return True

    def _borrow(self) -> None:
        """A connection for the messages queued: in this call when one is idle, else by callback."""
        splitter = self.gate.splitter
        if splitter is not None and self._open_here():
            return
        if splitter is not None and self.to_writer:
            self._split_counted(self.to_writer)
            self.to_writer, self.verdict = None, Verdict.WRITE
            pool = self.gate.current_pool(self.database, self.user)
        elif splitter is not None:
            routed = splitter.route_now(self)
            self.verdict = routed.verdict
            if routed.why == "wait":  # a read that must wait for a replica to replay what it must see
                if self.acquiring is None:
                    self.acquiring = asyncio.get_running_loop().create_task(self._read_later())
                return
            self._split_counted(routed.why)
            pool = routed.pool
        elif self.gate.takes_min_lsn and (lsn := parse_lsn(self.knob("pgaurora.min_lsn"))) is not None:
            if self.acquiring is None:  # a replica that replayed past it, or after consistency_wait the fallback
                self.acquiring = asyncio.get_running_loop().create_task(self._past_later(lsn))
            return
        else:
            pool = self.gate.current_pool(self.database, self.user)
        if pool is None:  # no node to route to now: wait for one (a failover), as a task
            if self.acquiring is None:
                self.acquiring = asyncio.get_running_loop().create_task(self._borrow_later())
            return
        self.pool = pool
        assert self.secret is not None
        self.waiting = pool.lend(self._lent_and_flush, self._not_lent, self.client_key, self.secret)

    async def _borrow_later(self, failed: str | None = None) -> None:
        """A pool to borrow from once there is a node to route to (failed: once it is not that node)."""
        try:
            self.pool = await self.gate.pool_for(self.database, self.user, avoid=failed)
        except ProxyError as exc:
            self.fail(exc.sqlstate, exc.message, exc.detail)
            return
        finally:
            self.acquiring = None
        if not self.closed:  # from the pool found, not the one routing picks next (it may be the failed node)
            assert self.secret is not None
            self.waiting = self.pool.lend(self._lent_and_flush, self._not_lent, self.client_key, self.secret)

    def _split_counted(self, why: str, waited: float | None = None) -> None:
        splitter = self.gate.splitter
        assert splitter is not None
        self.gate.state.split_counted(self.gate.name, splitter.consistency(self).value, why, waited)

    async def _past_later(self, lsn: int) -> None:
        assert self.secret is not None
        try:
            self.pool = await self.gate.pool_past(self.database, self.user, lsn)
        except ProxyError as exc:  # no replica got there (fallback refuse): this transaction fails, not the session
            self.acquiring = None
            self._refuse_queued(error_response(exc.sqlstate, exc.message, detail=exc.detail, severity="ERROR"))
            return
        finally:
            self.acquiring = None
        if not self.closed:
            self.waiting = self.pool.lend(self._lent_and_flush, self._not_lent, self.client_key, self.secret)

    def _refuse_queued(self, error: bytes) -> None:
        """Answer what is queued with one error, as the server answers a failed Query or extended batch: the
        messages up to the next Query or Sync are dropped, and the session is ready again."""
        kinds = [kind for kind, _ in self.queue]
        ends = next((i for i, kind in enumerate(kinds) if kind in (b"Q", b"S")), None)
        if ends is None:
            self.queue = []
            self.dropping = True  # the rest of the batch, to its Sync, is skipped
            self.transport.write(error)
            return
        self.queue = self.queue[ends + 1 :]
        self.transport.write(error + _ready(self.stream.status))
        if self.queue:
            self._flush()

    async def _read_later(self) -> None:
        splitter = self.gate.splitter
        assert splitter is not None and self.secret is not None
        try:
            pool, why, waited = await splitter.route_later(self)
        except LookupError:  # no writer or no replica any more: route it again
            self.acquiring = None
            self._borrow()
            return
        except Exception as exc:  # never left waiting: the writer serves it
            log.warning("routing a read failed (%s): the writer serves it", exc)
            self.acquiring = None
            self.to_writer = "position_unknown"
            self._borrow()
            return
        self.acquiring = None
        self._split_counted(why, waited)
        if not self.closed:
            self.pool = pool
            self.waiting = pool.lend(self._lent_and_flush, self._not_lent, self.client_key, self.secret)

    def _not_lent(self, error: Exception) -> None:
        self.waiting = None
        if isinstance(error, PoolClosed) and not self.closed:  # its node left: wait for where to go now
            loop = asyncio.get_running_loop()
            if self.ready:
                self.acquiring = loop.create_task(self._borrow_later())
            else:
                self.task = loop.create_task(self._greet_later())
            return
        unreachable = isinstance(error, (OSError, TimeoutError)) or type(error) is UpstreamUnavailable
        # a node starting up or shutting down (57P03, 57P01/02) refuses logins for now: as good as unreachable
        unreachable = unreachable or (isinstance(error, ProxyError) and error.sqlstate in _NOT_NOW)
        if unreachable and self.ready and not self.closed and self.pool is not None:
            # the node is down and no failover is published yet: wait for one, as a new writer session does
            failed = self.pool.node.name
            self.acquiring = asyncio.get_running_loop().create_task(self._borrow_later(failed))
            return
        if isinstance(error, ProxyError) and error.sqlstate == "28P01":
            self.gate.credentials.forget(self.user)  # the node refused the key: the password changed
        if isinstance(error, ProxyError):
            self.fail(error.sqlstate, error.message, error.detail)
        else:
            self.fail("08006", f"could not connect to the node: {error}")

    def _lent_and_flush(self, link: ServerLink) -> None:
        self.waiting = None
        self._lent(link)
        self.routed = True  # lent for what is queued (not the login's connection)
        if self.link is not None and self.opened is not None:  # the BEGIN answered here, its reply cut
            self.link.transport.write(self.opened)  # type: ignore[union-attr]
            self.stream.hidden += 1
            self.opened = None
        if self.link is not None and self.queue:
            self._flush()

    def _lent(self, link: ServerLink) -> None:
        if self.closed:
            link.pool.release(link, reusable=True)
            return
        link.owner = self
        self.link, self.pool = link, link.pool
        if link.settings != self.signature:  # another client's settings, or none: this client's, first
            sql = "; ".join([RESTORE, *self.settings.values()])
            link.transport.write(simple_query(sql))  # type: ignore[union-attr]
            self.stream.hidden += 1
            link.settings = self.signature

    def _flush(self) -> None:
        if self.failed or self.dropping:
            self._answer_locally()
            if not self.queue:
                return
        link = self.link
        if link is None:
            if self.waiting is None and self.acquiring is None:
                self._borrow()
            return
        if self._held() and (not self.routed or self.stream.expected or self.unsynced):
            return  # the login's connection, or a read still running on its replica: routed once it is released
        queue, self.queue = self.queue, []
        if self.verdict is Verdict.READ and link.pool.node.role is Role.REPLICA:
            self.probing, self.sent_read = bytearray(), queue  # 25006 before any row: the writer runs it again
        if len(queue) == 1:
            link.transport.write(self._translate(*queue[0]))  # type: ignore[union-attr]
        else:
            link.transport.write(b"".join([self._translate(kind, raw) for kind, raw in queue]))  # type: ignore[union-attr]

    def _translate(self, kind: bytes, raw: bytes) -> bytes:
        """The bytes to send the server for one client message; counts the replies it will owe."""
        stream = self.stream
        if kind == b"Q":
            stream.expected += 1
            stream.replies.append(SYNC)
            query = memoryview(raw)[5:-1]  # looked at twice, copied by neither
            found = effect(query)
            refused = _refused_knob(found)
            if refused is not None:  # the server would take any value of a pgaurora.* setting: refuse it here
                return refused
            self._note(found)
            self.committing |= _COMMIT.search(query) is not None
            return raw
        if kind == b"S":
            stream.expected += 1
            self.unsynced = False
            stream.replies.append(SYNC)
            return raw
        if kind not in _EXTENDED:
            return raw  # CopyData, CopyDone, CopyFail, Execute, Flush
        self.unsynced = True
        if kind == b"F":
            stream.expected += 1
            stream.replies.append(SYNC)
            return raw
        if kind == b"P" and _COMMIT.search(raw[raw.find(b"\0", 5) + 1 :]):  # the query follows the name's NUL
            self.committing = True
        if not self.renaming:
            if kind == b"P":
                self._note(effect(parse_parts(raw[5:])[1]))
                stream.replies.append(PASS)
            elif kind == b"C":
                stream.replies.append(PASS)
            return raw
        return self._renamed(kind, raw)

    def _renamed(self, kind: bytes, raw: bytes) -> bytes:
        """Transaction mode: named statements live under names of pgaurora's own, prepared again on whichever
        server connection the client has now."""
        if kind == b"B":
            return self._rebound(raw)
        if kind != b"P":
            return self._retargeted(kind, raw)
        name, query, rest = parse_parts(raw[5:])
        self._note(effect(query))
        self.stream.replies.append(PASS)
        if not name:
            return raw
        # shared by the clients of one role that prepare the same text and types: PostgreSQL parses a
        # prepared statement again when search_path differs from the one it was planned with
        server_name = b"pga_" + hashlib.sha1(query + b"\0" + rest).hexdigest()[:24].encode()
        self._remember(name, (server_name, query, rest))
        return self._ensure(server_name, query, rest, parsing=True)

    def _rebound(self, raw: bytes) -> bytes:
        """A Bind: its statement name replaced by pgaurora's."""
        start, end = bound_name(raw)
        known = self.statements.get(raw[start:end]) if end > start else None
        if known is None:
            return raw
        self.statements.move_to_end(raw[start:end])
        return self._ensure(*known) + rebound(raw, start, end, known[0])

    def _retargeted(self, kind: bytes, raw: bytes) -> bytes:
        """A Describe or Close: of a statement, under pgaurora's name; of a portal, unchanged."""
        if kind == b"C":
            self.stream.replies.append(PASS)
        if raw[5:6] == b"P" and raw.find(b"\0", 6) >= 0:  # a portal: nothing to rename (libpq's every Describe)
            return raw
        what, name = target(raw[5:])
        known = self.statements.get(name) if what == b"S" and name else None
        if known is None:
            return raw
        if kind == b"C":
            del self.statements[name]
            return raw  # the server's copy stays, shared by name with other clients of the same statement
        return self._ensure(*known) + target_message(kind, what, known[0])

    def _ensure(self, server_name: bytes, query: bytes, rest: bytes, parsing: bool = False) -> bytes:
        """Parse server_name on this connection unless it holds it; parsing: the client's own Parse (its reply
        is relayed, counted already), else an injected one (its reply is cut)."""
        link, replies = self.link, self.stream.replies
        assert link is not None
        if server_name in link.prepared:
            link.prepared.move_to_end(server_name)
            if parsing:  # parsed again by the client: close and parse, so that it gets a real ParseComplete
                replies[-1] = SWALLOW
                replies.append(PASS)
                return target_message(b"C", b"S", server_name) + parse_message(server_name, query, rest)
            return b""
        out = b""
        if len(link.prepared) >= self.gate.config.pool.max_prepared_statements:
            oldest, _ = link.prepared.popitem(last=False)
            out += target_message(b"C", b"S", oldest)
            if parsing:  # the client's Parse reply is counted already: the Close's comes first
                replies.insert(len(replies) - 1, SWALLOW)
            else:
                replies.append(SWALLOW)
        link.prepared[server_name] = None
        if not parsing:
            replies.append(SWALLOW)
        return out + parse_message(server_name, query, rest)

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
            pending = [("", None)] if found.reset_all else (self.pending_settings or [])
            self.pending_settings = pending + list(found.settings)

    # -- from the server ------------------------------------------------------------------------------
    def from_server(self, data: bytes) -> None:
        try:
            out = self.stream.relay(data)
        except RemoteProtocolError as exc:
            self.fail("08P01", f"invalid data from the node: {exc.message}")
            return
        if self.probing is not None:
            out = self._probe(out)
        elif self.to_writer:
            out = b""  # the rest of the replica's answer to the read it refused with 25006 (its ReadyForQuery)
        if out:
            self.transport.write(out)
        self._maybe_release()

    def _probe(self, out: bytes) -> bytes:
        """A read on a replica: hold its replies until one says how it went. A row, a completion or another
        error: pass them on. 25006 (it writes after all, through a view or a function): drop them, and once the
        replica's ReadyForQuery came, run it again on the writer."""
        held = self.probing
        assert held is not None
        if held:
            held += out
        else:  # the common case: the whole answer's start in one packet, looked at without a copy
            held = out  # type: ignore[assignment]
        i = 0
        while i + 5 <= len(held):
            kind, end = bytes(held[i : i + 1]), i + 1 + int.from_bytes(held[i + 1 : i + 5], "big")
            if kind in _UNDECIDED:
                i = end
                continue
            if kind == b"E" and end > len(held):
                break  # the error whole first
            if kind == b"E" and _sqlstate(held[i + 5 : end]) == "25006":
                self.probing, self.to_writer = None, "retried_on_writer"
                return b""
            self.probing = None  # decided: a row, a completion, another error
            return bytes(held)
        if held is out:
            self.probing = bytearray(out)  # undecided: kept, with what comes next
        return b""

    def _ready_for_query(self, status: bytes, rolled_back: bool) -> None:
        """At each ReadyForQuery: the SETs of a transaction that ended took effect, unless it rolled back."""
        self.committing = False
        if self.pending_settings is None or status != b"I":
            return
        if not rolled_back:
            for name, sql in self.pending_settings:
                if name == "" and sql is None:
                    self.settings.clear()
                elif sql is None:
                    self.settings.pop(name, None)
                else:
                    self.settings[name] = sql
        self.pending_settings = None
        self.signature = tuple(sorted(self.settings.items()))
        if self.link is not None:
            self.link.settings = self.signature

    def _maybe_release(self) -> None:
        stream = self.stream
        if (
            self.mode is PoolMode.TRANSACTION
            and self.link is not None
            and not self.pins
            and stream.expected == 0
            and not self.unsynced
            and not stream.hidden
            and stream.status == b"I"
            and (not self.queue or self._held())
        ):
            link, self.link, self.routed = self.link, None, False
            link.pool.release(link, reusable=True)
            if self.to_writer:  # a read that wrote: the writer runs it again
                self.queue, self.sent_read = self.sent_read + self.queue, []
            if self.verdict is Verdict.WRITE:
                self.wrote_at = time.monotonic()  # committed and acknowledged: its next reads must see it
            if self.queue:  # held while a read ran: routed now
                self._flush()

    def _held(self) -> bool:
        """Does what is queued wait for a route of its own? On a splitting endpoint, and on a transaction-pooled
        reader for a session that named pgaurora.min_lsn: yes while the connection held is the login's (routed
        as nothing), or (splitting) a read's, since each read is routed on its own."""
        if self.link is None:
            return False
        if self.gate.splitter is not None:
            return not self.routed or self.verdict is Verdict.READ
        bound = self.mode is PoolMode.TRANSACTION and self.gate.takes_min_lsn
        return bound and not self.routed and self.knob("pgaurora.min_lsn") is not None

    def server_lost(self) -> None:
        """The server connection died under this client (its node failed): only what was in flight is lost.
        One ErrorResponse: 40001 for an explicit transaction that was certainly not committed (the session is
        then in a failed transaction until its ROLLBACK, which pgaurora answers), 08007 when a COMMIT or an
        autocommitted statement was running and its fate is unknown. The connection goes on."""
        link, self.link, self.routed = self.link, None, False
        if self.closed:
            return
        stream = self.stream
        node = link.pool.node.name if link is not None else "the node"
        waiting = bool(stream.expected or self.unsynced)
        if not waiting and (self.pins or stream.status == b"I"):  # idle, holding session state it cannot keep
            self.fail("57P01", f"terminating connection: its server connection to {node} was lost", stream.fatal)
            return
        block = stream.status != b"I" and not self.committing
        if block:
            lost = f"the transaction was lost with its server ({node} failed); it was not committed: run it again"
            error = error_response("40001", lost, severity="ERROR")
        else:
            unknown = f"the server ({node}) failed while a statement or a COMMIT ran: whether it committed is unknown"
            error = error_response("08007", unknown, severity="ERROR")
        status = b"E" if block else b"I"
        if waiting:
            self.transport.write(error + _ready(status) * stream.expected)
        else:  # idle in its transaction: the next command hears it, as from PostgreSQL
            self.lost = error
        self.failed, self.dropping, self.unsynced = block, self.unsynced, False
        self.stream = ServerStream(self._ready_for_query)
        self.stream.status = status
        self.pending_settings, self.committing, self.batch = None, False, []
        if self.queue:
            self._flush()

    def _answer_locally(self) -> None:
        """Messages after a lost server connection, answered by pgaurora itself as PostgreSQL would: the rest of
        an extended batch is skipped to its Sync; in a failed transaction, every command gets 25P02 until the
        ROLLBACK (or COMMIT) that ends it."""
        out: list[bytes] = []
        while self.queue and (self.failed or self.dropping):
            kind, raw = self.queue.pop(0)
            if kind == b"S":
                out.append(self._end_batch())
            elif self.dropping:
                continue
            elif kind == b"Q":
                if _ENDS.match(raw, 5):
                    self.failed, self.lost = False, b""
                    out.append(_command(b"ROLLBACK") + _ready(b"I"))
                else:
                    out.append((self.lost or _aborted()) + _ready(b"E"))
                    self.lost = b""
            else:
                self.batch.append((kind, raw))
        if out:
            self.transport.write(b"".join(out))

    def _end_batch(self) -> bytes:
        batch, self.batch, self.dropping = self.batch, [], False
        if not self.failed:
            return _ready(self.stream.status)
        ends = any(kind == b"P" and _ENDS.match(parse_parts(raw[5:])[1]) for kind, raw in batch)
        if not ends:
            error, self.lost = self.lost or _aborted(), b""
            return error + _ready(b"E")
        self.failed, self.lost = False, b""
        replies = {b"P": b"1\x00\x00\x00\x04", b"B": b"2\x00\x00\x00\x04", b"D": b"n\x00\x00\x00\x04",
                   b"E": _command(b"ROLLBACK"), b"C": b"3\x00\x00\x00\x04"}  # fmt: skip
        return b"".join(replies.get(kind, b"") for kind, _ in batch) + _ready(b"I")

    def idle_since(self) -> float | None:
        """When this client went idle between transactions (nothing queued, sent or open), or None."""
        stream = self.stream
        busy = self.queue or self.unsynced or self.failed or stream.expected or stream.status != b"I"
        return None if not self.ready or self.closed or busy else self.active_at

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
        if self.task is not None:
            self.task.cancel()
        if self.deadline is not None:
            self.deadline.cancel()
        if self.acquiring is not None:
            self.acquiring.cancel()
        if self.waiting is not None and self.pool is not None:
            self.pool.cancel(self.waiting)
        link, self.link = self.link, None
        if link is not None:
            stream = self.stream
            clean = stream.expected == 0 and not self.unsynced and stream.status == b"I" and not stream.hidden
            dirty = self.mode is PoolMode.SESSION or bool(self.pins)
            link.pool.release(link, reusable=clean and not link.broken, dirty=dirty)
        self.transport.close()
