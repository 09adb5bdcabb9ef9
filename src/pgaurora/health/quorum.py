"""Quorum commit: the voters kept beside synchronous_standby_names, and the proof a promotion needs.

The invariant (after Patroni's quorum.py): every set of standbys that can acknowledge a commit must
overlap every set of standbys the monitor accepts as proof before promoting. pgaurora runs
`synchronous_standby_names = 'ANY 1 (S)'`, so a commit is acknowledged once one member of S has
flushed it. The monitor keeps the voters V in its durable state and promotes only when every voter
is reachable: the most advanced replica then holds every acknowledged commit. That holds while S is a
subset of V, so:

- widening: V grows first, S second;
- narrowing: S shrinks first, and V follows only once a remaining member has flushed everything the
  writer had when the smaller S took effect ("catch-up");
- emptying: V is cleared before S, for with no synchronous standby the primary acknowledges alone;
- V empty means nothing is proven (asynchronous commit, or right after a new writer was promoted):
  a failover is then bounded by failover.max_data_loss against the writer's last known position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

_ANY_ONE = re.compile(r"^\s*ANY\s+1\s*\((.*)\)\s*$", re.IGNORECASE)


def sync_names(members: Iterable[str]) -> str:
    """synchronous_standby_names for these members ('' for asynchronous commit)."""
    names = sorted(members)
    return f"ANY 1 ({', '.join(names)})" if names else ""


def parse_sync_names(value: str | None) -> frozenset[str] | None:
    """The members of 'ANY 1 (a, b)' or '' (none); None for any other form (set outside pgaurora)."""
    if value is None:
        return None
    if not value.strip():
        return frozenset()
    match = _ANY_ONE.match(value)
    if not match:
        return None
    return frozenset(n.strip().strip('"') for n in match.group(1).split(",") if n.strip())


def names(members: Iterable[str]) -> str:
    return ", ".join(sorted(members)) or "none"


class StepKind(str, Enum):
    VOTERS = "voters"
    SYNC = "sync"


@dataclass(frozen=True, slots=True)
class Step:
    """One change of one of the two pairs; `catch_up` says it may happen only after a member caught up."""

    kind: StepKind
    value: frozenset[str]
    reason: str
    catch_up: bool = False


def holds(voters: frozenset[str], sync: frozenset[str]) -> bool:
    """The invariant: every standby that can acknowledge is a voter, or nothing is proven. With no
    synchronous standby the primary acknowledges alone, so nothing can be proven then."""
    return not voters or (bool(sync) and sync <= voters)


def next_step(voters: frozenset[str], sync: frozenset[str], wanted: frozenset[str]) -> Step | None:
    """The next change toward sync == voters == wanted that keeps holds() true; None when there."""
    if voters and not sync <= voters:
        return Step(
            StepKind.VOTERS,
            voters | sync,
            f"{names(sync - voters)} can acknowledge commits but "
            f"{'is' if len(sync - voters) == 1 else 'are'} not voters; adding before anything else",
        )
    if sync != wanted:
        if voters and not wanted:
            return Step(
                StepKind.VOTERS,
                frozenset(),
                "no standby will be left to acknowledge commits; the "
                "voters are cleared first (a failover is then bounded by failover.max_data_loss)",
            )
        if voters and not wanted <= voters:
            joining = wanted - voters
            return Step(
                StepKind.VOTERS,
                voters | joining,
                f"{names(joining)} join{'s' * (len(joining) == 1)} the voters before the synchronous standbys",
            )
        return Step(StepKind.SYNC, wanted, f"synchronous standbys should be {sync_names(wanted) or 'none'}")
    if voters == wanted:
        return None
    leaving = voters - wanted
    why = (
        f"{names(leaving)} leave{'s' * (len(leaving) == 1)} the voters"
        if leaving
        else f"{names(wanted)} become{'s' * (len(wanted) == 1)} the voters"
    )
    return Step(
        StepKind.VOTERS,
        wanted,
        f"{why} once {names(wanted)} has every commit the writer acknowledged so far",
        catch_up=True,
    )


@dataclass(frozen=True, slots=True)
class Position:
    """What promotion needs to know of a replica: how far its flushed WAL goes, and whether that is settled."""

    name: str
    lsn: int
    settled: bool = True  # False while a restarted standby may still be replaying WAL it holds


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether promoting `candidate` can be shown to lose nothing, or loses at most `loss_bound` bytes."""

    candidate: str | None
    safe: bool
    proof: str
    loss_bound: int | None = None  # bytes; 0 when proven; None when unknown


def judge(
    candidate: Position | None,
    replicas: dict[str, Position],
    voters: frozenset[str],
    writer_lsn: int | None,
    max_data_loss: int,
    synchronous: bool,
    forced: bool = False,
) -> Verdict:
    """May candidate be promoted now? The voters' proof first, then the failover.max_data_loss bound.

    The bound compares the candidate with the most advanced position known (the writer's last probe, and
    the voters that answered); commits made after that probe are beyond what anyone can know.
    """
    if candidate is None:
        return Verdict(None, False, "no replica is reachable to promote")
    missing = sorted(v for v in voters if v not in replicas or not replicas[v].settled)
    answered = [replicas[v].lsn for v in voters if v not in missing]
    if voters and not missing and candidate.lsn >= max(answered):
        return Verdict(
            candidate.name,
            True,
            f"it has every acknowledged commit (every voter of ANY 1 "
            f"({names(voters)}) answered, and it is at least as advanced as each)",
            0,
        )
    known = max([-1 if writer_lsn is None else writer_lsn, *answered])
    bound = None if known < 0 else max(0, known - candidate.lsn)
    if forced:
        return Verdict(candidate.name, True, "forced with --accept-data-loss", bound)
    if bound is not None and bound <= max_data_loss and (max_data_loss > 0 or not synchronous):
        return Verdict(
            candidate.name,
            True,
            f"{bound} bytes behind the last known position, within failover.max_data_loss ({max_data_loss})",
            bound,
        )
    return Verdict(candidate.name, False, _blocked(candidate.name, voters, missing, bound, max_data_loss))


def _blocked(candidate: str, voters: frozenset[str], missing: list[str], bound: int | None, max_data_loss: int) -> str:
    way_out = f"or run `pgaurora failover --to {candidate} --accept-data-loss`"
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        return (
            f"{names(missing)} {verb} unreachable; {candidate} cannot prove it has every acknowledged "
            f"commit (quorum ANY 1 of {names(voters)}); waiting for {names(missing)}, {way_out}"
        )
    if voters:
        return f"{candidate} is {bound} bytes behind a voter; waiting for that voter to be promotable, {way_out}"
    behind = (
        "the writer's last position is unknown"
        if bound is None
        else f"it is {bound} bytes behind the writer's last known position (failover.max_data_loss {max_data_loss})"
    )
    return (
        f"no voters prove what {candidate} holds (the synchronous standbys had not caught up) and {behind}; "
        f"waiting for the writer, {way_out}"
    )
