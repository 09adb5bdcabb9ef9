"""The drill's measures, on logs made by hand."""

from __future__ import annotations

import pytest


def test_drill_counts_a_write_acknowledged_on_an_older_timeline_as_split_brain():
    from pgaurora.drill.engine import split_brain_writes
    from pgaurora.drill.workload import Ack, Log
    log = Log(acks=[Ack(1.0, 0, 0, "a", 1), Ack(2.0, 0, 1, "b", 2), Ack(2.5, 1, 0, "a", 1), Ack(3.0, 0, 2, "b", 2)])
    assert split_brain_writes(log) == 1
    assert split_brain_writes(Log(acks=[Ack(1.0, 0, 0, "a", 1), Ack(2.0, 0, 1, "b", 2)])) == 0


def test_drill_downtime_is_the_longest_gap_across_the_fault():
    from pgaurora.drill.engine import _downtime
    times = [0.0, 0.1, 0.2, 1.01, 1.02, 2.9, 3.0, 3.1]  # an ack in flight at 1.01 must not hide the outage
    assert _downtime(times, 1.0, 3.0) == pytest.approx(1.88)
    assert _downtime([5.0], 1.0, 3.0) is None
