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


def test_pools_and_pins_are_listed_only_when_an_endpoint_pools(capsys):
    print_status(_doc())
    assert "pool " not in capsys.readouterr().out
    pool = {
        "endpoint": "writer",
        "node": "n1",
        "database": "app",
        "user": "alice",
        "clients_waiting": 3,
        "server_active": 2,
        "server_idle": 0,
        "longest_wait_seconds": 0.25,
    }
    print_status(_doc(pools=[pool], pins={"advisory_lock": 2}))
    out = capsys.readouterr().out
    assert "pool writer n1 alice@app: 2 active, 0 idle, 3 waiting (longest wait 0.25 s)" in out
    assert "pinned clients: advisory_lock 2" in out


def test_a_splitting_endpoint_shows_where_reads_ran_per_consistency(capsys):
    split = {
        "app": {
            "session": {"replica": 90, "writer": {"write": 10, "replica_behind": 2}, "waits": 8, "wait_seconds": 0.02},
            "eventual": {"replica": 5, "writer": {}},
        }
    }
    print_status(_doc(split=split))
    out = capsys.readouterr().out
    assert "app session: 90 on replicas; on the writer: replica_behind 2, write 10; 8 waited 2.5 ms on average" in out
    assert "app eventual: 5 on replicas; on the writer: none" in out
