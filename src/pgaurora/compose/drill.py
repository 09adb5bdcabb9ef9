"""Failover drills: run pgaurora beside a cluster, write through it, crash the primary, measure."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from dataclasses import dataclass, field

import asyncpg
import uvloop
from dnslib import QTYPE, DNSRecord

from ..app import Service
from ..config import Config
from ..eventlog import EventLog
from .local import LocalCluster


class BackgroundService:
    """A Service on its own uvloop thread, so blocking callers (clients, drills, tests) never stall it."""

    def __init__(self, config: Config, controller=None) -> None:
        self.config = config
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pgaurora", daemon=True)
        self.thread.start()
        self.events = EventLog()
        self.service: Service = self.call(self._make(controller))
        self.call(self.service.start())

    async def _make(self, controller) -> Service:
        return Service(self.config, controller=controller, events=self.events)

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
        return await asyncpg.connect(host=host, port=port, user=self.user, password=self.password,
                                     database="postgres", timeout=10, ssl=False)

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
        _wait(f"{count} acknowledged writes through {self.address}", lambda: len(self.acked) >= count, timeout)

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


def resolve_a(server: tuple[str, int], name: str) -> list[str]:
    """A records for name from our DNS server (dnslib client), [] on any failure."""
    try:
        reply = DNSRecord.parse(DNSRecord.question(name, "A").send(server[0], server[1], timeout=0.5))
    except (OSError, ValueError):
        return []
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


@dataclass
class DrillResult:
    """Seconds from the kill to each phase, for one crash of the primary."""

    old_writer: str
    new_writer: str
    detected: float
    promoted: float
    writer_available: float
    dns_updated: float
    lost_writes: int
    acknowledged: int


@dataclass
class DrillReport:
    rounds: list[DrillResult] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name in ("detected", "promoted", "writer_available", "dns_updated"):
            values = [getattr(r, name) for r in self.rounds]
            out[name] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
        return out

    @property
    def lost_writes(self) -> int:
        return sum(r.lost_writes for r in self.rounds)


def _wait(what: str, predicate, timeout: float, interval: float = 0.01) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.time()


FAULTS = ("kill", "pause")  # SIGKILL of the whole node; SIGSTOP of it (hung, not dead), resumed once replaced


def crash_primary_once(cluster: LocalCluster, svc: BackgroundService, table: str, fault: str = "kill") -> DrillResult:
    """Kill or freeze the writer under a write loop; measure until writes, DNS and the endpoints moved."""
    old = cluster.node(svc.topology.writer)
    writes = WriteLoop(svc.endpoint("writer"), "postgres", cluster.password, table)
    dns_name, dns_addr = f"writer.{svc.config.zone}", svc.endpoint("dns")
    try:
        writes.wait_acked(20)
        failovers = len([e for e in svc.events.recent() if e["kind"] == "failover"])
        killed = time.time()
        old.kill() if fault == "kill" else old.pause()
        try:
            dns_at = _wait("DNS to name a new writer",
                           lambda: resolve_a(dns_addr, dns_name) not in ([old.host], []), 60)
            available = _wait("a write on the new primary", lambda: writes.resumed_after(killed), 60)
        finally:
            if fault == "pause":
                old.resume()  # it comes back as a primary on the old timeline: fenced, then rejoined
    finally:
        writes.stop()
    found = [e for e in svc.events.recent() if e["kind"] == "failover"][failovers:]
    if not found:
        raise RuntimeError(f"writes resumed without a failover; events: {svc.events.recent()[-5:]}; "
                           f"errors: {writes.errors[-5:]}; topology: {svc.topology}")
    event = found[0]
    new = cluster.node(event["new_writer"])
    present = {int(x) for x in (new.sql(f"SELECT string_agg(id::text, ',') FROM {table}") or "").split(",") if x}
    phases = event["phases"]
    return DrillResult(old.name, new.name, phases["detected"] - killed, phases["promoted"] - killed,
                       writes.resumed_after(killed) - killed if available else float("nan"),
                       dns_at - killed, len(writes.acked_ids() - present), len(writes.acked))


def restore(cluster: LocalCluster, svc: BackgroundService, node: str, timeout: float = 120) -> None:
    """Start the crashed node; the monitor fences it and rejoins it as a replica."""
    cluster.node(node).start()
    try:
        _wait(f"{node} to rejoin as a healthy replica", lambda: node in svc.topology.readers, timeout, 0.05)
    except TimeoutError as exc:
        state = svc.topology.node(node)
        raise TimeoutError(f"{exc}; {node} is {state.role.value}/{state.health.value}, lag {state.lag_bytes} B / "
                           f"{state.lag_seconds} s; last decision: {svc.topology.reason}") from None
