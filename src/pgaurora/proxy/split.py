"""Splitting endpoint: which transactions are reads, and which replica has replayed what a session must see."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from enum import Enum
from functools import lru_cache
from typing import Any, NamedTuple, Protocol, TypeGuard

import asyncpg

from ..core import custom_endpoints
from ..core.config import Consistency, CustomEndpointConfig
from ..core.topology import NodeState, Topology, TopologyHub
from ..wire.frontend import bind_statement, parse_parts
from .pool import Pool, Pools

log = logging.getLogger("pgaurora.proxy")


class Verdict(Enum):
    WRITE = "write"  # or anything the parser cannot vouch for
    READ = "read"  # one plain read, autocommitted
    READ_ONLY = "read_only"  # BEGIN READ ONLY: the whole transaction reads


# Functions a plain read may call: built-ins that neither write nor depend on the server they run on (beyond
# its data). Anything else (nextval, a user function, set_config, advisory locks...) makes the statement a
# write as far as routing goes.
SAFE_FUNCTIONS = frozenset(
    {
        *("count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "array_agg", "string_agg"),
        *("json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg", "stddev", "variance"),
        *("abs", "ceil", "ceiling", "floor", "round", "trunc", "mod", "power", "sqrt", "greatest", "least"),
        *("lower", "upper", "length", "char_length", "substr", "substring", "trim", "btrim", "ltrim", "rtrim"),
        *("concat", "concat_ws", "replace", "split_part", "left", "right", "position", "strpos", "format"),
        *("to_char", "to_date", "to_timestamp", "to_number", "date_trunc", "date_part", "extract", "age"),
        *("now", "timezone", "make_date", "make_interval", "coalesce", "nullif", "encode", "decode"),
        *("jsonb_build_object", "json_build_object", "jsonb_extract_path", "jsonb_array_length", "row_number"),
        *("rank", "dense_rank", "lag", "lead", "first_value", "last_value", "generate_series", "unnest"),
        *("to_json", "to_jsonb", "row_to_json", "array_length", "cardinality", "pg_typeof"),
        # what a server says of itself, the same question on a replica
        *("pg_is_in_recovery", "inet_server_addr", "inet_server_port", "version", "current_setting"),
        *("pg_backend_pid", "current_database", "current_schema", "pg_last_wal_replay_lsn"),
    }
)


_STRINGS = re.compile(rb"'(?:[^']|'')*'")
_DIGITS = bytes.maketrans(b"123456789", b"000000000")


def verdict(sql: bytes) -> Verdict:
    """What one Query or Parse's text is. Its literals do not change that, so the verdict is cached per text
    with them blanked: `WHERE aid = 71045` and `WHERE aid = 12` are parsed once between them. Every digit is
    blanked (cheaply): `t1` reads as `t0`, which changes nothing, and no function of SAFE_FUNCTIONS has one."""
    if b"'" in sql:
        sql = _STRINGS.sub(b"''", sql)
    key = sql.translate(_DIGITS)
    found = _VERDICTS.get(key)
    if found is None:
        if len(_VERDICTS) >= 4096:  # applications send the same few statements again and again
            _VERDICTS.clear()
        found = _VERDICTS[key] = _verdict(key)
    return found


_VERDICTS: dict[bytes, Verdict] = {}


def _only(sql: bytes) -> Any | None:
    """The one statement sql holds, by PostgreSQL's own parser (pglast); None when it holds several, or does
    not parse (the server will say what is wrong with it)."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        statements = parse_sql(sql.decode("utf-8", "replace"))
    except ParseError:
        return None
    return statements[0].stmt if len(statements) == 1 else None


def _begins(stmt: Any) -> TypeGuard[Any]:
    from pglast.ast import TransactionStmt
    from pglast.enums import TransactionStmtKind

    starts = (TransactionStmtKind.TRANS_STMT_BEGIN, TransactionStmtKind.TRANS_STMT_START)
    return isinstance(stmt, TransactionStmt) and stmt.kind in starts


def _verdict(sql: bytes) -> Verdict:
    """By the parser: never a guess from keywords."""
    from pglast.ast import SelectStmt

    stmt = _only(sql)
    if _begins(stmt):
        return Verdict.READ_ONLY if _read_only_option(stmt.options) else Verdict.WRITE
    if isinstance(stmt, SelectStmt) and _plain(stmt):
        return Verdict.READ
    return Verdict.WRITE


def _queries(
    queue: list[tuple[bytes, bytes]], statements: Mapping[bytes, tuple[bytes, bytes, bytes]]
) -> Iterator[bytes | None]:
    """The text of each statement the messages run, parse or bind (None: a named one pgaurora does not know).
    An unnamed Bind is skipped: its Parse is in the batch, or it was judged before."""
    for kind, raw in queue:
        if kind == b"Q":
            yield raw[5:-1]
        elif kind == b"P":
            yield parse_parts(raw[5:])[1]
        elif kind == b"B" and (name := bind_statement(raw[5:])[1]):
            known = statements.get(name)
            yield known[1] if known is not None else None


@lru_cache(maxsize=256)
def opens_transaction(sql: bytes) -> bool:
    """Is sql a lone BEGIN (or START TRANSACTION) that does not say READ ONLY? A splitting endpoint answers it
    itself, and routes the transaction by what comes next (SET TRANSACTION READ ONLY: a replica)."""
    stmt = _only(sql)
    return _begins(stmt) and not any(o.defname == "transaction_read_only" for o in stmt.options or ())


@lru_cache(maxsize=256)
def declares_read_only(sql: bytes) -> bool:
    """Is sql `SET TRANSACTION ... READ ONLY` (or `SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY`)?"""
    from pglast.ast import VariableSetStmt

    stmt = _only(sql)
    if not isinstance(stmt, VariableSetStmt):
        return False
    return (stmt.name or "").upper() in ("TRANSACTION", "SESSION CHARACTERISTICS") and _read_only_option(stmt.args)


@lru_cache(maxsize=1024)
def _controls_transaction(sql: bytes) -> bool:
    """Does sql begin or end a transaction (after which the batch may write)? Unparsable: assume so."""
    from pglast import parse_sql
    from pglast.ast import TransactionStmt
    from pglast.parser import ParseError

    try:
        return any(isinstance(s.stmt, TransactionStmt) for s in parse_sql(sql.decode("utf-8", "replace")))
    except ParseError:
        return True


def _read_only_option(options: Any) -> bool:
    for option in options or ():
        if option.defname == "transaction_read_only":
            return bool(getattr(option.arg.val, "ival", 0))
    return False


def _plain(stmt: Any) -> bool:
    """A SELECT that locks nothing, creates nothing, modifies nothing in a CTE, and calls only safe functions."""
    from pglast.visitors import Visitor

    plain = True

    class Finder(Visitor):
        def visit(self, ancestors: object, node: Any) -> None:
            nonlocal plain
            name = type(node).__name__
            if name in ("IntoClause", "LockingClause", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
                plain = False
            elif name == "FuncCall" and node.funcname[-1].sval.lower() not in SAFE_FUNCTIONS:
                plain = False

    Finder()(stmt)
    return plain


def batch_verdict(
    queue: list[tuple[bytes, bytes]],
    statements: Mapping[bytes, tuple[bytes, bytes, bytes]],
    read_only: bool,
    opened: bool = False,
) -> Verdict:
    """What the messages that begin a transaction are: one Query, or an extended batch up to its Sync whose
    statements are all reads. read_only: the session's default_transaction_read_only is on. opened: its
    BEGIN was answered by pgaurora, so these are the transaction's first statements."""
    if read_only:
        return Verdict.READ_ONLY
    if opened:
        first = next(_queries(queue, statements), None)
        return Verdict.READ_ONLY if first is not None and declares_read_only(first) else Verdict.WRITE
    if len(queue) == 1 and queue[0][0] == b"Q":
        return verdict(queue[0][1][5:-1])
    if not queue or queue[-1][0] != b"S" or any(kind not in _BATCH for kind, _ in queue):
        return Verdict.WRITE  # a batch still coming (what follows may write), or one with more than statements
    found = list(_queries(queue, statements))
    queries = [q for q in found if q is not None]
    if not queries or len(queries) < len(found):
        return Verdict.WRITE
    if verdict(queries[0]) is Verdict.READ_ONLY:  # pgjdbc's BEGIN READ ONLY, sent with what follows
        return Verdict.WRITE if any(_controls_transaction(q) for q in queries[1:]) else Verdict.READ_ONLY
    return Verdict.READ if all(verdict(q) is Verdict.READ for q in queries) else Verdict.WRITE


_BATCH = frozenset({b"P", b"B", b"D", b"E", b"S", b"H", b"C"})  # what an extended batch of statements holds


CONSISTENCIES = tuple(mode.value for mode in Consistency)
_MODES = {mode.value: mode for mode in Consistency}
LSN_HINT = "A WAL position as PostgreSQL prints it, such as 0/3000060 (pg_current_wal_lsn() after the write)."


def parse_lsn(text: str | None) -> int | None:
    """A WAL position as PostgreSQL prints it (`16/B374D848`), as a number; None when absent or malformed."""
    high, slash, low = (text or "").strip().partition("/")
    try:
        return (int(high, 16) << 32) | int(low, 16) if slash and high and low else None
    except ValueError:
        return None


Connect = Callable[[NodeState], Awaitable[asyncpg.Connection]]
REPLAY_GAP = 0.001  # seconds between two questions to one replica while reads wait on it


class _Asked:
    """One query at a time to one node, shared by everyone who asks while it runs."""

    def __init__(self, connect: Connect, sql: str, gap: float = 0.0) -> None:
        self.connect, self.sql, self.gap = connect, sql, gap  # gap: the least time between two queries
        self.node: NodeState | None = None
        self.conn: asyncpg.Connection | None = None
        self.running: tuple[float, asyncio.Task[int]] | None = None
        self.asking: str | None = None  # the node the running query asks
        self.last: tuple[float, int] | None = None  # (when the query began, its answer)

    def ask(self, node: NodeState) -> tuple[float, asyncio.Task[int]]:
        """The query running for node, or a new one: never two at once on the connection."""
        if self.running is not None and self.asking == node.name:
            return self.running
        self.asking, began = node.name, time.monotonic()
        task = asyncio.get_running_loop().create_task(self._query(node, began))
        self.running = (began, task)
        return self.running

    async def _query(self, node: NodeState, began: float) -> int:
        me, conn = asyncio.current_task(), None
        try:
            if self.gap and self.last is not None and (early := self.last[0] + self.gap - began) > 0:
                await asyncio.sleep(early)
                began = time.monotonic()
            conn = self.conn
            if conn is None or conn.is_closed() or self.node is None or self.node.address != node.address:
                conn = await self.connect(node)
                self.close()  # the connection to a node asked before (a writer that changed)
                if self.node is not None and self.node.name != node.name:
                    self.last = None  # a position of another node says nothing of this one
                self.node, self.conn = node, conn
            value = int(await conn.fetchval(self.sql, timeout=2.0))
            self.last = (began, value)
            return value
        except BaseException:
            if conn is not None and conn is self.conn:
                self.close()
            elif conn is not None:
                conn.terminate()
            raise
        finally:
            if self.running is not None and self.running[1] is me:
                self.running = None

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()


class LsnClock:
    """The writer's flushed WAL position, one query for every read that asks at the same moment. A read that
    began at t is given a position read after t: past every commit acknowledged before t."""

    def __init__(self, connect: Connect) -> None:
        self._asked = _Asked(connect, "SELECT pg_current_wal_flush_lsn() - '0/0'")

    def cached(self, writer: str | None, began: float) -> int | None:
        """A position read on writer after began, if one was already: no query."""
        last, node = self._asked.last, self._asked.node
        if last is None or node is None or node.name != writer or last[0] < began:
            return None
        return last[1]

    async def after(self, writer: NodeState, began: float) -> int:
        while (value := self.cached(writer.name, began)) is None:
            started, task = self._asked.ask(writer)
            answer = await asyncio.shield(task)
            if started >= began:
                return answer
        return value

    def close(self) -> None:
        self._asked.close()


class ReplayWatch:
    """How far each replica has replayed: asked of it only while reads wait on it, and then without pause."""

    def __init__(self, connect: Connect) -> None:
        self.connect = connect
        self._asked: dict[str, _Asked] = {}

    def known(self, node: NodeState) -> int:
        asked = self._asked.get(node.name)
        return asked.last[1] if asked is not None and asked.last is not None else -1

    async def first_past(self, nodes: list[NodeState], lsn: int, timeout: float) -> NodeState | None:
        """The first of nodes to replay past lsn within timeout, or None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            past = [n for n in nodes if self.known(n) >= lsn]
            if past:
                return past[0]
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            tasks = [self._ask(n)[1] for n in nodes]
            await asyncio.wait(tasks, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: a replica that does not answer is simply not chosen

    def _ask(self, node: NodeState) -> tuple[float, asyncio.Task[int]]:
        asked = self._asked.get(node.name)
        if asked is None:
            sql = "SELECT pg_last_wal_replay_lsn() - '0/0'"
            asked = self._asked[node.name] = _Asked(self.connect, sql, gap=REPLAY_GAP)
        return asked.ask(node)

    def close(self) -> None:
        for asked in self._asked.values():
            asked.close()


class SplitClient(Protocol):
    """What the splitter reads of a pooled client at the start of each of its transactions."""

    database: str
    user: str
    queue: list[tuple[bytes, bytes]]
    wrote_at: float | None  # when its last transaction on the writer ended (monotonic)
    opened: bytes | None  # a BEGIN pgaurora answered itself: the transaction is routed by what follows it

    @property
    def statements(self) -> Mapping[bytes, tuple[bytes, bytes, bytes]]: ...

    def knob(self, name: str) -> str | None: ...

    def reads_only(self) -> bool: ...


class Routed(NamedTuple):
    """Where one transaction goes, and why (counted in /metrics)."""

    pool: Pool | None  # None: ask again in a task (it must wait)
    verdict: Verdict
    why: str


class Splitter:
    """Routes each transaction of a splitting endpoint: writes to the writer; reads to a replica that has replayed
    what the session must see (its consistency), else after up to consistency_wait, else to the writer."""

    def __init__(self, spec: CustomEndpointConfig, hub: TopologyHub, pools: Pools, connect: Connect) -> None:
        self.spec, self.hub, self.pools = spec, hub, pools
        self.clock, self.replay = LsnClock(connect), ReplayWatch(connect)
        self._turn = itertools.count()
        self._serving: tuple[int, list[NodeState]] = (-1, [])

    def consistency(self, client: SplitClient) -> Consistency:
        named = client.knob("pgaurora.consistency")
        return self.spec.consistency if named is None else _MODES.get(named.lower(), self.spec.consistency)

    def route_now(self, client: SplitClient) -> Routed:
        """Where the transaction that client's queue begins goes, when that is known without waiting."""
        found = batch_verdict(client.queue, client.statements, client.reads_only(), client.opened is not None)
        topology = self.hub.current
        if found is Verdict.WRITE:
            return Routed(self._writer_pool(topology, client), found, "write")
        replicas = self._replicas(topology)
        if not replicas:
            return Routed(self._writer_pool(topology, client), found, "no_replica")
        began = self._must_see(client)
        if began is None:
            return Routed(self._pool(replicas[0], client), found, "replica")
        last = self.clock.cached(topology.writer, began)
        past = [n for n in replicas if last is not None and self.replay.known(n) >= last]
        if past:
            return Routed(self._pool(past[0], client), found, "replica")
        return Routed(None, found, "wait")

    async def route_later(self, client: SplitClient) -> tuple[Pool, str, float | None]:
        """A read that must wait: for the writer's position, then for a replica past it (up to
        consistency_wait); the writer's pool when none gets there. Returns the pool, why, and the wait."""
        loop = asyncio.get_running_loop()
        began_wait = loop.time()
        topology = self.hub.current
        writer, replicas = topology.writer_node, self._replicas(topology)
        began = self._must_see(client)
        if writer is None or not replicas or began is None:
            raise LookupError("nothing to wait for")
        try:
            lsn = await self.clock.after(writer, began)
        except Exception as exc:  # whatever went wrong, a read must not wait for ever: the writer has it all
            log.warning("the writer's WAL position is unknown (%s): a read goes to the writer", exc)
            return self.pools.get(writer, client.database, client.user), "position_unknown", None
        node = await self.replay.first_past(replicas, lsn, self.spec.consistency_wait)
        waited = loop.time() - began_wait
        if node is None:
            return self.pools.get(writer, client.database, client.user), "replica_behind", waited
        return self.pools.get(node, client.database, client.user), "replica", waited

    def _must_see(self, client: SplitClient) -> float | None:
        """The moment whose commits the read must see: None (eventual), its last write (session), now (global)."""
        mode = self.consistency(client)
        if mode is Consistency.GLOBAL:
            return time.monotonic()
        if mode is Consistency.SESSION:
            return client.wrote_at
        return None

    def _replicas(self, topology: Topology) -> list[NodeState]:
        """The members that serve reads now (worked out once per topology), rotated for round robin."""
        if self._serving[0] != topology.version:
            self._serving = (topology.version, custom_endpoints.serving(self.spec, topology))
        nodes = self._serving[1]
        if len(nodes) < 2:
            return nodes
        start = next(self._turn) % len(nodes)
        return nodes[start:] + nodes[:start]

    def _writer_pool(self, topology: Topology, client: SplitClient) -> Pool | None:
        writer = topology.writer_node
        return None if writer is None else self.pools.get(writer, client.database, client.user)

    def _pool(self, node: NodeState, client: SplitClient) -> Pool:
        return self.pools.get(node, client.database, client.user)

    def close(self) -> None:
        self.clock.close()
        self.replay.close()
