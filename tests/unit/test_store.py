"""The monitor's state file and its write-ahead intents, without a cluster."""

from __future__ import annotations

import json
import os

import pytest

from pgaurora.core.errors import StateError
from pgaurora.core.eventlog import EventLog
from pgaurora.health.decide import ClusterState
from pgaurora.health.intents import open_intents, reconcile
from pgaurora.health.probe import NodeStatus
from pgaurora.health.store import StateFile

NODES = ("n1", "n2", "n3")
STATE = ClusterState(
    writer="n2",
    epoch=4,
    timeline=4,
    system_id=9,
    fenced=frozenset({"n1"}),
    voters=frozenset({"n3"}),
    failures={"n1": 7},
    writer_lsn=123,
    proven=2,
    timelines={"n3": 4, "gone": 2},
    stuck={"n3": 5},
)


def test_state_round_trips_its_durable_part_only(tmp_path):
    store = StateFile(tmp_path / "monitor.json")
    store.save(STATE)
    loaded = store.load(NODES)
    assert loaded == ClusterState(  # the failure and stuck counts and the writer's position are not durable
        writer="n2",
        epoch=4,
        timeline=4,
        system_id=9,
        fenced=frozenset({"n1"}),
        voters=frozenset({"n3"}),
        proven=2,
        timelines={"n3": 4},  # of the configured nodes only
    )
    assert os.listdir(tmp_path) == ["monitor.json"], "the temporary file must be renamed away"


def test_a_missing_file_is_a_first_start(tmp_path):
    assert StateFile(tmp_path / "monitor.json").load(NODES) is None


@pytest.mark.parametrize(
    "content, words",
    [
        ("", "is empty"),
        ('{"writer": "n2", "epo', "is unreadable"),
        ('{"writer": "n9", "epoch": 1}', "'n9' is not a node"),
        ('{"writer": "n2", "epoch": "x"}', "is not a whole number"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_a_torn_or_foreign_state_file_is_one_clear_refusal(tmp_path, content, words):
    path = tmp_path / "monitor.json"
    path.write_text(content)
    with pytest.raises(StateError) as err:
        StateFile(path).load(NODES)
    assert words in str(err.value) and str(path) in str(err.value) and "--reset-state" in str(err.value)


def test_event_log_reads_its_history_back_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "events.jsonl"
    EventLog(path).record("failover_started", "why", intent="a1", candidate="n3", old_writer="n1", timeline=1)
    with path.open("a") as f:
        f.write('{"kind": "failov')  # a crash in the middle of a line
    log = EventLog(path)
    assert [e["kind"] for e in log.recent()] == ["failover_started"]
    log.record("failover", "done", intent="a1")
    assert [e["kind"] for e in EventLog(path).recent()] == ["failover_started", "failover"]
    assert all(json.loads(line) for line in path.read_text().splitlines()[2:])


def test_open_intents_are_those_without_a_closing_event():
    history = [
        {"kind": "failover_started", "intent": "a"},
        {"kind": "failover", "intent": "a"},
        {"kind": "failover_started", "intent": "b"},
        {"kind": "repoint"},
        {"kind": "failover_started", "intent": "c"},
        {"kind": "failover_abandoned", "intent": "c"},
    ]
    assert [i["intent"] for i in open_intents(history)] == ["b"]


def _primary(name, timeline):
    return NodeStatus(name, True, in_recovery=False, timeline=timeline, current_lsn=10)


def _replica(name):
    return NodeStatus(name, True, in_recovery=True, timeline=1, receive_lsn=10)


INTENT = {"intent": "x", "candidate": "n3", "old_writer": "n1", "timeline": 1, "epoch": 2}
BEFORE = ClusterState(writer="n1", epoch=1, timeline=1)


@pytest.mark.parametrize(
    "state, n3, completed, follow, words",
    [
        (BEFORE, _replica("n3"), False, False, "still a replica"),
        (BEFORE, _primary("n3", 2), True, True, "had not been saved"),
        (ClusterState(writer="n3", epoch=2, timeline=2), _primary("n3", 2), True, False, "already the writer"),
        (ClusterState(writer="n2", epoch=3, timeline=3), _primary("n3", 2), False, False, "n2 became the writer"),
        (BEFORE, _primary("n3", 1), False, False, "not this promotion"),
    ],
)
def test_reconcile_tells_what_became_of_an_intent(state, n3, completed, follow, words):
    found = reconcile(INTENT, state, {"n3": n3})
    assert (found.completed, found.follow) == (completed, follow) and words in found.found


def test_reconcile_waits_while_the_candidate_cannot_be_seen():
    assert reconcile(INTENT, BEFORE, {"n3": NodeStatus.unknown("n3", "refused")}) is None


def test_drained_nodes_are_durable_and_leave_the_readers(tmp_path):
    from pgaurora.health.decide import ClusterState
    from pgaurora.health.store import StateFile

    store = StateFile(tmp_path / "monitor.json")
    store.save(ClusterState(writer="n1", epoch=2, drained=frozenset({"n2"})))
    assert store.load({"n1", "n2", "n3"}).drained == {"n2"}
    assert store.load({"n1", "n3"}).drained == frozenset()  # a node no longer configured is forgotten
