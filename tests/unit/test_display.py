"""`pgaurora status` as a terminal shows it: the lines that appear only when something is wrong."""

from __future__ import annotations

import pytest

from pgaurora.cli.display import print_status


def _doc(**extra) -> dict:
    return {
        "cluster": "demo",
        "zone": "demo.pgaurora",
        "epoch": 1,
        "sync_mode": "quorum",
        "sync_standbys": "ANY 1 (n2)",
        "writer": {"endpoint": "127.0.0.1:5432", "node": "n1"},
        "reader": {"endpoint": "127.0.0.1:5433", "nodes": ["n2"]},
        "nodes": [],
        "reason": "all well",
        **extra,
    }


@pytest.mark.parametrize(
    ("age", "warned"),
    [(None, False), (0.1, False), (1.4, False), (1.6, True), (42.0, True)],
)
def test_a_monitor_that_has_not_probed_for_three_intervals_is_called_stale(capsys, age, warned):
    print_status(_doc(monitor={"probe_interval": 0.5, "last_probe_seconds_ago": age}))
    out = capsys.readouterr().out
    assert ("its view of the nodes is stale" in out) is warned, out
    if warned:
        assert f"last probed {age:.1f} s ago" in out


def test_a_status_from_an_older_pgaurora_without_the_monitor_section_prints(capsys):
    print_status(_doc())
    assert "last decision: all well" in capsys.readouterr().out
