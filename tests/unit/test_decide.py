"""The monitor's decision table: decide() is pure, so every row is a plain assertion on its reason."""

from __future__ import annotations

from dataclasses import replace

from pgaurora.core.config import SyncMode
from pgaurora.health.decide import Action, ClusterState, Policy, choose_candidate, decide, desired_sync_names
from pgaurora.health.probe import NodeStatus

ADDR = {"n1": ("127.0.0.11", 5432), "n2": ("127.0.0.12", 5432), "n3": ("127.0.0.13", 5432)}
POLICY = Policy(addresses=ADDR, failure_threshold=3)


def primary(name="n1", lsn=1000, timeline=1, sync="ANY 1 (n2, n3)"):
    return NodeStatus(
        name, True, in_recovery=False, current_lsn=lsn, replay_lsn=None, timeline=timeline, system_id=7, sync_names=sync
    )


def replica(name, received=1000, replayed=None, upstream="n1", streaming=True, timeline=1):
    host, port = ADDR[upstream]
    return NodeStatus(
        name,
        True,
        in_recovery=True,
        receive_lsn=received,
        replay_lsn=received if replayed is None else replayed,
        timeline=timeline,
        system_id=7,
        receiver_status="streaming" if streaming else None,
        upstream_host=host if streaming else None,
        upstream_port=port if streaming else None,
        conninfo_host=host,
        conninfo_port=port,
        sync_names="",
        receipt_age=0.1 if streaming else None,
    )


def down(name):
    return NodeStatus.unknown(name, "ConnectionRefusedError: refused")


HEALTHY = {"n1": primary(), "n2": replica("n2"), "n3": replica("n3")}
RUNNING = ClusterState(writer="n1", epoch=1, timeline=1, system_id=7, voters=frozenset({"n2", "n3"}), writer_lsn=1000)


def test_elects_the_only_primary_at_start():
    d = decide(ClusterState(), HEALTHY, POLICY)
    assert (d.action, d.target, d.reason) == (Action.ELECT, "n1", "n1 is the only primary; electing it writer")


def test_elects_highest_timeline_when_two_nodes_claim_primary():
    statuses = {**HEALTHY, "n2": primary("n2", timeline=2)}
    d = decide(ClusterState(), statuses, POLICY)
    assert (d.action, d.target) == (Action.ELECT, "n2")
    assert d.reason == "n2 has the highest timeline (2) of the primaries; electing it writer and fencing n1"


def test_waits_when_no_node_reachable():
    d = decide(ClusterState(), {n: down(n) for n in ADDR}, POLICY)
    assert (d.action, d.reason) == (Action.WAIT, "no node reachable; no writer yet")


def test_healthy_cluster_needs_nothing():
    d = decide(RUNNING, HEALTHY, POLICY)
    assert (d.action, d.reason) == (Action.NONE, "writer n1 healthy; 2 replica(s) reachable")


def test_waits_below_failure_threshold():
    state = replace(RUNNING, failures={"n1": 2})
    d = decide(state, {**HEALTHY, "n1": down("n1")}, POLICY)
    assert d.action is Action.WAIT
    assert d.reason == "writer n1 unreachable (2/3 probes): ConnectionRefusedError: refused"


def test_promotes_most_advanced_replica_after_threshold():
    state = replace(RUNNING, failures={"n1": 3})
    statuses = {"n1": down("n1"), "n2": replica("n2", 900, streaming=False), "n3": replica("n3", 1200, streaming=False)}
    d = decide(state, statuses, POLICY)
    assert (d.action, d.target) == (Action.PROMOTE, "n3")
    assert d.reason == (
        "writer n1 unreachable for 3 probes; promoting n3 (WAL at 0/4B0): it has every "
        "acknowledged commit (every voter of ANY 1 (n2, n3) answered, and it is at least as "
        "advanced as each)"
    )
    assert d.loss_bound == 0


def test_no_failover_while_a_witness_still_streams_from_the_writer():
    state = replace(RUNNING, failures={"n1": 5})
    statuses = {"n1": down("n1"), "n2": replica("n2"), "n3": replica("n3", streaming=False)}
    d = decide(state, statuses, POLICY)
    assert d.action is Action.NONE
    assert d.reason == "writer n1 is unreachable from the monitor, but n2 still receive from it; no failover"


def test_a_replica_that_stopped_hearing_from_the_writer_is_no_witness():
    """A frozen primary keeps its TCP connections open: the replicas still say 'streaming', but they
    stop receiving the monitor's heartbeats. Only fresh receipt makes a witness."""
    state = replace(RUNNING, failures={"n1": 5})
    stale = replace(replica("n2"), receipt_age=2.0)
    statuses = {"n1": down("n1"), "n2": stale, "n3": replace(replica("n3"), receipt_age=1.6)}
    d = decide(state, statuses, POLICY)
    assert (d.action, d.target) == (Action.PROMOTE, "n2")


def test_no_failover_when_disabled():
    state = replace(RUNNING, failures={"n1": 3})
    d = decide(state, {**HEALTHY, "n1": down("n1")}, replace(POLICY, failover=False))
    assert (d.action, d.reason) == (Action.NONE, "writer n1 is down and automatic failover is disabled")


def test_no_candidate_when_every_replica_is_down():
    state = replace(RUNNING, failures={"n1": 3, "n2": 3, "n3": 3})
    d = decide(state, {n: down(n) for n in ADDR}, POLICY)
    assert d.action is Action.NO_CANDIDATE
    assert d.reason == "writer n1 is down; no replica is reachable to promote"


def test_candidate_ties_break_on_replay_then_priority():
    state = replace(RUNNING, failures={"n1": 3})
    a, b = replica("n2", 1000, 900, streaming=False), replica("n3", 1000, 950, streaming=False)
    assert choose_candidate(state, {"n1": down("n1"), "n2": a, "n3": b}, POLICY).name == "n3"
    a, b = replica("n2", 1000, streaming=False), replica("n3", 1000, streaming=False)
    prefer_n2 = replace(POLICY, priorities={"n2": 5})
    assert choose_candidate(state, {"n1": down("n1"), "n2": a, "n3": b}, prefer_n2).name == "n2"


def test_never_promotes_a_fenced_node_or_another_cluster():
    state = replace(RUNNING, failures={"n1": 3}, fenced=frozenset({"n3"}))
    alien = replace(replica("n2", 5000, streaming=False), system_id=99)
    statuses = {"n1": down("n1"), "n2": alien, "n3": replica("n3", streaming=False)}
    assert decide(state, statuses, POLICY).action is Action.NO_CANDIDATE


def test_fences_a_second_primary():
    state = replace(RUNNING, writer="n2", epoch=2, timeline=2)
    statuses = {
        "n1": primary("n1", timeline=1),
        "n2": primary("n2", timeline=2, sync="ANY 1 (n3)"),
        "n3": replica("n3", upstream="n2", timeline=2),
    }
    d = decide(state, statuses, POLICY)
    assert (d.action, d.target) == (Action.FENCE, "n1")
    assert d.reason == "n1 claims to be primary (timeline 1) but n2 is the elected writer (epoch 2); fencing n1"


def test_rejoins_fenced_primary_when_the_monitor_controls_nodes():
    state = replace(RUNNING, writer="n2", epoch=2, timeline=2, voters=frozenset({"n3"}), fenced=frozenset({"n1"}))
    statuses = {
        "n1": primary("n1"),
        "n2": primary("n2", timeline=2, sync="ANY 1 (n3)"),
        "n3": replica("n3", upstream="n2", timeline=2),
    }
    assert decide(state, statuses, POLICY).action is Action.NONE
    d = decide(state, statuses, replace(POLICY, auto_rejoin=True))
    assert (d.action, d.target) == (Action.REJOIN, "n1")


def test_unfences_a_former_primary_once_it_streams_from_the_writer():
    state = replace(RUNNING, writer="n2", epoch=2, timeline=2, voters=frozenset({"n3"}), fenced=frozenset({"n1"}))
    statuses = {
        "n1": replica("n1", upstream="n2"),
        "n2": primary("n2", timeline=2, sync="ANY 1 (n1, n3)"),
        "n3": replica("n3", upstream="n2"),
    }
    d = decide(state, statuses, POLICY)
    assert (d.action, d.reason) == (Action.UNFENCE, "n1 now streams from writer n2; unfencing it")


def test_repoints_a_replica_that_follows_the_old_primary():
    state = replace(RUNNING, writer="n2", epoch=2, timeline=2, voters=frozenset({"n3"}), fenced=frozenset({"n1"}))
    statuses = {
        "n1": down("n1"),
        "n2": primary("n2", timeline=2, sync="ANY 1 (n3)"),
        "n3": replica("n3", upstream="n1", streaming=False),
    }
    d = decide(state, statuses, POLICY)
    assert (d.action, d.target) == (Action.REPOINT, "n3")
    assert d.reason == "n3 replicates from 127.0.0.11:5432, not writer n2; re-pointing it"


def test_adopts_a_primary_promoted_outside_pgaurora():
    state = replace(RUNNING, failures={"n1": 1})
    statuses = {"n1": down("n1"), "n2": primary("n2", timeline=2), "n3": replica("n3")}
    d = decide(state, statuses, POLICY)
    assert (d.action, d.target) == (Action.ADOPT, "n2")


def test_sync_standbys_shrink_to_the_live_replicas_before_the_voters_do():
    state = replace(RUNNING, failures={"n3": 3})
    statuses = {**HEALTHY, "n3": down("n3")}
    d = decide(state, statuses, POLICY)
    assert (d.action, d.value) == (Action.SET_SYNC, "ANY 1 (n2)")
    statuses["n1"] = primary(sync="ANY 1 (n2)")
    d = decide(state, statuses, POLICY)
    assert (d.action, d.value) == (Action.SET_VOTERS, "1:n2")
    assert d.reason == "n3 leaves the voters once n2 has every commit the writer acknowledged so far"


def test_a_replica_being_removed_leaves_the_sync_standbys_then_the_voters_while_still_healthy():
    leaving = replace(POLICY, leaving=frozenset({"n3"}))
    d = decide(RUNNING, HEALTHY, leaving)
    assert (d.action, d.value) == (Action.SET_SYNC, "ANY 1 (n2)")
    d = decide(RUNNING, {**HEALTHY, "n1": primary(sync="ANY 1 (n2)")}, leaving)
    assert (d.action, d.value) == (Action.SET_VOTERS, "1:n2")
    assert desired_sync_names(RUNNING, HEALTHY, POLICY) == "ANY 1 (n2, n3)"  # without it, n3 stays


def test_a_returning_standby_joins_the_voters_before_the_sync_standbys():
    state = replace(RUNNING, voters=frozenset({"n2"}))
    statuses = {**HEALTHY, "n1": primary(sync="ANY 1 (n2)")}
    d = decide(state, statuses, POLICY)
    assert (d.action, d.value) == (Action.SET_VOTERS, "1:n2,n3")
    d = decide(replace(state, voters=frozenset({"n2", "n3"})), statuses, POLICY)
    assert (d.action, d.value) == (Action.SET_SYNC, "ANY 1 (n2, n3)")


def test_double_fault_of_writer_and_a_voter_blocks_the_failover():
    """Issue 9: n3 lagged, n2 alone acknowledged the last commits, then n1 and n2 died together."""
    state = replace(RUNNING, failures={"n1": 3, "n2": 3})
    statuses = {"n1": down("n1"), "n2": down("n2"), "n3": replica("n3", 700, streaming=False)}
    d = decide(state, statuses, POLICY)
    assert (d.action, d.target) == (Action.NO_CANDIDATE, "n3")
    assert d.reason == (
        "writer n1 is down; n2 is unreachable; n3 cannot prove it has every "
        "acknowledged commit (quorum ANY 1 of n2, n3); waiting for n2, or run "
        "`pgaurora failover --to n3 --accept-data-loss`"
    )
    back = {**statuses, "n2": replica("n2", 900, streaming=False)}
    d = decide(state, back, POLICY)
    assert (d.action, d.target, d.loss_bound) == (Action.PROMOTE, "n2", 0)


def test_a_voter_still_replaying_its_own_wal_does_not_count_yet():
    state = replace(RUNNING, failures={"n1": 3})
    replaying = replace(replica("n2", 900, streaming=False), receive_lsn=None)
    statuses = {"n1": down("n1"), "n2": replaying, "n3": replica("n3", 800, streaming=False)}
    d = decide(state, statuses, POLICY)
    assert d.action is Action.NO_CANDIDATE
    assert "n2 is still replaying the WAL it holds" in d.reason


def test_a_refusal_names_each_voter_missing_for_its_own_reason():
    state = replace(RUNNING, timeline=2, failures={"n1": 3}, voters=frozenset({"n2", "n3"}), proven=1)
    candidate = {"n1": down("n1"), "n3": replica("n3", 800, streaming=False, timeline=2)}
    d = decide(state, {**candidate, "n2": primary("n2", timeline=1)}, POLICY)
    assert d.action is Action.NO_CANDIDATE and d.reason.startswith("writer n1 is down; n2 is not a replica; n3")
    d = decide(
        replace(state, fenced=frozenset({"n2"})), {**candidate, "n2": replica("n2", 900, streaming=False)}, POLICY
    )
    assert d.reason.startswith("writer n1 is down; n2 is fenced; n3")


def test_without_voters_a_failover_is_bounded_by_max_data_loss():
    state = replace(RUNNING, failures={"n1": 3}, voters=frozenset(), writer_lsn=5000)
    statuses = {"n1": down("n1"), "n2": replica("n2", 4000, streaming=False), "n3": down("n3")}
    assert decide(state, statuses, POLICY).action is Action.NO_CANDIDATE  # quorum mode: 0 by default
    d = decide(state, statuses, replace(POLICY, max_data_loss=1000))
    assert (d.action, d.target, d.loss_bound) == (Action.PROMOTE, "n2", 1000)
    asynchronous = replace(POLICY, sync_mode=SyncMode.OFF, max_data_loss=999)
    assert decide(state, statuses, asynchronous).action is Action.NO_CANDIDATE


def test_quorum_mode_clears_the_voters_then_degrades_to_async_when_no_standby_is_left():
    state = replace(RUNNING, failures={"n2": 3, "n3": 3})
    statuses = {"n1": primary(), "n2": down("n2"), "n3": down("n3")}
    d = decide(state, statuses, POLICY)
    assert (d.action, d.value) == (Action.SET_VOTERS, "1:")
    d = decide(replace(state, voters=frozenset()), statuses, POLICY)
    assert (d.action, d.value) == (Action.SET_SYNC, "")
    assert d.reason.startswith("no synchronous standby is left; sync_mode=quorum degrades to asynchronous")


def test_strict_mode_keeps_waiting_for_standbys():
    state = replace(RUNNING, failures={"n2": 3, "n3": 3})
    statuses = {"n1": primary(), "n2": down("n2"), "n3": down("n3")}
    strict = replace(POLICY, sync_mode=SyncMode.STRICT)
    assert desired_sync_names(state, statuses, strict) == "ANY 1 (n2, n3)"
    assert decide(state, statuses, strict).action is Action.NONE


def test_async_clusters_are_left_alone():
    statuses = {**HEALTHY, "n1": primary(sync="")}
    assert decide(RUNNING, statuses, replace(POLICY, sync_mode=SyncMode.OFF)).action is Action.NONE


def test_primary_conninfo_is_parsed_with_quotes_and_escapes():
    from pgaurora.health.probe import parse_conninfo

    fields = parse_conninfo("host='127.0.3.12' port='5432' password='it\\'s a secret' application_name=n3")
    assert fields == {"host": "127.0.3.12", "port": "5432", "password": "it's a secret", "application_name": "n3"}
    assert parse_conninfo("") == {} and parse_conninfo(None) == {}


def test_a_replica_on_an_older_timeline_is_neither_a_candidate_nor_a_voters_answer():
    """Issue 28: with ANY 2, a replica killed with an older writer came back with WAL beyond the point where
    the current writer's timeline began. Its larger LSN is on another history: promoting it lost commits."""
    state = replace(RUNNING, timeline=2, failures={"n1": 3}, proven=1)
    diverged = replica("n2", 5000, streaming=False, timeline=1)
    statuses = {"n1": down("n1"), "n2": diverged, "n3": replica("n3", 900, streaming=False, timeline=2)}
    d = decide(state, statuses, POLICY)
    assert (d.action, d.target) == (Action.NO_CANDIDATE, "n3")  # n2 counts as missing: not proven
    assert d.reason.startswith(
        "writer n1 is down; n2 is on timeline 1, older than the writer's 2 (a rewind is due); n3 cannot prove"
    )
    two = replace(state, proven=2)
    d = decide(two, statuses, POLICY)
    assert (d.action, d.target, d.loss_bound) == (Action.PROMOTE, "n3", 0)  # ANY 2: one of two voters suffices


def test_a_replica_stuck_on_an_older_timeline_is_rewound_after_stuck_after_probes():
    state = replace(RUNNING, timeline=2)
    statuses = {**HEALTHY, "n1": primary(timeline=2), "n2": replica("n2", 5000, streaming=False, timeline=1)}
    waiting = decide(replace(state, stuck={"n2": 19}), statuses, replace(POLICY, auto_rejoin=True))
    assert waiting.action is not Action.REJOIN
    d = decide(replace(state, stuck={"n2": 20}), statuses, replace(POLICY, auto_rejoin=True))
    assert (d.action, d.target) == (Action.REJOIN, "n2")
    assert "stayed on timeline 1, older than writer n1's 2" in d.reason
    assert decide(replace(state, stuck={"n2": 20}), statuses, POLICY).action is not Action.REJOIN  # not composed


def test_a_replica_seen_on_the_writers_timeline_stays_eligible_when_its_receiver_stops():
    """The writer died: a replica's WAL receiver stopped, and it reports its last restartpoint's timeline,
    older than the one it streamed. The durable memory of that timeline keeps it a candidate (pgaurora
    restarted between the two in the drill's restart-pgaurora fault)."""
    state = replace(RUNNING, timeline=3, failures={"n1": 3}, timelines={"n2": 3, "n3": 3})
    statuses = {
        "n1": down("n1"),
        "n2": replica("n2", 900, streaming=False, timeline=2),
        "n3": replica("n3", 800, streaming=False, timeline=2),
    }
    d = decide(state, statuses, POLICY)
    assert (d.action, d.target) == (Action.PROMOTE, "n2")
    assert decide(replace(state, timelines={}), statuses, POLICY).action is Action.NO_CANDIDATE
