"""The drill's measures, on logs made by hand."""

from __future__ import annotations

import pytest


def test_drill_counts_a_write_acknowledged_on_an_older_timeline_as_split_brain():
    from pgaurora.drill.engine import split_brain_writes
    from pgaurora.drill.workload import Ack, Log

    log = Log(
        acks=[
            Ack(1.0, 0.01, 0, 0, "a", 1),
            Ack(2.0, 0.01, 0, 1, "b", 2),
            Ack(2.5, 0.01, 1, 0, "a", 1),
            Ack(3.0, 0.01, 0, 2, "b", 2),
        ]
    )
    assert split_brain_writes(log) == 1
    assert split_brain_writes(Log(acks=[Ack(1.0, 0.01, 0, 0, "a", 1), Ack(2.0, 0.01, 0, 1, "b", 2)])) == 0


def test_drill_downtime_is_the_longest_gap_across_the_fault():
    from pgaurora.drill.engine import _downtime

    times = [0.0, 0.1, 0.2, 1.01, 1.02, 2.9, 3.0, 3.1]  # an ack in flight at 1.01 must not hide the outage
    assert _downtime(times, 1.0, 3.0) == pytest.approx(1.88)
    assert _downtime([5.0], 1.0, 3.0) is None


def test_a_drill_fails_on_a_loss_a_split_brain_or_a_long_downtime():
    from pgaurora.drill.report import Consistency, Report, RoundResult

    clean = Report(
        rounds=[RoundResult("kill-primary", 1, 0.0, "n1", "failover", write_downtime=1.6)],
        consistency=Consistency(acknowledged=10, final_writer="n2", missing={"n2": 0}),
    )
    assert clean.failed(max_downtime=30) == []
    assert clean.failed(max_downtime=1.0) == ["a downtime of 1.60 s exceeds --max-downtime 1 s"]
    lossy = Report(rounds=clean.rounds, consistency=Consistency(final_writer="n2", missing={"n2": 3}, split_brain=2))
    assert lossy.failed(max_downtime=30) == ["3 acknowledged writes lost", "2 split-brain writes"]
