"""A Service on a thread of its own, and a write loop through an endpoint: for tests and benchmarks."""

from __future__ import annotations

import asyncio
import threading
import time

import asyncpg
import uvloop

from ..core.config import Config
from ..core.eventlog import EventLog
from ..core.polling import wait_for
from ..service.app import Cluster, Service


class BackgroundService:
    """A Service on its own uvloop thread, so blocking callers (clients, drills, tests) never stall it."""

    def __init__(self, config: Config, cluster: Cluster | None = None) -> None:
        self.config = config
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pgaurora", daemon=True)
        self.thread.start()
        self.events = EventLog()
        self.service: Service = self.call(self._make(cluster))
        self.call(self.service.start())

    async def _make(self, cluster: Cluster | None) -> Service:
        return Service(self.config, cluster=cluster, events=self.events)

    def call(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def topology(self):
        return self.service.hub.current

    def wait_ready(self, timeout: float = 30) -> None:
        if not self.call(self.service.wait_ready(timeout)):
            raise TimeoutError(f"pgaurora not ready after {timeout} s: {self.topology.reason}")

    def stop(self) -> None:
        self.call(self.service.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def endpoint(self, name: str) -> tuple[str, int]:
        listen = getattr(self.config, name)
        return listen.host, listen.port


class WriteLoop:
    """Inserts numbered rows through an endpoint (asyncpg), reconnecting on errors; records each acknowledgement."""

    def __init__(self, address: tuple[str, int], user: str, password: str | None, table: str = "numbers") -> None:
        self.address, self.user, self.password, self.table = address, user, password, table
        self.acked: list[tuple[int, float]] = []  # (id, wall-clock time of the acknowledgement)
        self.errors: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        if not self._ready.wait(30):
            raise TimeoutError(f"could not create table {table} through {address}")

    async def _connect(self) -> asyncpg.Connection:
        host, port = self.address
        return await asyncpg.connect(
            host=host, port=port, user=self.user, password=self.password, database="postgres", timeout=10, ssl=False
        )

    async def _run(self) -> None:
        conn = await self._connect()
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (id int PRIMARY KEY)")
        self._ready.set()
        next_id = 0
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = await self._connect()
                await conn.execute(f"INSERT INTO {self.table} VALUES ($1)", next_id, timeout=30)
                self.acked.append((next_id, time.time()))
            except Exception as exc:  # a drill client survives anything and reconnects
                self.errors.append((time.time(), f"{type(exc).__name__}: {exc}"[:200]))
                if conn is not None:
                    conn.terminate()
                conn = None
            next_id += 1
        if conn is not None:
            conn.terminate()

    def wait_acked(self, count: int, timeout: float = 30) -> None:
        """Block until at least count inserts were acknowledged (polling, with a deadline)."""
        wait_for(
            f"{count} acknowledged writes through {self.address}",
            lambda: len(self.acked) >= count,
            timeout,
            interval=0.01,
        )

    def acked_after(self, moment: float) -> list[tuple[int, float]]:
        return [(i, t) for i, t in self.acked if t > moment]

    def resumed_after(self, moment: float) -> float | None:
        """When writes worked again after an outage that began after moment (first ack after the first error)."""
        errors = [t for t, _ in self.errors if t > moment]
        start = errors[0] if errors else moment
        return next((t for _, t in self.acked if t > start), None)

    def acked_ids(self) -> set[int]:
        return {i for i, _ in self.acked}

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(60)
