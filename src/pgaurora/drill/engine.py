"""The drill engine: for each fault and round, wait for a healthy cluster, inject, watch it heal, measure."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable

import asyncpg

from ..core.errors import ClusterError
from ..core.polling import values_over, wait_for
from .faults import ISOLATION_SECONDS, Fault
from .report import Consistency, Report, RoundResult
from .target import ComposedTarget, Target
from .workload import TABLE, Log, Workload


def healthy(status: dict | None, nodes: int) -> bool:
    """Every node up as the writer or a reader, none fenced, a failover now provably safe, and commits on
    every copy the configuration asks for."""
    if not status or not status["writer"]["node"] or not status.get("failover_safe"):
        return False
    if not (status.get("redundancy") or {}).get("full", True):
        return False
    roles = [n["role"] for n in status["nodes"] if n["health"] == "healthy"]
    return roles.count("primary") == 1 and roles.count("replica") == nodes - 1


def _first_after(times: list[float], moment: float) -> float | None:
    return next((t for t in times if t > moment), None)


def _downtime(times: list[float], start: float, end: float) -> float | None:
    """The outage: the longest gap between consecutive successes, from the last one before the fault to
    the first one after the round (acknowledgements still in flight at the fault do not hide it)."""
    before = [t for t in times if t <= start]
    after = _first_after(times, end)
    window = ([before[-1]] if before else []) + [t for t in times if start < t <= end] + ([after] if after else [])
    if len(window) < 2:
        return None
    return max(b - a for a, b in itertools.pairwise(window))


class Drill:
    def __init__(
        self,
        target: Target,
        faults: list[Fault],
        rounds: int,
        writers: int = 4,
        readers: int = 4,
        on_round: Callable[[RoundResult], None] | None = None,
    ) -> None:
        self.target, self.faults, self.rounds = target, faults, rounds
        self.workload = Workload(target.writer, target.reader, target.user, target.password, writers, readers)
        self.report = Report()
        self.on_round = on_round or (lambda r: None)
        self.nodes = len(target.nodes)

    @property
    def log(self) -> Log:
        return self.workload.log

    def run(self) -> Report:
        started = time.monotonic()
        self.workload.start()
        try:
            wait_for("some acknowledged writes", lambda: len(self.log.acks) >= 20, 30)
            for round_no in range(1, self.rounds + 1):
                for fault in self.faults:
                    result = self.one(fault, round_no)
                    self.report.rounds.append(result)
                    self.on_round(result)
        finally:
            self.workload.stop()
        self.report.consistency = self.check_consistency()
        self.report.wall_seconds = time.monotonic() - started
        return self.report

    # -- one round -----------------------------------------------------------------------------------
    def one(self, fault: Fault, round_no: int) -> RoundResult:
        status = wait_for("a healthy cluster before the fault", lambda: self._healthy_status(), 120)
        old = status["writer"]["node"]
        victim = old if fault.on != "replica" else status["reader"]["nodes"][0]
        at = time.time()
        outcome = getattr(self, "_" + fault.name.replace("-", "_"))(victim, old, at)
        ended = time.time()
        result = RoundResult(fault.name, round_no, at, victim, outcome)
        event = (
            wait_for("the change of writer's event", lambda: self.target.change_event(at), 30)
            if fault.expect_failover
            else None
        )
        self._measure(result, event, at, ended)
        wait_for("the cluster to heal: every node back and commits on every copy", self._healthy_status, 120)
        result.redundant_again = time.time() - at
        return result

    def _healthy_status(self) -> dict | None:
        status = self.target.status()
        return status if healthy(status, self.nodes) else None

    def _new_writer(self, old: str, at: float, timeout: float = 60) -> str:
        status = wait_for(f"a writer other than {old}", lambda: self._writer_other_than(old), timeout)
        new = status["writer"]["node"]
        host = self.target.node(new).host
        wait_for(
            f"an acknowledged write on {new}", lambda: any(a.at > at and a.node == host for a in self.log.acks), timeout
        )
        return new

    def _writer_other_than(self, old: str) -> dict | None:
        status = self.target.status()
        return status if status and status["writer"]["node"] not in (None, old) else None

    def _after_primary_fault(self, node: str, at: float, restore: Callable[[], None]) -> str:
        try:
            new = self._new_writer(node, at)
        finally:
            restore()
        return f"failover {node} -> {new}"

    def _start(self, node: str) -> Callable[[], None]:
        """What ends a crash: nothing where pgaurora heals the cluster itself, else the drill starts the node."""
        return (lambda: None) if self.target.heals else self.target.node(node).start

    def _kill_primary(self, node: str, old: str, at: float) -> str:
        self.target.node(node).kill()
        return self._after_primary_fault(node, at, self._start(node))

    def _kill_primary_and_replica(self, node: str, old: str, at: float) -> str:
        status = self.target.status() or {}
        replica = next(n for n in (status.get("reader") or {}).get("nodes", []) if n != node)
        self.target.node(node).kill()
        self.target.node(replica).kill()
        start_primary, start_replica = self._start(node), self._start(replica)

        def restore() -> None:
            start_primary()
            start_replica()

        return self._after_primary_fault(node, at, restore) + f" ({replica} killed with it)"

    def _stop_primary(self, node: str, old: str, at: float) -> str:
        self.target.node(node).stop()
        return self._after_primary_fault(node, at, self._start(node))

    def _pause_primary(self, node: str, old: str, at: float) -> str:
        self.target.node(node).pause()
        return self._after_primary_fault(node, at, lambda: self.target.node(node).resume())

    def _restart_pgaurora(self, node: str, old: str, at: float) -> str:
        self.target.node(node).kill()
        target = self.target
        if not isinstance(target, ComposedTarget):
            raise ClusterError("restart-pgaurora needs a cluster the drill composes")
        target.kill_pgaurora()
        target.start_pgaurora()
        return self._after_primary_fault(node, at, self._start(node))

    def _replica_fault(self, node: str, at: float, inject, restore) -> str:
        inject()
        try:
            wait_for(
                f"{node} to leave the reader endpoint",
                lambda: node not in ((self.target.status() or {}).get("reader") or {}).get("nodes", [node]),
                30,
            )
            host = self.target.node(node).host
            wait_for(
                "a read answered by another replica",
                lambda: any(r.at > at and r.node != host for r in self.log.reads),
                30,
            )
        finally:
            restore()
        return f"{node} left the reader endpoint; no failover"

    def _kill_replica(self, node: str, old: str, at: float) -> str:
        return self._replica_fault(node, at, self.target.node(node).kill, self._start(node))

    def _pause_replica(self, node: str, old: str, at: float) -> str:
        n = self.target.node(node)
        return self._replica_fault(node, at, n.pause, n.resume)

    def _isolate_primary(self, node: str, old: str, at: float) -> str:
        self.target.isolate(node)
        try:
            changed = values_over(lambda: (self.target.status() or {}).get("epoch"), ISOLATION_SECONDS)
        finally:
            self.target.heal()
        host = self.target.node(node).host
        wait_for(
            "writes through the healed primary",
            lambda: any(a.at > at + ISOLATION_SECONDS and a.node == host for a in self.log.acks),
            60,
        )
        status = self.target.status() or {}
        if status.get("writer", {}).get("node") != node:
            return f"FAILOVER during a partition of the monitor alone (epochs seen {changed})"
        return f"no failover: {node} stayed writer while cut off from pgaurora"

    def _switchover(self, node: str, old: str, at: float) -> str:
        result = self.target.switchover()
        self._new_writer(node, at)
        return f"switchover {result['old_writer']} -> {result['new_writer']}"

    # -- measures ---------------------------------------------------------------------------------------
    def _measure(self, result: RoundResult, event: dict | None, at: float, ended: float) -> None:
        acks, reads = list(self.log.acks), list(self.log.reads)
        result.write_downtime = _downtime([a.at for a in acks], at, ended)
        result.read_downtime = _downtime([r.at for r in reads], at, ended)
        new_host = None
        if event is not None:
            phases = event.get("phases") or {}
            for name, key in (("detected", "detected"), ("promoted", "promoted"), ("dns_updated", "dns_updated")):
                if key in phases:
                    setattr(result, name, phases[key] - at)
            new = event.get("new_writer")
            new_host = self.target.node(new).host if new else None
        if new_host is not None:
            result.writer_available = _first_after([a.at for a in acks if a.node == new_host], at)
            result.writer_available = None if result.writer_available is None else result.writer_available - at
        failures = [f for f in list(self.log.failures) if at <= f.at <= ended]
        result.errors = dict(Counter(f.code for f in failures))
        result.dropped = sum(f.dropped for f in failures)
        done = [(a.at, a.took) for a in acks] + [(r.at, r.took) for r in reads]
        waits = [took for finished, took in done if finished - took >= at and finished <= ended]
        result.longest_wait = max(waits, default=None)
        result.reads_by_node = dict(Counter(r.node for r in reads if at <= r.at <= ended))
        result.lost = len(self.log.acked_keys() - self._rows(self.target.writer))

    def _rows(self, address: tuple[str, int]) -> set[tuple[int, int]]:
        return asyncio.run(_fetch_keys(address, self.target.user, self.target.password))

    # -- the end -------------------------------------------------------------------------------------------
    def check_consistency(self) -> Consistency:
        """After the cluster converged: every acknowledged row on every node; timelines never went back."""
        status = wait_for("the cluster to converge", lambda: self._healthy_status(), 120)
        self._wait_replicas_caught_up()
        acked = self.log.acked_keys()
        check = Consistency(acknowledged=len(acked), final_writer=status["writer"]["node"])
        for node in self.target.nodes:
            keys, total = asyncio.run(
                _fetch_keys(node.address, self.target.user, self.target.password, with_total=True)
            )
            check.missing[node.name] = len(acked - keys)
            if node.name == check.final_writer:
                check.duplicates = total - len(keys)
        check.split_brain = split_brain_writes(self.log)
        return check

    def _replayed(self, address: tuple[str, int], lsn: int) -> Callable[[], bool]:
        return lambda: bool(asyncio.run(_fetchval(address, self.target, REPLAYED)) >= lsn)

    def _wait_replicas_caught_up(self) -> None:
        writer = asyncio.run(_fetchval(self.target.writer, self.target, "SELECT pg_current_wal_lsn() - '0/0'"))
        for node in self.target.nodes:
            wait_for(f"{node.name} to replay everything", self._replayed(node.address, writer), 60)


def split_brain_writes(log: Log) -> int:
    """Acknowledged writes on a timeline older than one another write had already been acknowledged on:
    two primaries accepting writes at the same time."""
    newest, count = 0, 0
    for ack in sorted(log.acks, key=lambda a: a.at):
        if ack.timeline < newest:
            count += 1
        newest = max(newest, ack.timeline)
    return count


REPLAYED = "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END - '0/0'"


async def _connect(address: tuple[str, int], user: str, password: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=address[0], port=address[1], user=user, password=password, database="postgres", timeout=30, ssl=False
    )


async def _fetch_keys(address, user, password, with_total: bool = False):
    conn = await _connect(address, user, password)
    try:
        rows = await conn.fetch(f"SELECT writer, seq FROM {TABLE}")
    finally:
        await conn.close()
    keys = {(r["writer"], r["seq"]) for r in rows}
    return (keys, len(rows)) if with_total else keys


async def _fetchval(address, target, sql: str):
    conn = await _connect(address, target.user, target.password)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()
