"""decide(): a pure function of the monitor's memory and the latest probes, returning an action and why."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from ..core.config import SyncMode
from . import quorum
from .probe import NodeStatus


class Action(str, Enum):
    NONE = "none"
    WAIT = "wait"
    ELECT = "elect"  # adopt the one primary found at start
    PROMOTE = "promote"  # failover to a replica
    ADOPT = "adopt"  # another node was promoted outside the monitor
    FENCE = "fence"
    UNFENCE = "unfence"
    REJOIN = "rejoin"
    REPOINT = "repoint"
    SET_SYNC = "set_sync"
    SET_VOTERS = "set_voters"  # the durable half of quorum commit (see quorum.py)
    NO_CANDIDATE = "no_candidate"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    target: str | None = None
    value: str | None = None
    loss_bound: int | None = None  # PROMOTE: bytes the candidate may lack (0: proven to lack nothing)

    @property
    def node(self) -> str:
        """The node an action on one node acts on."""
        if self.target is None:
            raise ValueError(f"{self.action.value} names no node")
        return self.target


@dataclass(frozen=True, slots=True)
class ClusterState:
    """The monitor's memory between ticks; replaced whole by the monitor alone."""

    writer: str | None = None
    epoch: int = 0
    timeline: int | None = None  # the writer's last known timeline
    system_id: int | None = None
    failures: Mapping[str, int] = field(default_factory=dict)
    fenced: frozenset[str] = frozenset()
    voters: frozenset[str] = frozenset()  # durable: the standbys whose answers prove a promotion safe
    proven: int = 1  # durable: the acknowledgements the voters' proof relies on (all but proven-1 must answer)
    drained: frozenset[str] = frozenset()  # durable: replicas an operator took out of the reader endpoint
    writer_lsn: int | None = None  # the writer's position at its last successful probe (not durable)
    timelines: Mapping[str, int] = field(default_factory=dict)  # durable: the newest timeline each replica was
    # seen on; a replica whose WAL receiver stopped (its writer died) reports its last restartpoint's, maybe older
    stuck: Mapping[str, int] = field(default_factory=dict)  # probes a replica spent on an older timeline than
    # the writer's without streaming (not durable): one that outlived its writer may hold WAL the new one lacks


@dataclass(frozen=True, slots=True)
class Policy:
    """The parts of the configuration that decide() reads."""

    addresses: Mapping[str, tuple[str, int]]
    priorities: Mapping[str, int] = field(default_factory=dict)
    failure_threshold: int = 3
    failover: bool = True
    sync_mode: SyncMode = SyncMode.QUORUM
    sync_acks: int = 1  # k: commits wait for k synchronous standbys (ANY k)
    auto_rejoin: bool = False  # only when the monitor controls the nodes (compose)
    max_data_loss: int = 0  # bytes a failover may lose when nothing proves it loses none
    witness_window: float = 1.5  # a replica vouches for the writer if it heard from it this recently
    leaving: frozenset[str] = frozenset()  # replicas being removed: out of synchronous replication first
    stuck_after: int = 20  # probes on an older timeline without streaming before a replica is rewound

    @property
    def synchronous(self) -> bool:
        return self.sync_mode is not SyncMode.OFF


def decide(state: ClusterState, statuses: Mapping[str, NodeStatus], policy: Policy) -> Decision:
    if state.writer is None:
        return _elect(state, statuses)
    writer = statuses[state.writer]
    if writer.is_primary:
        return _maintain(state, statuses, policy)
    adopted = _adoptable(state, statuses)
    if adopted is not None:
        return Decision(
            Action.ADOPT,
            f"{adopted.name} was promoted outside pgaurora (timeline "
            f"{adopted.timeline}) while writer {state.writer} is not primary; following it",
            target=adopted.name,
        )
    if writer.is_replica:
        return Decision(Action.WAIT, f"writer {state.writer} is in recovery and no other node is primary")
    return _writer_down(state, statuses, policy)


def _elect(state: ClusterState, statuses: Mapping[str, NodeStatus]) -> Decision:
    primaries = [s for s in statuses.values() if s.is_primary and s.name not in state.fenced]
    if not primaries:
        seen = (
            "no node reachable" if not any(s.reachable for s in statuses.values()) else "no node reports being primary"
        )
        return Decision(Action.WAIT, f"{seen}; no writer yet")
    best = max(primaries, key=lambda s: (s.timeline or 0, s.wal_position))
    if len(primaries) == 1:
        return Decision(Action.ELECT, f"{best.name} is the only primary; electing it writer", target=best.name)
    others = ", ".join(s.name for s in primaries if s is not best)
    return Decision(
        Action.ELECT,
        f"{best.name} has the highest timeline ({best.timeline}) of the primaries; "
        f"electing it writer and fencing {others}",
        target=best.name,
    )


def _adoptable(state: ClusterState, statuses: Mapping[str, NodeStatus]) -> NodeStatus | None:
    newer = [
        s
        for s in statuses.values()
        if s.is_primary
        and s.name != state.writer
        and s.name not in state.fenced
        and (s.timeline or 0) > (state.timeline or 0)
        and (state.system_id is None or s.system_id == state.system_id)
    ]
    return max(newer, key=lambda s: (s.timeline or 0, s.wal_position), default=None)


def known_writer(state: ClusterState) -> str:
    """The writer, where the caller has established that there is one."""
    if state.writer is None:
        raise ValueError("no writer is known")
    return state.writer


def _writer_down(state: ClusterState, statuses: Mapping[str, NodeStatus], policy: Policy) -> Decision:
    name = known_writer(state)
    writer = statuses[name]
    fails = state.failures.get(name, 0)
    if fails < policy.failure_threshold:
        return Decision(
            Action.WAIT, f"writer {name} unreachable ({fails}/{policy.failure_threshold} probes): {writer.error}"
        )
    if not policy.failover:
        return Decision(Action.NONE, f"writer {name} is down and automatic failover is disabled")
    witnesses = hearing_writer(state, statuses, policy)
    if witnesses:
        return Decision(
            Action.NONE,
            f"writer {name} is unreachable from the monitor, but "
            f"{', '.join(witnesses)} still receive from it; no failover",
        )
    verdict = promotion_verdict(state, statuses, policy)
    if not verdict.safe:
        return Decision(Action.NO_CANDIDATE, f"writer {name} is down; {verdict.proof}", target=verdict.candidate)
    candidate = statuses[verdict.candidate or ""]  # safe verdicts name one
    return Decision(
        Action.PROMOTE,
        f"writer {name} unreachable for {fails} probes; promoting "
        f"{candidate.name} (WAL at {lsn(candidate.wal_position)}): {verdict.proof}",
        target=candidate.name,
        loss_bound=verdict.loss_bound,
    )


def hearing_writer(state: ClusterState, statuses: Mapping[str, NodeStatus], policy: Policy) -> list[str]:
    """Replicas that stream from the writer and received something from it within the witness window."""
    host, port = policy.addresses[known_writer(state)]
    return [
        s.name
        for s in statuses.values()
        if s.is_replica and s.streams_from(host, port) and s.heard_within(policy.witness_window)
    ]


def promotion_verdict(
    state: ClusterState,
    statuses: Mapping[str, NodeStatus],
    policy: Policy,
    target: str | None = None,
    forced: bool = False,
) -> quorum.Verdict:
    """May the best replica (or target) be promoted without losing an acknowledged commit? See quorum.judge."""
    pool = {s.name: s for s in _eligible(state, statuses)}
    if target is not None and target not in pool:
        return quorum.Verdict(target, False, f"{target} is not a reachable replica of this cluster")
    best = pool.get(target) if target else choose_candidate(state, statuses, policy)
    replicas = {n: quorum.Position(n, s.wal_position, s.position_settled) for n, s in pool.items()}
    return quorum.judge(
        replicas.get(best.name) if best else None,
        replicas,
        state.voters,
        state.writer_lsn,
        policy.max_data_loss,
        policy.synchronous,
        forced,
        state.proven,
        _excuses(state, statuses, pool),
    )


def _excuses(state: ClusterState, statuses: Mapping[str, NodeStatus], pool: Mapping[str, NodeStatus]) -> dict[str, str]:
    """Why a voter that answered cannot vouch (those that did not answer are simply unreachable)."""
    excuses = {}
    for name in state.voters:
        s = statuses.get(name)
        if s is None or not s.reachable:
            continue
        if name in pool and not s.position_settled:
            excuses[name] = "is still replaying the WAL it holds (it has not asked to stream yet)"
        elif name in state.fenced:
            excuses[name] = "is fenced"
        elif not s.is_replica:
            excuses[name] = "is not a replica"
        elif state.system_id is not None and s.system_id != state.system_id:
            excuses[name] = "belongs to another cluster (system identifier)"
        elif behind_timeline(state, s):
            excuses[name] = f"is on timeline {s.timeline}, older than the writer's {state.timeline} (a rewind is due)"
    return excuses


def _eligible(state: ClusterState, statuses: Mapping[str, NodeStatus]) -> list[NodeStatus]:
    """Replicas a promotion may choose, and whose answers count as a voter's. Not one on an older timeline
    than the writer's: it has not followed the writer's history (it may have outlived an older writer with
    WAL nobody else has), so its position says nothing of what the writer acknowledged."""
    return [
        s
        for s in statuses.values()
        if s.is_replica
        and s.name != state.writer
        and s.name not in state.fenced
        and (state.system_id is None or s.system_id == state.system_id)
        and not behind_timeline(state, s)
    ]


def behind_timeline(state: ClusterState, status: NodeStatus) -> bool:
    """Is this replica on an older timeline than the writer's (as far as the monitor knows both)? Its own
    report, or the newest it was seen on: once it has streamed a timeline it holds that history."""
    known = max(status.timeline or 0, state.timelines.get(status.name, 0))
    return state.timeline is not None and known > 0 and known < state.timeline


def choose_candidate(state: ClusterState, statuses: Mapping[str, NodeStatus], policy: Policy) -> NodeStatus | None:
    """The reachable replica with the most WAL; ties: most replayed, then highest priority."""
    return max(
        _eligible(state, statuses),
        key=lambda s: (s.wal_position, s.replay_lsn or -1, policy.priorities.get(s.name, 0)),
        default=None,
    )


def _maintain(state: ClusterState, statuses: Mapping[str, NodeStatus], policy: Policy) -> Decision:
    for check in (_fence_rivals, _unfence_followers, _repoint_strays, _rewind_stuck, _sync_standbys):
        decision = check(state, statuses, policy)
        if decision is not None:
            return decision
    readers = sum(1 for s in statuses.values() if s.is_replica and s.name not in state.fenced)
    return Decision(Action.NONE, f"writer {state.writer} healthy; {readers} replica(s) reachable")


def _fence_rivals(state: ClusterState, statuses: Mapping[str, NodeStatus], policy: Policy) -> Decision | None:
    for s in statuses.values():
        if not s.is_primary or s.name == state.writer:
            continue
        if s.name not in state.fenced:
            return Decision(
                Action.FENCE,
                f"{s.name} claims to be primary (timeline {s.timeline}) but "
                f"{state.writer} is the elected writer (epoch {state.epoch}); "
                f"fencing {s.name}",
                target=s.name,
            )
        if policy.auto_rejoin:
            return Decision(
                Action.REJOIN,
                f"fenced {s.name} is up as a primary; rejoining it as a replica of {state.writer}",
                target=s.name,
            )
    return None


def _rewind_stuck(state: ClusterState, statuses: Mapping[str, NodeStatus], policy: Policy) -> Decision | None:
    """A replica that stays on an older timeline than the writer's without streaming cannot follow: it holds
    WAL past the point where the writer's timeline began (it outlived an older writer, or was killed with it).
    pg_rewind brings it onto the writer's history (or re-clones it)."""
    if not policy.auto_rejoin:
        return None
    for name in sorted(state.stuck):
        if state.stuck[name] >= policy.stuck_after and name not in state.fenced:
            s = statuses.get(name)
            return Decision(
                Action.REJOIN,
                f"{name} has stayed on timeline {s.timeline if s else '?'}, older than writer {state.writer}'s "
                f"{state.timeline}, without streaming for {state.stuck[name]} probes: it may hold WAL the writer "
                "lacks; rewinding it onto the writer's timeline",
                target=name,
            )
    return None


def _unfence_followers(state: ClusterState, statuses: Mapping[str, NodeStatus], policy: Policy) -> Decision | None:
    host, port = policy.addresses[known_writer(state)]
    for name in sorted(state.fenced):
        s = statuses.get(name)
        if s is not None and s.is_replica and s.streams_from(host, port):
            return Decision(Action.UNFENCE, f"{name} now streams from writer {state.writer}; unfencing it", target=name)
    return None


def _repoint_strays(state: ClusterState, statuses: Mapping[str, NodeStatus], policy: Policy) -> Decision | None:
    host, port = policy.addresses[known_writer(state)]
    for s in statuses.values():
        if s.is_replica and s.name not in state.fenced and (s.conninfo_host, s.conninfo_port) != (host, port):
            return Decision(
                Action.REPOINT,
                f"{s.name} replicates from {s.conninfo_host}:{s.conninfo_port}, "
                f"not writer {state.writer}; re-pointing it",
                target=s.name,
            )
    return None


def wanted_sync(state: ClusterState, statuses: Mapping[str, NodeStatus], policy: Policy) -> frozenset[str] | None:
    """The synchronous standbys the writer should have, or None when the monitor leaves them alone."""
    if not policy.synchronous:
        return None
    standbys = [n for n in policy.addresses if n != state.writer and n not in state.fenced | policy.leaving]
    alive = [
        n
        for n in standbys
        if state.failures.get(n, 0) < policy.failure_threshold and statuses.get(n) is not None and statuses[n].reachable
    ]
    if policy.sync_mode is SyncMode.STRICT and len(alive) < min(policy.sync_acks, len(standbys)):
        return frozenset(standbys)  # strict: commits wait until k standbys are back, rather than need fewer
    return frozenset(alive)


def wanted_acks(wanted: frozenset[str], policy: Policy) -> int:
    """The acknowledgements commits should wait for: sync_acks, or every wanted standby when there are fewer."""
    return min(policy.sync_acks, len(wanted))


def desired_sync_names(state: ClusterState, statuses: Mapping[str, NodeStatus], policy: Policy) -> str | None:
    """synchronous_standby_names the writer should have, or None when the monitor leaves it alone."""
    wanted = wanted_sync(state, statuses, policy)
    return None if wanted is None else quorum.sync_names(wanted, wanted_acks(wanted, policy))


def _sync_standbys(state: ClusterState, statuses: Mapping[str, NodeStatus], policy: Policy) -> Decision | None:
    wanted = wanted_sync(state, statuses, policy)
    if wanted is None:
        return None
    current = statuses[known_writer(state)].sync_names
    parsed = quorum.parse_sync(current)
    if parsed is None:  # a form pgaurora does not write: any standby might have acknowledged, any one alone
        parsed = frozenset(n for n in policy.addresses if n != state.writer), 1
    sync, acks = parsed
    step = quorum.next_step(state.voters, state.proven, sync, acks, wanted, wanted_acks(wanted, policy))
    if step is None:
        return None
    if step.kind is quorum.StepKind.VOTERS:
        return Decision(Action.SET_VOTERS, step.reason, target=state.writer, value=voters_value(step.value, step.acks))
    value = quorum.sync_names(step.value, step.acks)
    why = step.reason if value else "no synchronous standby is left; sync_mode=quorum degrades to asynchronous commit"
    return Decision(Action.SET_SYNC, f"{why} (was {current!r})", target=state.writer, value=value)


def voters_value(voters: frozenset[str], proven: int) -> str:
    """A SET_VOTERS decision's value: 'p:a,b' (the acknowledgements the proof relies on, then the voters)."""
    return f"{proven}:{','.join(sorted(voters))}"


def parse_voters_value(value: str | None) -> tuple[frozenset[str], int]:
    """The voters and proven of a SET_VOTERS decision's value."""
    proven, _, members = (value or "1:").partition(":")
    return frozenset(filter(None, members.split(","))), max(1, int(proven))


def lsn(value: int | None) -> str:
    """An LSN in PostgreSQL's X/X notation."""
    if value is None or value < 0:
        return "unknown"
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
