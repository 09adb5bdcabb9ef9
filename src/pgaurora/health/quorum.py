"""Quorum commit: the voters kept beside synchronous_standby_names, and the proof a promotion needs.

The invariant (after Patroni's quorum.py): every set of standbys that can acknowledge a commit must
overlap every set of standbys the monitor accepts as proof before promoting. pgaurora runs
`synchronous_standby_names = 'ANY k (S)'`, so a commit is acknowledged once k members of S have
flushed it (`[failover] sync_acks`, k = 1 by default; fewer when S has fewer members). The monitor keeps
the voters V in its durable state, with the number of acknowledgements p their proof relies on, and
promotes only when |V| - p + 1 voters answer: any k >= p members of S that hold a commit then include one
that answered, and the most advanced of those that answered holds every acknowledged commit. With p = 1
that is every voter; with p = 2, all but one. That holds while S is a subset of V and p <= k, so:

- widening: V grows first, S second;
- narrowing: S shrinks first, and V follows only once p of the remaining members have flushed everything
  the writer has written ("catch-up");
- fewer acknowledgements: p is lowered first (a stricter proof), then k;
- more acknowledgements: k is raised first, then p, after a catch-up of p members;
- emptying: V is cleared before S, for with no synchronous standby the primary acknowledges alone;
- V empty means nothing is proven (asynchronous commit, or right after a new writer was promoted):
  a failover is then bounded by failover.max_data_loss against the writer's last known position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

_ANY = re.compile(r"^\s*ANY\s+([1-9][0-9]*)\s*\((.*)\)\s*$", re.IGNORECASE)


def sync_names(members: Iterable[str], acks: int = 1) -> str:
    """synchronous_standby_names for these members, waiting for `acks` of them ('' for asynchronous commit)."""
    names = sorted(members)
    return f"ANY {min(acks, len(names))} ({', '.join(names)})" if names else ""


def parse_sync(value: str | None) -> tuple[frozenset[str], int] | None:
    """(members, acknowledgements) of 'ANY k (a, b)', or (empty, 0) for ''; None for any other form (set
    outside pgaurora, or waiting for more standbys than it names)."""
    if value is None:
        return None
    if not value.strip():
        return frozenset(), 0
    match = _ANY.match(value)
    if not match:
        return None
    members = frozenset(n.strip().strip('"') for n in match.group(2).split(",") if n.strip())
    acks = int(match.group(1))
    return (members, acks) if members and acks <= len(members) else None


def parse_sync_names(value: str | None) -> frozenset[str] | None:
    """The members of 'ANY k (a, b)' or '' (none); None for any other form."""
    parsed = parse_sync(value)
    return None if parsed is None else parsed[0]


def needed(voters: frozenset[str], proven: int) -> int:
    """How many voters must answer before a promotion: all but proven - 1 of them."""
    return max(0, len(voters) - proven + 1)


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
    acks: int  # SYNC: the acknowledgements commits wait for; VOTERS: those the proof relies on
    reason: str
    catch_up: bool = False  # VOTERS: only once `acks` of the new voters have everything the writer wrote


def holds(voters: frozenset[str], proven: int, sync: frozenset[str], acks: int) -> bool:
    """The invariant: every k standbys that can acknowledge include one of any |V| - p + 1 voters, or
    nothing is proven. With no synchronous standby the primary acknowledges alone: nothing is proven then."""
    return not voters or (bool(sync) and sync <= voters and 1 <= proven <= acks <= len(sync))


def next_step(
    voters: frozenset[str], proven: int, sync: frozenset[str], acks: int, wanted: frozenset[str], wanted_acks: int
) -> Step | None:
    """The next change toward (sync, acks) == (voters, proven) == (wanted, wanted_acks) that keeps holds()
    true; None when there."""
    if voters and not sync <= voters:
        return Step(
            StepKind.VOTERS,
            voters | sync,
            max(1, min(proven, acks)),
            f"{names(sync - voters)} can acknowledge commits but "
            f"{'is' if len(sync - voters) == 1 else 'are'} not voters; adding before anything else",
        )
    if voters and sync and proven > acks:
        return Step(
            StepKind.VOTERS,
            voters,
            acks,
            f"commits wait for {acks} acknowledgement{'s' * (acks != 1)}; the voters' proof relies on no more",
        )
    if (sync, acks) != (wanted, wanted_acks):
        return _toward_sync(voters, proven, wanted, wanted_acks)
    if (voters, proven) == (wanted, wanted_acks):
        return None
    leaving = voters - wanted
    why = (
        f"{names(leaving)} leave{'s' * (len(leaving) == 1)} the voters"
        if leaving
        else f"{names(wanted)} become{'s' * (len(wanted) == 1)} the voters"
        if voters != wanted
        else f"the voters' proof relies on {wanted_acks} acknowledgements"
    )
    if not wanted:  # voters left over beside an empty sync set (set outside pgaurora): cleared at once
        return Step(StepKind.VOTERS, frozenset(), 1, "no standby acknowledges commits; the voters are cleared")
    return Step(
        StepKind.VOTERS,
        wanted,
        wanted_acks,
        f"{why} once {_some_of(wanted_acks, wanted)} every commit the writer acknowledged so far",
        catch_up=True,
    )


def _some_of(count: int, members: frozenset[str]) -> str:
    """'n2 has', 'one of n2, n3 has', '2 of n2, n3, n4 have'."""
    if len(members) == 1:
        return f"{names(members)} has"
    return f"one of {names(members)} has" if count == 1 else f"{count} of {names(members)} have"


def _toward_sync(voters: frozenset[str], proven: int, wanted: frozenset[str], wanted_acks: int) -> Step:
    """The synchronous standbys are to change: first whatever the voters must do before, then the change."""
    if voters and not wanted:
        return Step(
            StepKind.VOTERS,
            frozenset(),
            1,
            "no standby will be left to acknowledge commits; the "
            "voters are cleared first (a failover is then bounded by failover.max_data_loss)",
        )
    if voters and not wanted <= voters:
        joining = wanted - voters
        return Step(
            StepKind.VOTERS,
            voters | joining,
            proven,
            f"{names(joining)} join{'s' * (len(joining) == 1)} the voters before the synchronous standbys",
        )
    if voters and wanted_acks < proven:
        return Step(
            StepKind.VOTERS,
            voters,
            wanted_acks,
            f"commits are to wait for {wanted_acks} acknowledgement{'s' * (wanted_acks != 1)}: the voters' "
            "proof relies on no more, first",
        )
    return Step(
        StepKind.SYNC,
        wanted,
        wanted_acks,
        f"synchronous standbys should be {sync_names(wanted, wanted_acks) or 'none'}",
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
    proven: int = 1,
    excuses: Mapping[str, str] | None = None,
) -> Verdict:
    """May candidate be promoted now? The voters' proof first, then the failover.max_data_loss bound.

    The bound compares the candidate with the most advanced position known (the writer's last probe, and
    the voters that answered); commits made after that probe are beyond what anyone can know.
    """
    if candidate is None:
        return Verdict(None, False, "no replica is reachable to promote")
    missing = sorted(v for v in voters if v not in replicas or not replicas[v].settled)
    answered = [replicas[v].lsn for v in voters if v not in missing]
    enough = needed(voters, proven)
    if voters and len(answered) >= enough and candidate.lsn >= max(answered):
        who = "every voter" if enough == len(voters) else f"{len(answered)} of the voters (at least {enough} must)"
        return Verdict(
            candidate.name,
            True,
            f"it has every acknowledged commit ({who} of ANY {proven} ({names(voters)}) answered, and it is at "
            "least as advanced as each)",
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
    short = enough - len(answered) if len(answered) < enough else 0
    return Verdict(
        candidate.name,
        False,
        _blocked(candidate.name, voters, proven, missing, short, bound, max_data_loss, excuses or {}),
    )


def _blocked(
    candidate: str,
    voters: frozenset[str],
    proven: int,
    missing: list[str],
    short: int,
    bound: int | None,
    max_data_loss: int,
    excuses: Mapping[str, str],
) -> str:
    way_out = f"or run `pgaurora failover --to {candidate} --accept-data-loss`"
    if short:
        unreachable = [v for v in missing if v not in excuses]
        verb = "is" if len(unreachable) == 1 else "are"
        why = [f"{names(unreachable)} {verb} unreachable"] if unreachable else []
        why += [f"{v} {excuses[v]}" for v in missing if v in excuses]
        wait = names(missing) if short == len(missing) else f"{short} of {names(missing)}"
        return (
            f"{'; '.join(why)}; {candidate} cannot prove it has every acknowledged "
            f"commit (quorum ANY {proven} of {names(voters)}); waiting for {wait}, {way_out}"
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
