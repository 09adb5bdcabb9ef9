"""Self-healing's decisions, as tables: what to do about a node that is down, and the back-off between tries."""

from __future__ import annotations

import pytest

from pgaurora.core.config import HealConfig, SyncMode
from pgaurora.core.topology import Health, NodeState, Role, Topology
from pgaurora.health.heal import WRITER_GRACE, Seen, Step, Tries, after_try, observed, plan, redundancy

CONFIG = HealConfig(max_attempts=5, rebuild_after=3, backoff=1.0, max_backoff=8.0, stable_after=30.0)
NOW = 1000.0


def seen(**changes) -> Seen:
    base = dict(
        name="n3",
        alive=False,
        held=False,
        usable=True,
        role=Role.REPLICA,
        is_writer=False,
        writer_alive=True,
        others_alive=True,
    )
    return Seen(**{**base, **changes})


@pytest.mark.parametrize(
    "node, tries, step, words",
    [
        (seen(alive=True), Tries(), Step.NONE, "running"),
        (seen(held=True), Tries(), Step.NONE, "on purpose"),
        (seen(), Tries(), Step.START, "a replica"),
        (seen(writer_alive=False), Tries(), Step.START, "a replica"),  # a replica needs no writer to start
        (seen(role=Role.FENCED), Tries(), Step.REJOIN, "former primary"),
        (seen(role=Role.FENCED, writer_alive=False), Tries(), Step.WAIT, "running writer"),
        (seen(usable=False), Tries(), Step.REBUILD, "no usable data directory"),
        (seen(usable=False, writer_alive=False), Tries(), Step.WAIT, "running writer"),
        (seen(), Tries(count=3, failed=3), Step.REBUILD, "failed to start 3 times"),
        (seen(), Tries(count=3, failed=3, rebuilt=True), Step.START, "a replica"),
        (seen(role=Role.FENCED), Tries(count=3, failed=0), Step.REJOIN, "former primary"),  # 3 heals that worked
        (seen(), Tries(count=5), Step.GIVE_UP, "5 tries in a row failed"),
        (seen(), Tries(count=5, given_up=True), Step.NONE, "given up"),
        (seen(), Tries(count=1, next_at=NOW + 2), Step.WAIT, "next try in 2.0 s"),
        (seen(is_writer=True, role=Role.PRIMARY), Tries(down_since=NOW - 1), Step.WAIT, "the monitor fails over first"),
        (seen(is_writer=True, role=Role.PRIMARY), Tries(down_since=NOW - WRITER_GRACE), Step.START, "no failover came"),
        (
            seen(is_writer=True, role=Role.PRIMARY, others_alive=False),
            Tries(down_since=NOW),
            Step.START,
            "no other node can take over",
        ),
        (seen(owned=False, role=Role.FENCED), Tries(), Step.START, "start command"),
        (seen(owned=False, usable=False), Tries(count=5), Step.GIVE_UP, "5 tries"),
    ],
)
def test_plan_for_a_node(node, tries, step, words):
    decision = plan(node, tries, NOW, CONFIG)
    assert decision.step is step and words in decision.reason, decision


def test_tries_back_off_doubling_up_to_the_cap_and_count_failures_and_successes():
    tries = Tries()
    waits = []
    for _ in range(6):
        tries = after_try(tries, Step.START, False, NOW, CONFIG)
        waits.append(tries.next_at - NOW)
    assert waits == [1, 2, 4, 8, 8, 8] and tries.count == 6 and tries.failed == 6 and tries.up_since is None
    assert after_try(tries, Step.START, True, NOW, CONFIG).failed == 0
    rebuilt = after_try(Tries(count=3), Step.REBUILD, True, NOW, CONFIG)
    assert rebuilt.rebuilt and rebuilt.up_since == NOW and rebuilt.count == 4
    assert after_try(Tries(count=3), Step.REBUILD, False, NOW, CONFIG).rebuilt  # one rebuild, whatever came of it
    assert not after_try(Tries(count=3), Step.START, True, NOW, CONFIG).rebuilt


def test_a_node_up_for_stable_after_starts_its_count_again():
    tries = Tries(count=4, up_since=NOW - 29)
    assert observed(tries, True, NOW, CONFIG).count == 4
    assert observed(tries, True, NOW + 1, CONFIG) == Tries(up_since=NOW - 29)
    down = observed(tries, False, NOW, CONFIG)
    assert down.up_since is None and down.down_since == NOW and down.count == 4
    assert observed(down, False, NOW + 5, CONFIG).down_since == NOW


def _topology(sync: str, *states: tuple[str, Role, Health]) -> Topology:
    nodes = tuple(NodeState(name, "127.0.0.1", 5432, role, health) for name, role, health in states)
    return Topology("t", nodes, writer="n1", sync_standbys=sync)


def test_redundancy_counts_streaming_replicas_and_the_copies_of_a_commit():
    full = _topology(
        "ANY 1 (n2, n3)",
        ("n1", Role.PRIMARY, Health.HEALTHY),
        ("n2", Role.REPLICA, Health.HEALTHY),
        ("n3", Role.REPLICA, Health.LAGGING),
    )
    assert redundancy(full, SyncMode.QUORUM).describe() == "2 of 2 replicas streaming; commits on 2 copies"
    assert redundancy(full, SyncMode.QUORUM).full
    short = _topology(
        "",
        ("n1", Role.PRIMARY, Health.HEALTHY),
        ("n2", Role.FENCED, Health.UNREACHABLE),
        ("n3", Role.REPLICA, Health.UNREACHABLE),
    )
    assert (
        redundancy(short, SyncMode.QUORUM).describe() == "0 of 2 replicas streaming; commits on 1 copy of the 2 wanted"
    )
    assert not redundancy(short, SyncMode.QUORUM).full
    assert not redundancy(short, SyncMode.OFF).full and redundancy(short, SyncMode.OFF).wanted == 1
