"""bench/proxy.py's summary: medians of same-round ratios, and their spread across rounds."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import proxy as bench


def _runs(tps: dict[str, list[float]]) -> list:
    return [
        bench.Run(rnd, "select-c16", target, value, 1.0, 2.0, None, 100.0, 1000)
        for target, values in tps.items()
        for rnd, value in enumerate(values)
    ]


def test_ratios_pair_targets_within_a_round_not_across_rounds():
    # the machine slows down by half in round 2: both targets drop, their ratio does not
    runs = _runs({"direct": [100, 50, 100], "haproxy": [80, 40, 80], "pgaurora": [88, 44, 80]})
    row = next(r for r in bench.summarize(runs) if r["target"] == "pgaurora")
    assert row["tps"] == 80
    assert row["ratio"]["haproxy"] == 1.1  # median of 1.1, 1.1, 1.0
    assert row["ratio"]["pgbouncer"] is None  # no PgBouncer runs


def test_spread_reports_range_and_rounds_at_or_above_one():
    runs = _runs({"direct": [100] * 4, "haproxy": [100] * 4, "pgaurora": [90, 100, 105, 120]})
    spread = next(r for r in bench.summarize(runs) if r["target"] == "pgaurora")["spread"]["haproxy"]
    assert spread == {"min": 0.9, "max": 1.2, "rounds": 4, "at_least_1": 3}


def test_reader_is_compared_with_the_replica_baseline():
    runs = _runs({"direct": [100] * 3, "direct-replica": [50] * 3, "pgaurora-reader": [40] * 3})
    row = next(r for r in bench.summarize(runs) if r["target"] == "pgaurora-reader")
    assert row["ratio"]["direct"] == 0.8
