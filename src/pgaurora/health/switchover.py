"""Planned switchover: stop the writer cleanly, let the target receive all of its WAL, promote, rejoin."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from ..core.errors import ActionFailed
from . import actions
from .decide import choose_candidate, desired_sync_names, lsn

if TYPE_CHECKING:
    from ..core.config import Config, NodeConfig
    from ..core.eventlog import EventLog
    from .control import NodeController
    from .decide import ClusterState, Policy
    from .probe import NodeStatus


class Switching(Protocol):
    """What a switchover uses of the monitor (health.monitor.Monitor): its view, and its writer's handover."""

    @property
    def config(self) -> Config: ...

    @property
    def nodes(self) -> dict[str, NodeConfig]: ...

    @property
    def state(self) -> ClusterState: ...

    @property
    def statuses(self) -> dict[str, NodeStatus]: ...

    @property
    def policy(self) -> Policy: ...

    @property
    def controller(self) -> NodeController | None: ...

    @property
    def events(self) -> EventLog: ...

    async def hold_writes(self, reason: str) -> None: ...

    async def resume_writer(self, name: str, reason: str) -> None: ...

    async def install_writer(self, name: str, timeline: int, reason: str) -> None: ...

    async def repoint_all(self, exclude: set[str]) -> list[str]: ...

    async def rejoin_once(self, name: str, reason: str) -> str: ...

    def in_flight(self, node: str) -> int: ...


def _pick_target(monitor: Switching, to: str | None) -> str:
    state, statuses = monitor.state, monitor.statuses
    if to is None:
        best = choose_candidate(state, statuses, monitor.policy)
        if best is None:
            raise ActionFailed("no reachable replica to switch over to")
        return best.name
    status = statuses.get(to)
    if status is None:
        raise ActionFailed(f"no node named {to!r}")
    if not status.is_replica or to in state.fenced:
        raise ActionFailed(
            f"{to} is not a healthy replica (role: "
            f"{'fenced' if to in state.fenced else 'primary' if status.is_primary else 'unreachable'})"
        )
    return to


async def _wait_received(monitor: Switching, target: str, wanted: int) -> bool:
    """Has target received WAL past `wanted` (the old writer's shutdown checkpoint)? Bounded wait."""
    conn = await actions.connect(monitor.config, monitor.nodes[target])
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + monitor.config.failover.catchup_timeout
        while loop.time() < deadline:
            received = await conn.fetchval("SELECT pg_last_wal_receive_lsn() - '0/0'")
            if received is not None and int(received) > wanted:
                return True
            await asyncio.sleep(0.01)
        return False
    finally:
        conn.terminate()


def prepare(monitor: Switching, to: str | None) -> tuple[str, str]:
    """The old writer and the target, or ActionFailed saying why a switchover cannot start now."""
    if monitor.controller is None:
        raise ActionFailed("switchover needs a cluster started by `pgaurora up` (pgaurora controls its nodes)")
    old = monitor.state.writer
    if old is None or not monitor.statuses.get(old) or not monitor.statuses[old].is_primary:
        raise ActionFailed("there is no healthy writer to switch over from")
    return old, _pick_target(monitor, to)


async def drain(monitor: Switching, old: str) -> int:
    """New transactions wait (no writer is published); those in flight on pooled endpoints get up to
    drain_timeout to finish on old. Returns how many were still running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + monitor.config.failover.drain_timeout
    while (running := monitor.in_flight(old)) and loop.time() < deadline:
        await asyncio.sleep(0.005)
    return running


async def switchover(monitor: Switching, old: str, target: str) -> dict[str, Any]:
    """Hold writes, stop old, let target receive its WAL, promote target; then rejoin old as its replica."""
    if monitor.controller is None:
        raise ActionFailed("switchover needs a cluster started by `pgaurora up` (pgaurora controls its nodes)")
    phases = {"requested": time.time()}
    reason = f"switchover from {old} to {target} requested"
    await monitor.hold_writes(f"{reason}: writes paused")
    try:
        unfinished = await drain(monitor, old)
        phases["drained"] = time.time()
        final = await asyncio.to_thread(monitor.controller.stop_node, old)
        phases["old_writer_stopped"] = time.time()
        if not await _wait_received(monitor, target, final):
            raise ActionFailed(f"{target} did not receive {old}'s WAL up to {lsn(final)} in time")
    except Exception:
        await asyncio.to_thread(monitor.controller.start_node, old)
        await monitor.resume_writer(old, f"{reason}: aborted, {old} stays writer")
        raise
    phases["target_caught_up"] = time.time()
    after = replace(monitor.state, writer=target)
    sync = desired_sync_names(after, monitor.statuses, monitor.policy)
    timeline = await actions.promote(monitor.config, monitor.nodes[target], sync, monitor.state.timeline)
    phases["promoted"] = time.time()
    await monitor.install_writer(
        target, timeline, f"switchover: {target} is the writer (epoch {monitor.state.epoch + 1})"
    )
    phases["endpoints_switched"] = time.time()
    method = await monitor.rejoin_once(old, f"switchover: {old} rejoins as a replica of {target}")
    repointed = await monitor.repoint_all(exclude={old, target})
    phases["old_writer_rejoined"] = time.time()
    result = {
        "old_writer": old,
        "new_writer": target,
        "epoch": monitor.state.epoch,
        "timeline": timeline,
        "final_lsn": lsn(final),
        "rejoin": method,
        "unfinished_transactions": unfinished,
        "repointed": repointed,
        "write_pause_seconds": round(phases["endpoints_switched"] - phases["requested"], 3),
        "phases": {k: round(v, 3) for k, v in phases.items()},
    }
    monitor.events.record("switchover", f"{reason}; {target} promoted, {old} rejoined as a replica", **result)
    return result
