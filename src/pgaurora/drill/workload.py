"""The drill's workload: writers insert numbered rows through the writer endpoint, readers query through
the reader endpoint, both reconnecting and retrying as an application does; every outcome is logged."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import asyncpg
import uvloop

TABLE = "pgaurora_drill"
INSERT = (
    f"INSERT INTO {TABLE} (writer, seq, node, timeline) VALUES ($1, $2, inet_server_addr(), "
    "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int) RETURNING host(node), timeline"
)


@dataclass(frozen=True, slots=True)
class Ack:
    at: float  # wall-clock time the client got the acknowledgement
    took: float  # seconds from sending the insert to its acknowledgement (reconnecting included)
    writer: int
    seq: int
    node: str  # the server address that committed it
    timeline: int


@dataclass(frozen=True, slots=True)
class Read:
    at: float
    took: float
    node: str


@dataclass(frozen=True, slots=True)
class Failure:
    at: float
    role: str  # "write" or "read"
    code: str  # SQLSTATE, or the exception's class when the server sent none
    dropped: bool = True  # the client's connection ended with it (else it went on, as a pooled one does)


@dataclass
class Log:
    """Append-only records of the whole drill, written by the workload thread and read by the engine."""

    acks: list[Ack] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def acked_keys(self) -> set[tuple[int, int]]:
        return {(a.writer, a.seq) for a in list(self.acks)}


def _code(exc: BaseException) -> str:
    return getattr(exc, "sqlstate", None) or type(exc).__name__


class Workload:
    """Writers and readers on one uvloop thread of their own."""

    def __init__(
        self,
        writer: tuple[str, int],
        reader: tuple[str, int],
        user: str,
        password: str | None,
        writers: int = 4,
        readers: int = 4,
        read_pause: float = 0.01,
    ) -> None:
        self.writer, self.reader, self.user, self.password = writer, reader, user, password
        self.writers, self.readers, self.read_pause = writers, readers, read_pause
        self.log = Log()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=lambda: uvloop.run(self._main()), name="drill-workload", daemon=True)

    def start(self, timeout: float = 60) -> None:
        self.thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()
            raise RuntimeError(f"the drill's table could not be made through {self.writer}: {self._error}")

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(60)

    def drop_table(self) -> None:
        """Remove the drill's table (from a cluster that is not the drill's own)."""

        async def drop() -> None:
            conn = await self._connect(self.writer)
            try:
                await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
            finally:
                await conn.close()

        asyncio.run(drop())

    async def _connect(self, address: tuple[str, int]) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=address[0],
            port=address[1],
            user=self.user,
            password=self.password,
            database="postgres",
            timeout=40,
            ssl=False,
        )

    async def _main(self) -> None:
        try:
            conn = await self._connect(self.writer)
            await conn.execute(
                f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (writer int, seq bigint, "
                "node inet, timeline int, at timestamptz DEFAULT clock_timestamp())"
            )
            await conn.close()
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await asyncio.gather(
            *(self._write(i) for i in range(self.writers)), *(self._read() for _ in range(self.readers))
        )

    async def _write(self, writer: int) -> None:
        conn, seq = None, 0
        while not self._stop.is_set():
            began = time.time()
            try:
                conn = conn or await self._connect(self.writer)
                node, timeline = await conn.fetchrow(INSERT, writer, seq, timeout=30)
                now = time.time()
                self.log.acks.append(Ack(now, now - began, writer, seq, node, timeline))
                seq += 1  # a failed insert is retried with the same number: it may have committed
            except Exception as exc:
                conn = await self._failed("write", exc, conn)

    async def _read(self) -> None:
        conn = None
        while not self._stop.is_set():
            began = time.time()
            try:
                conn = conn or await self._connect(self.reader)
                node = await conn.fetchval("SELECT host(inet_server_addr())", timeout=10)
                now = time.time()
                self.log.reads.append(Read(now, now - began, node))
                await asyncio.sleep(self.read_pause)
            except Exception as exc:
                conn = await self._failed("read", exc, conn)

    async def _failed(self, role: str, exc: Exception, conn: asyncpg.Connection | None) -> asyncpg.Connection | None:
        """Log the failure; the connection when it goes on (an error a pooled endpoint answers), else None."""
        survived = conn is not None and not conn.is_closed() and isinstance(exc, asyncpg.PostgresError)
        self.log.failures.append(Failure(time.time(), role, _code(exc), dropped=not survived))
        if conn is not None and not survived:
            conn.terminate()
        await asyncio.sleep(0.05)
        return conn if survived else None
