"""Quorum commit: the transition table, the promotion proof, and a model that hunts for a lost commit."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgaurora.core.config import SyncMode
from pgaurora.health.decide import Action, ClusterState, Policy, decide, parse_voters_value
from pgaurora.health.probe import NodeStatus
from pgaurora.health.quorum import (
    Position,
    StepKind,
    holds,
    judge,
    next_step,
    parse_sync,
    parse_sync_names,
    sync_names,
)

F = frozenset


@pytest.mark.parametrize(
    "voters, sync, wanted, kind, value, catch_up",
    [
        # at rest
        (F("ab"), F("ab"), F("ab"), None, None, False),
        # a standby returns: it becomes a voter before it can acknowledge
        (F("a"), F("a"), F("ab"), StepKind.VOTERS, F("ab"), False),
        (F("ab"), F("a"), F("ab"), StepKind.SYNC, F("ab"), False),
        # a standby dies: the sync set shrinks first, the voters after a catch-up
        (F("ab"), F("ab"), F("a"), StepKind.SYNC, F("a"), False),
        (F("ab"), F("a"), F("a"), StepKind.VOTERS, F("a"), True),
        # the last standby dies: nothing is proven any more, and then commits go asynchronous (in that order:
        # the other way round, a commit acknowledged by the primary alone would look proven for a tick)
        (F("a"), F("a"), F(), StepKind.VOTERS, F(), False),
        (F(), F("a"), F(), StepKind.SYNC, F(), False),
        # from nothing proven (a new writer, or asynchronous): sync first, then voters after a catch-up
        (F(), F(), F("ab"), StepKind.SYNC, F("ab"), False),
        (F(), F("ab"), F("ab"), StepKind.VOTERS, F("ab"), True),
        # one standby swapped for another: widen the voters, then the sync set, then narrow after catch-up
        (F("ab"), F("ab"), F("bc"), StepKind.VOTERS, F("abc"), False),
        (F("abc"), F("ab"), F("bc"), StepKind.SYNC, F("bc"), False),
        (F("abc"), F("bc"), F("bc"), StepKind.VOTERS, F("bc"), True),
        # someone else widened the sync set: the voters cover it before anything else happens
        (F("a"), F("ac"), F("a"), StepKind.VOTERS, F("ac"), False),
    ],
)
def test_transition_table_with_one_acknowledgement(voters, sync, wanted, kind, value, catch_up):
    acks = lambda members: min(1, len(members))  # noqa: E731
    step = next_step(voters, 1, sync, acks(sync), wanted, acks(wanted))
    if kind is None:
        assert step is None
        return
    assert (step.kind, step.value, step.catch_up) == (kind, value, catch_up)
    assert step.reason
    if step.kind is StepKind.SYNC:
        assert holds(voters, 1, step.value, step.acks), "a sync change must never outrun the voters"


@pytest.mark.parametrize(
    "voters, proven, sync, acks, wanted, wanted_acks, step",
    [
        # at rest with k = 2
        (F("abc"), 2, F("abc"), 2, F("abc"), 2, None),
        # k raised from 1 to 2: commits first, then the proof, after two voters caught up
        (F("abc"), 1, F("abc"), 1, F("abc"), 2, (StepKind.SYNC, F("abc"), 2, False)),
        (F("abc"), 1, F("abc"), 2, F("abc"), 2, (StepKind.VOTERS, F("abc"), 2, True)),
        # k lowered from 2 to 1: the proof first (stricter at once), then commits
        (F("abc"), 2, F("abc"), 2, F("abc"), 1, (StepKind.VOTERS, F("abc"), 1, False)),
        (F("abc"), 1, F("abc"), 2, F("abc"), 1, (StepKind.SYNC, F("abc"), 1, False)),
        # k = 2 and a standby dies, two left: still 2 acknowledgements, the voters narrow after two caught up
        (F("abc"), 2, F("abc"), 2, F("ab"), 2, (StepKind.SYNC, F("ab"), 2, False)),
        (F("abc"), 2, F("ab"), 2, F("ab"), 2, (StepKind.VOTERS, F("ab"), 2, True)),
        # k = 2 and only one standby is left: the proof relies on one acknowledgement first, then commits wait
        # for that one, then the voters narrow
        (F("ab"), 2, F("ab"), 2, F("a"), 1, (StepKind.VOTERS, F("ab"), 1, False)),
        (F("ab"), 1, F("ab"), 2, F("a"), 1, (StepKind.SYNC, F("a"), 1, False)),
        (F("ab"), 1, F("a"), 1, F("a"), 1, (StepKind.VOTERS, F("a"), 1, True)),
        # a proof relying on more acknowledgements than commits wait for is repaired first
        (F("ab"), 2, F("ab"), 1, F("ab"), 1, (StepKind.VOTERS, F("ab"), 1, False)),
        # voters left beside an empty sync set (set outside pgaurora), no standby wanted: cleared, p stays >= 1
        (F("ab"), 2, F(), 0, F(), 0, (StepKind.VOTERS, F(), 1, False)),
    ],
)
def test_transition_table_with_k_acknowledgements(voters, proven, sync, acks, wanted, wanted_acks, step):
    got = next_step(voters, proven, sync, acks, wanted, wanted_acks)
    if step is None:
        assert got is None
        return
    assert (got.kind, got.value, got.acks, got.catch_up) == step, got.reason
    if got.kind is StepKind.SYNC:
        assert holds(voters, proven, got.value, got.acks), "a sync change must never outrun the voters"


def test_sync_names_round_trip_and_foreign_forms():
    assert sync_names({"n3", "n2"}) == "ANY 1 (n2, n3)" and sync_names(()) == ""
    assert sync_names({"n3", "n2", "n4"}, 2) == "ANY 2 (n2, n3, n4)" and sync_names({"n2"}, 3) == "ANY 1 (n2)"
    assert parse_sync_names("ANY 1 (n2, n3)") == F({"n2", "n3"})
    assert parse_sync("ANY 2 (n2, n3)") == (F({"n2", "n3"}), 2) and parse_sync("") == (F(), 0)
    assert parse_sync_names("") == F()
    assert parse_sync_names("FIRST 2 (n2, n3)") is None and parse_sync_names("*") is None
    assert parse_sync("ANY 3 (n2, n3)") is None  # waits for more standbys than it names: not pgaurora's


def test_judge_needs_every_voter_and_reports_the_known_bound():
    replicas = {"n2": Position("n2", 900), "n3": Position("n3", 700)}
    ok = judge(replicas["n2"], replicas, F({"n2", "n3"}), 1000, 0, True)
    assert (ok.safe, ok.loss_bound) == (True, 0)
    alone = {"n3": replicas["n3"]}
    blocked = judge(alone["n3"], alone, F({"n2", "n3"}), 1000, 0, True)
    assert not blocked.safe and "n2 is unreachable" in blocked.proof
    forced = judge(alone["n3"], alone, F({"n2", "n3"}), 1000, 0, True, forced=True)
    assert (forced.safe, forced.loss_bound) == (True, 300)
    unsettled = {**replicas, "n2": Position("n2", 900, settled=False)}
    assert not judge(unsettled["n2"], unsettled, F({"n2", "n3"}), 1000, 0, True).safe


def test_judge_with_two_acknowledgements_needs_all_voters_but_one():
    voters = F({"n2", "n3", "n4"})
    replicas = {"n2": Position("n2", 900), "n3": Position("n3", 800)}  # n4 lost with the writer
    ok = judge(replicas["n2"], replicas, voters, 1000, 0, True, proven=2)
    assert (ok.safe, ok.loss_bound) == (True, 0) and "2 of the voters (at least 2 must)" in ok.proof
    behind = judge(replicas["n3"], replicas, voters, 1000, 0, True, proven=2)
    assert not behind.safe  # n2 answered with more: n3 may lack what n2 and n4 acknowledged
    alone = {"n2": replicas["n2"]}
    blocked = judge(alone["n2"], alone, voters, 1000, 0, True, proven=2)
    assert not blocked.safe and "quorum ANY 2 of n2, n3, n4" in blocked.proof
    assert "waiting for 1 of n3, n4" in blocked.proof


# -- the model -------------------------------------------------------------------------------------
ALL_STANDBYS = ("n2", "n3", "n4", "n5", "n6")
STANDBYS = ALL_STANDBYS[:4]  # the default model; the loss hunt draws 1 to 5 of them
ADDRESSES = {n: (f"127.0.0.{i + 11}", 5432) for i, n in enumerate(("n1", *ALL_STANDBYS))}


@dataclass
class Model:
    """Commits are numbered 1..log; a standby holds a prefix of them (WAL is linear). Commits wait for k
    synchronous standbys (ANY k), or for every one of them when fewer are named."""

    mode: SyncMode
    k: int = 1
    standbys: tuple = STANDBYS
    log: int = 0
    acked: int = 0  # every commit up to here was acknowledged to a client
    pos: dict = field(default_factory=dict)
    up: dict = field(default_factory=dict)
    sync: frozenset = frozenset()
    acks: int = 1
    state: ClusterState = field(default_factory=ClusterState)

    def __post_init__(self) -> None:
        self.pos = {n: 0 for n in self.standbys}
        self.up = {n: True for n in self.standbys}
        self.sync = frozenset(self.standbys)
        voters = frozenset(self.standbys)
        self.state = ClusterState(writer="n1", epoch=1, timeline=1, system_id=1, voters=voters)

    @property
    def policy(self) -> Policy:
        addresses = {n: ADDRESSES[n] for n in ("n1", *self.standbys)}
        return Policy(addresses=addresses, failure_threshold=1, sync_mode=self.mode, sync_acks=self.k)

    def release(self) -> None:
        """A waiting commit returns once `acks` synchronous standbys have it, or at once without any."""
        if not self.sync:
            self.acked = self.log
        else:
            held = sorted((self.pos[n] for n in self.sync), reverse=True)
            self.acked = max(self.acked, held[self.acks - 1])

    def commit(self) -> None:
        self.log += 1
        self.release()

    def replicate(self, name: str, count: int) -> None:
        if self.up[name]:
            self.pos[name] = min(self.log, self.pos[name] + count)
            self.release()

    def statuses(self, writer_up: bool) -> dict:
        out = {
            "n1": NodeStatus(
                "n1",
                True,
                in_recovery=False,
                current_lsn=self.log,
                timeline=1,
                system_id=1,
                sync_names=sync_names(self.sync, self.acks),
            )
            if writer_up
            else NodeStatus.unknown("n1", "down")
        }
        for n in self.standbys:
            out[n] = (
                NodeStatus(
                    n,
                    True,
                    in_recovery=True,
                    receive_lsn=self.pos[n],
                    replay_lsn=self.pos[n],
                    timeline=1,
                    system_id=1,
                    conninfo_host=ADDRESSES["n1"][0],  # streaming from the writer: the model is about quorum
                    conninfo_port=ADDRESSES["n1"][1],
                )
                if self.up[n]
                else NodeStatus.unknown(n, "down")
            )
        return out

    def tick(self) -> None:
        """One monitor tick with the writer alive: at most one quorum step, applied as the monitor would."""
        failures = {n: 0 if self.up[n] else 1 for n in self.standbys}
        self.state = replace(self.state, failures=failures, writer_lsn=self.log)
        d = decide(self.state, self.statuses(True), self.policy)
        if d.action is Action.SET_SYNC:
            self.sync, self.acks = parse_sync(d.value)
            self.release()
        elif d.action is Action.SET_VOTERS:
            voters, proven = parse_voters_value(d.value)
            stricter = self.state.voters and voters >= self.state.voters and proven <= self.state.proven
            caught = sum(1 for n in voters if self.up[n] and self.pos[n] >= self.log) >= proven  # actions.caught_up
            if not voters or stricter or caught:
                self.state = replace(self.state, voters=voters, proven=proven)

    def promotion_after_writer_dies(self) -> str | None:
        failures = {"n1": 1, **{n: 0 if self.up[n] else 1 for n in self.standbys}}
        d = decide(replace(self.state, failures=failures), self.statuses(False), self.policy)
        return d.target if d.action is Action.PROMOTE else None


OPS = st.one_of(
    st.tuples(st.just("commit"), st.just(""), st.just(0)),
    st.tuples(st.just("replicate"), st.sampled_from(ALL_STANDBYS), st.integers(1, 3)),
    st.tuples(st.just("fail"), st.sampled_from(ALL_STANDBYS), st.just(0)),
    st.tuples(st.just("recover"), st.sampled_from(ALL_STANDBYS), st.just(0)),
    st.tuples(st.just("tick"), st.just(""), st.just(0)),
    st.tuples(st.just("retune"), st.just(""), st.integers(1, 3)),
)


def _run(model: Model, ops: list) -> None:
    for op, name, count in ops:
        if name and name not in model.standbys:
            continue  # drawn for a larger cluster than this one
        if op == "commit":
            model.commit()
        elif op == "replicate":
            model.replicate(name, count)
        elif op == "fail":
            model.up[name] = False
        elif op == "recover":
            model.up[name] = True
        elif op == "retune":  # a reload changes sync_acks
            model.k = count
        else:
            model.tick()
        assert holds(model.state.voters, model.state.proven, model.sync, model.acks), "invariant broken"


@settings(max_examples=1500, deadline=None)
@given(
    mode=st.sampled_from([SyncMode.QUORUM, SyncMode.STRICT]),
    k=st.integers(1, 3),
    count=st.integers(1, len(ALL_STANDBYS)),
    ops=st.lists(OPS, max_size=80),
    returning=st.lists(st.sampled_from(ALL_STANDBYS), unique=True),
)
def test_no_promotion_the_monitor_allows_loses_an_acknowledged_commit(mode, k, count, ops, returning):
    """Random commits, standby failures and recoveries, changes of k, monitor ticks, on 1 to 5 standbys; then
    the primary dies and some standbys come back. Whatever decide() promotes must hold every acknowledged
    commit."""
    model = Model(mode, k, ALL_STANDBYS[:count])
    _run(model, ops)
    for name in returning:
        if name in model.standbys:
            model.up[name] = True
    target = model.promotion_after_writer_dies()
    if target is not None:
        assert model.pos[target] >= model.acked, (
            f"promoted {target} at {model.pos[target]} but commits up to {model.acked} were acknowledged"
        )


@settings(max_examples=300, deadline=None)
@given(
    k=st.integers(1, 3),
    commits=st.integers(1, 20),
    lagging=st.lists(st.sampled_from(STANDBYS), unique=True, max_size=2),
    data=st.data(),
)
def test_with_k_acknowledgements_the_writer_and_any_k_minus_1_voters_can_be_lost(k, commits, lagging, data):
    """At rest with ANY k, then commits that some standbys have not all received yet: the writer and any k-1
    voters die together, and a promotion is still proven safe (and loses nothing)."""
    model = Model(SyncMode.QUORUM, k)
    for _ in range(4 * len(STANDBYS)):  # settle: every standby a voter, the proof relying on k
        for n in STANDBYS:
            model.replicate(n, model.log)
        model.tick()
    assert (model.state.voters, model.state.proven, model.acks) == (frozenset(STANDBYS), k, k)
    for _ in range(commits):
        model.commit()
        for n in STANDBYS:
            if n not in lagging:
                model.replicate(n, 1)
    lost = data.draw(st.lists(st.sampled_from(STANDBYS), unique=True, min_size=k - 1, max_size=k - 1))
    for n in lost:
        model.up[n] = False
    target = model.promotion_after_writer_dies()
    if len(set(lagging) | set(lost)) < len(STANDBYS):  # someone holds the acknowledged commits
        assert target is not None, f"k={k}: losing the writer and {lost} blocked the failover"
        assert model.pos[target] >= model.acked


def test_survivable_counts_the_writer_and_the_voters_beyond_what_a_proof_needs():
    from pgaurora.health.snapshot import survivable
    from pgaurora.service.admin.server import can_lose

    model = Model(SyncMode.QUORUM, 2)
    state = replace(model.state, proven=2)
    statuses = model.statuses(True)
    assert survivable(state, statuses) == 2 and can_lose(2) == "the writer and 1 replica"
    model.up["n2"] = False
    assert survivable(state, model.statuses(True)) == 1 and can_lose(1) == "the writer"
    model.up["n3"] = False
    assert survivable(state, model.statuses(True)) == 0
    assert can_lose(0).startswith("nothing")
    assert survivable(replace(state, voters=frozenset()), statuses) == 0  # nothing proven
    assert survivable(replace(state, proven=1), statuses) == 1  # ANY 1: every voter must answer
    assert can_lose(3) == "the writer and 2 replicas"
    older = replace(state, timeline=2)  # the voters are on timeline 1, the writer on 2: their answers prove nothing
    assert survivable(older, statuses) == 0
