"""A composed cluster leaves nothing behind: the shared memory of a node that crashed is released."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import make_cluster


def _segment(node) -> int:
    return int((node.datadir / "postmaster.pid").read_text().split("\n")[6].split()[1])


def _segments() -> set[int]:
    return {int(row.split()[1]) for row in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]}


def test_a_node_killed_and_never_started_again_does_not_leak_its_shared_memory_segment():
    cluster = make_cluster(replicas=1)
    try:
        killed = cluster.replicas[0]
        shmid = _segment(killed)
        killed.kill()
        assert shmid in _segments(), "the segment is the dead postmaster's to leave behind"
        primary_segment = _segment(cluster.primary)
    finally:
        cluster.destroy()
    assert shmid not in _segments() and primary_segment not in _segments()
