"""Quorum commit: the transition table, the promotion proof, and a model that hunts for a lost commit."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgaurora.core.config import SyncMode
from pgaurora.health.decide import Action, ClusterState, Policy, decide
from pgaurora.health.probe import NodeStatus
from pgaurora.health.quorum import Position, StepKind, holds, judge, next_step, parse_sync_names, sync_names

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
def test_transition_table(voters, sync, wanted, kind, value, catch_up):
    step = next_step(voters, sync, wanted)
    if kind is None:
        assert step is None
        return
    assert (step.kind, step.value, step.catch_up) == (kind, value, catch_up)
    assert step.reason
    if step.kind is StepKind.SYNC:
        assert holds(voters, step.value), "a sync change must never outrun the voters"


def test_sync_names_round_trip_and_foreign_forms():
    assert sync_names({"n3", "n2"}) == "ANY 1 (n2, n3)" and sync_names(()) == ""
    assert parse_sync_names("ANY 1 (n2, n3)") == F({"n2", "n3"})
    assert parse_sync_names("") == F()
    assert parse_sync_names("FIRST 2 (n2, n3)") is None and parse_sync_names("*") is None


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


# -- the model -------------------------------------------------------------------------------------
STANDBYS = ("n2", "n3", "n4")
ADDRESSES = {n: (f"127.0.0.{i + 11}", 5432) for i, n in enumerate(("n1", *STANDBYS))}


@dataclass
class Model:
    """Commits are numbered 1..log; a standby holds a prefix of them (WAL is linear)."""

    mode: SyncMode
    log: int = 0
    acked: int = 0  # every commit up to here was acknowledged to a client
    pos: dict = field(default_factory=lambda: {n: 0 for n in STANDBYS})
    up: dict = field(default_factory=lambda: {n: True for n in STANDBYS})
    sync: frozenset = frozenset(STANDBYS)
    state: ClusterState = field(
        default_factory=lambda: ClusterState(writer="n1", epoch=1, timeline=1, system_id=1, voters=frozenset(STANDBYS))
    )

    @property
    def policy(self) -> Policy:
        return Policy(addresses=ADDRESSES, failure_threshold=1, sync_mode=self.mode)

    def release(self) -> None:
        """A waiting commit returns once a synchronous standby has it, or at once without any."""
        if not self.sync:
            self.acked = self.log
        else:
            self.acked = max(self.acked, max(self.pos[n] for n in self.sync))

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
                sync_names=sync_names(self.sync),
            )
            if writer_up
            else NodeStatus.unknown("n1", "down")
        }
        for n in STANDBYS:
            out[n] = (
                NodeStatus(
                    n, True, in_recovery=True, receive_lsn=self.pos[n], replay_lsn=self.pos[n], timeline=1, system_id=1
                )
                if self.up[n]
                else NodeStatus.unknown(n, "down")
            )
        return out

    def tick(self) -> None:
        """One monitor tick with the writer alive: at most one quorum step, applied as the monitor would."""
        failures = {n: 0 if self.up[n] else 1 for n in STANDBYS}
        self.state = replace(self.state, failures=failures, writer_lsn=self.log)
        d = decide(self.state, self.statuses(True), self.policy)
        if d.action is Action.SET_SYNC:
            self.sync = parse_sync_names(d.value)
            self.release()
        elif d.action is Action.SET_VOTERS:
            voters = frozenset(filter(None, d.value.split(",")))
            widening = self.state.voters and voters >= self.state.voters
            caught = any(self.up[n] and self.pos[n] >= self.log for n in voters)  # actions.caught_up
            if not voters or widening or caught:
                self.state = replace(self.state, voters=voters)

    def promotion_after_writer_dies(self) -> str | None:
        failures = {"n1": 1, **{n: 0 if self.up[n] else 1 for n in STANDBYS}}
        d = decide(replace(self.state, failures=failures), self.statuses(False), self.policy)
        return d.target if d.action is Action.PROMOTE else None


OPS = st.one_of(
    st.tuples(st.just("commit"), st.just(""), st.just(0)),
    st.tuples(st.just("replicate"), st.sampled_from(STANDBYS), st.integers(1, 3)),
    st.tuples(st.just("fail"), st.sampled_from(STANDBYS), st.just(0)),
    st.tuples(st.just("recover"), st.sampled_from(STANDBYS), st.just(0)),
    st.tuples(st.just("tick"), st.just(""), st.just(0)),
)


@settings(max_examples=1500, deadline=None)
@given(
    mode=st.sampled_from([SyncMode.QUORUM, SyncMode.STRICT]),
    ops=st.lists(OPS, max_size=60),
    returning=st.lists(st.sampled_from(STANDBYS), unique=True),
)
def test_no_promotion_the_monitor_allows_loses_an_acknowledged_commit(mode, ops, returning):
    """Random commits, standby failures and recoveries, monitor ticks; then the primary dies and some
    standbys come back. Whatever decide() promotes must hold every acknowledged commit."""
    model = Model(mode)
    for op, name, count in ops:
        if op == "commit":
            model.commit()
        elif op == "replicate":
            model.replicate(name, count)
        elif op == "fail":
            model.up[name] = False
        elif op == "recover":
            model.up[name] = True
        else:
            model.tick()
        assert holds(model.state.voters, model.sync), "invariant broken"
    for name in returning:
        model.up[name] = True
    target = model.promotion_after_writer_dies()
    if target is not None:
        assert model.pos[target] >= model.acked, (
            f"promoted {target} at {model.pos[target]} but commits up to {model.acked} were acknowledged"
        )
