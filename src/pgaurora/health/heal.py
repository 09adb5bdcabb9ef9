"""Self-healing: a node that exits unasked is started again, rewound or rebuilt; plan() decides, Supervisor acts."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import time
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Protocol

from ..core.config import HealConfig, SyncMode
from ..core.eventlog import EventLog
from ..core.topology import Health, Role, Topology, TopologyHub

log = logging.getLogger("pgaurora.heal")

WRITER_GRACE = 10.0
"""Seconds a crashed writer is left to the monitor's failover before it is started again in place."""
PROBE_GRACE = 5.0
"""After a start command succeeded, seconds the probes get to see the node up before another try."""


class Step(str, Enum):
    NONE = "none"
    WAIT = "wait"
    START = "start"  # crash recovery, then what it was: a replica streams again, a lone writer serves again
    REJOIN = "rejoin"  # a former primary: rewound onto the writer's timeline (or cloned), then a replica
    REBUILD = "rebuild"  # a fresh clone of the writer, for a node that cannot start
    GIVE_UP = "give_up"


@dataclass(frozen=True, slots=True)
class Seen:
    """What the supervisor saw of one node in this round."""

    name: str
    alive: bool
    held: bool  # stopped on purpose by pgaurora
    usable: bool  # has a data directory to start from
    role: Role
    is_writer: bool
    writer_alive: bool  # is there a running writer to rewind onto or clone from
    others_alive: bool  # could another node take over as writer
    owned: bool = True  # pgaurora holds the node's files: it can rewind and rebuild it
    why_down: str = ""  # "exited (signal 9)", ...


@dataclass(frozen=True, slots=True)
class Tries:
    """A node's healing so far; replaced whole, by the supervisor alone."""

    count: int = 0  # tries in a row, reset once the node stays up for stable_after
    failed: int = 0  # tries in a row that failed outright (a start that raised): rebuild_after counts these
    next_at: float = 0.0  # no try before this moment (back-off)
    down_since: float | None = None
    up_since: float | None = None
    rebuilt: bool = False
    given_up: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    step: Step
    reason: str


def plan(seen: Seen, tries: Tries, now: float, config: HealConfig) -> Plan:
    """What to do about a node now, and why. Pure: table-tested in tests/unit/test_heal.py."""
    if seen.alive:
        return Plan(Step.NONE, f"{seen.name} is running")
    if seen.held:
        return Plan(Step.NONE, f"{seen.name} was stopped on purpose")
    if tries.given_up:
        return Plan(Step.NONE, f"{seen.name}: given up after {tries.count} tries; it needs a person")
    if seen.is_writer and seen.others_alive and now - (tries.down_since or now) < WRITER_GRACE:
        return Plan(Step.WAIT, f"{seen.name} is the writer: the monitor fails over first")
    if not seen.owned:
        return Plan(
            Step.GIVE_UP if tries.count >= config.max_attempts else Step.START,
            f"{tries.count} tries in a row failed"
            if tries.count >= config.max_attempts
            else "its start command starts it on its host",
        )
    if now < tries.next_at:
        return Plan(Step.WAIT, f"next try in {tries.next_at - now:.1f} s")
    if tries.count >= config.max_attempts:
        return Plan(Step.GIVE_UP, f"{tries.count} tries in a row failed")
    return _repair(seen, tries, config)


def _repair(seen: Seen, tries: Tries, config: HealConfig) -> Plan:
    needs_writer = (
        not seen.usable or seen.role is Role.FENCED or (tries.failed >= config.rebuild_after and not tries.rebuilt)
    )
    if needs_writer and not seen.writer_alive:
        return Plan(Step.WAIT, "waiting for a running writer to rebuild or rewind it from")
    if not seen.usable:
        return Plan(Step.REBUILD, "no usable data directory")
    if tries.failed >= config.rebuild_after and not tries.rebuilt:
        return Plan(Step.REBUILD, f"failed to start {tries.failed} times in a row")
    if seen.role is Role.FENCED:
        return Plan(Step.REJOIN, "a former primary")
    if seen.is_writer:
        return Plan(
            Step.START,
            "the writer, and "
            + (
                "no other node can take over"
                if not seen.others_alive
                else f"no failover came within {WRITER_GRACE:.0f} s"
            ),
        )
    return Plan(Step.START, "a replica")


def after_try(tries: Tries, step: Step, ok: bool, now: float, config: HealConfig, grace: float = 0.0) -> Tries:
    """The record after one try: counted either way, with a back-off doubling from config.backoff (and at
    least `grace` after a success, when only the probes can tell that the node is up)."""
    count = tries.count + 1
    wait = min(config.max_backoff, config.backoff * 2 ** (count - 1))
    wait = max(wait, grace) if ok else wait
    return replace(
        tries,
        count=count,
        failed=0 if ok else tries.failed + 1,
        next_at=now + wait,
        rebuilt=tries.rebuilt or step is Step.REBUILD,
        up_since=now if ok else None,
    )


def observed(tries: Tries, alive: bool, now: float, config: HealConfig) -> Tries:
    """The record after a look at the node: running long enough wipes the slate."""
    if not alive:
        return replace(tries, up_since=None, down_since=tries.down_since or now)
    up_since = tries.up_since or now
    if now - up_since >= config.stable_after:
        return Tries(up_since=up_since)
    return replace(tries, up_since=up_since, down_since=None)


# -- redundancy -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Redundancy:
    replicas: int  # nodes that should stream from the writer
    streaming: int  # replicas streaming now, healthy or lagging
    copies: int  # copies a commit is acknowledged from now: the writer, plus the standbys it waits for
    wanted: int  # copies the configuration asks for

    @property
    def full(self) -> bool:
        return self.streaming == self.replicas and self.copies >= self.wanted

    def describe(self) -> str:
        return (
            f"{self.streaming} of {self.replicas} replica{'s' if self.replicas != 1 else ''} streaming; "
            f"commits on {self.copies} cop{'ies' if self.copies != 1 else 'y'}"
            + ("" if self.copies >= self.wanted else f" of the {self.wanted} wanted")
        )


def redundancy(topology: Topology, sync_mode: SyncMode, sync_acks: int = 1) -> Redundancy:
    """How many copies the cluster has now, against what it should have."""
    others = [n for n in topology.nodes if n.name != topology.writer]
    streaming = [n for n in others if n.role is Role.REPLICA and n.health is not Health.UNREACHABLE]
    match = re.match(r"\s*(?:ANY|FIRST)?\s*(\d+)\s*\(", topology.sync_standbys or "")
    acks = int(match.group(1)) if match else (1 if topology.sync_standbys else 0)
    wanted = 1 + (min(sync_acks, len(others)) if sync_mode is not SyncMode.OFF else 0)
    return Redundancy(len(others), len(streaming), 1 + acks if topology.writer else 0, wanted)


# -- the supervisor ---------------------------------------------------------------------------------------
class Nodes(Protocol):
    """What healing needs of the nodes: a compose cluster, or the per-node start commands of a config."""

    owns_files: bool  # can rewind and rebuild (compose), or only start (commands)

    def knows(self, name: str) -> bool: ...

    def alive(self, name: str) -> bool | None: ...  # None: cannot tell from here (use the probes)

    def why_down(self, name: str) -> str: ...

    def held(self, name: str) -> bool: ...

    def usable(self, name: str) -> bool: ...

    def start_node(self, name: str) -> None: ...

    def rebuild(self, name: str, upstream: str) -> None: ...


class Rejoiner(Protocol):
    async def rejoin_once(self, name: str, reason: str) -> str: ...


class Supervisor:
    """Looks at every node each interval and heals, one try at a time per node, beside the monitor's loop."""

    def __init__(
        self,
        nodes: Nodes,
        hub: TopologyHub,
        rejoiner: Rejoiner,
        events: EventLog,
        config: HealConfig,
        sync_mode: SyncMode,
        sync_acks: int = 1,
    ) -> None:
        self.nodes, self.hub, self.rejoiner, self.events = nodes, hub, rejoiner, events
        self.config, self.sync_mode, self.sync_acks = config, sync_mode, sync_acks
        self.tries: dict[str, Tries] = {}
        self.degraded_since: float | None = None  # since when the cluster has been short of copies
        self._working: dict[str, asyncio.Task[Any]] = {}

    async def tick(self) -> None:
        topology, now = self.hub.current, time.time()
        self._track_redundancy(topology, now)
        seen = await asyncio.to_thread(self._look, topology)
        for s in seen:
            self.tries[s.name] = observed(self.tries.get(s.name, Tries()), s.alive, now, self.config)
            if s.name not in self._working:
                self._follow(s, plan(s, self.tries[s.name], now, self.config), topology.writer)

    def _look(self, topology: Topology) -> list[Seen]:
        """Blocking looks (files, /proc, the Docker API): run on a thread, never on the loop. A node the
        cluster no longer holds (being removed) is left out."""
        nodes = [n for n in topology.nodes if self.nodes.knows(n.name)]
        alive = {n.name: self._alive(n.name, n.health) for n in nodes}
        writer = topology.writer
        return [
            Seen(
                n.name,
                alive[n.name],
                self.nodes.held(n.name),
                self.nodes.usable(n.name),
                n.role,
                n.name == writer,
                bool(writer) and alive.get(writer or "", False),
                any(
                    a
                    for other, a in alive.items()
                    if other != n.name and topology.by_name[other].role is not Role.FENCED
                ),
                self.nodes.owns_files,
                "" if alive[n.name] else self.nodes.why_down(n.name),
            )
            for n in nodes
        ]

    def _alive(self, name: str, health: Health) -> bool:
        alive = self.nodes.alive(name)
        return health is not Health.UNREACHABLE if alive is None else alive

    def _follow(self, seen: Seen, decision: Plan, writer: str | None) -> None:
        if decision.step is Step.GIVE_UP:
            self.tries[seen.name] = replace(self.tries[seen.name], given_up=True)
            self.events.record(
                "heal_given_up",
                f"{seen.name} {seen.why_down}: {decision.reason}; giving up on it, "
                f"the rest of the cluster serves on: fix {seen.name} and start it, or remove it "
                "(`pgaurora replicas remove`)",
                node=seen.name,
                attempts=self.tries[seen.name].count,
            )
        elif decision.step in (Step.START, Step.REJOIN, Step.REBUILD):
            self._working[seen.name] = asyncio.get_running_loop().create_task(self._try(seen, decision, writer))

    async def _try(self, seen: Seen, decision: Plan, writer: str | None) -> None:
        name = seen.name
        attempt, began = self.tries[name].count + 1, time.monotonic()
        verb = {
            Step.START: "starting it again",
            Step.REJOIN: "rewinding it onto the writer's timeline",
            Step.REBUILD: f"rebuilding it from {writer}",
        }[decision.step]
        self.events.record(
            "heal",
            f"{name} {seen.why_down} ({decision.reason}); {verb} (attempt {attempt})",
            node=name,
            step=decision.step.value,
            attempt=attempt,
        )
        try:
            done = await self._act(name, decision, writer)
        except Exception as exc:  # one failed try: counted, backed off, tried again
            self.tries[name] = after_try(self.tries[name], decision.step, False, time.time(), self.config)
            self.events.record(
                "heal_failed",
                f"{name}: {decision.step.value} failed (attempt {attempt}): "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"[:400],
                node=name,
                step=decision.step.value,
                attempt=attempt,
            )
        else:
            self.tries[name] = after_try(
                self.tries[name],
                decision.step,
                True,
                time.time(),
                self.config,
                0.0 if self.nodes.owns_files else PROBE_GRACE,
            )
            self.events.record(
                "healed",
                f"{name} {done} in {time.monotonic() - began:.1f} s",
                node=name,
                step=decision.step.value,
                attempt=attempt,
                seconds=round(time.monotonic() - began, 2),
            )
        finally:
            self._working.pop(name, None)

    async def _act(self, name: str, decision: Plan, writer: str | None) -> str:
        if decision.step is Step.REJOIN:
            how = await self.rejoiner.rejoin_once(name, f"{decision.reason}: healing")
            return f"rewound onto the writer ({how}) and following {writer}"
        if decision.step is Step.REBUILD:
            await asyncio.to_thread(self.nodes.rebuild, name, writer or "")
            return f"rebuilt from {writer}"
        await asyncio.to_thread(self.nodes.start_node, name)
        return "started again"

    def _track_redundancy(self, topology: Topology, now: float) -> None:
        full = redundancy(topology, self.sync_mode, self.sync_acks).full
        self.degraded_since = None if full else self.degraded_since or now

    def document(self) -> dict[str, Any]:
        """For /status: the nodes being healed or given up on, and since when redundancy is short."""
        return {
            "degraded_since": self.degraded_since,
            "nodes": {
                name: {"tries": t.count, "given_up": t.given_up, "healing": name in self._working}
                for name, t in sorted(self.tries.items())
                if t.count or t.given_up or name in self._working
            },
        }

    async def stop(self) -> None:
        for task in list(self._working.values()):
            task.cancel()
        await asyncio.gather(*self._working.values(), return_exceptions=True)


class StartCommands:
    """Nodes pgaurora does not run (`proxy -c`): `[heal] commands` start them on their hosts; nothing else."""

    owns_files = False

    def __init__(self, commands: dict[str, str]) -> None:
        self.commands = commands

    def why_down(self, name: str) -> str:
        return "is unreachable"

    def knows(self, name: str) -> bool:
        return True

    def alive(self, name: str) -> bool | None:
        return None if name in self.commands else True  # a node without a command is not pgaurora's to start

    def held(self, name: str) -> bool:
        return False

    def usable(self, name: str) -> bool:
        return True

    def start_node(self, name: str) -> None:
        done = subprocess.run(
            self.commands[name], shell=True, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
        if done.returncode != 0:
            said = " / ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise RuntimeError(f"`{self.commands[name]}` exited {done.returncode}: {said[-300:]}")

    def rebuild(self, name: str, upstream: str) -> None:
        raise RuntimeError(f"pgaurora cannot rebuild {name} on its own host: rebuild it there")
