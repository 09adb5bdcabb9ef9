"""Leadership judged from what etcd last said, on the clock now (pure)."""

from __future__ import annotations

import pytest

from pgaurora.core.coordination import InstanceRole
from pgaurora.dcs.leadership import Heard, safety_margin, standing

TTL = 3.0


@pytest.mark.parametrize(
    "now, heard, role, why",
    [
        (10.0, Heard(None, None, None), InstanceRole.CUT_OFF, "never answered"),
        (10.0, Heard(9.5, "i1", 9.6), InstanceRole.LEADER, "i1 holds the leader key"),
        # renewed at 8.0: the lease may lapse in etcd at 11.0; stop acting a safety margin before
        (9.9, Heard(8.0, "i1", 9.9), InstanceRole.LEADER, "holds"),
        (10.0, Heard(8.0, "i1", 9.9), InstanceRole.CUT_OFF, "could not renew its lease in time"),
        (10.0, Heard(9.5, "i2", 9.6), InstanceRole.FOLLOWER, "i2 leads"),
        (10.0, Heard(9.5, None, 9.6), InstanceRole.CANDIDATE, "no instance holds"),
        # etcd silent for the ttl: nothing it said counts any more, leader or not
        (13.0, Heard(9.5, "i1", 9.9), InstanceRole.CUT_OFF, "silent for 3.1 s"),
        (13.0, Heard(9.5, "i2", 9.9), InstanceRole.CUT_OFF, "not acting"),
        # a process paused for 20 s wakes up believing nothing: the clock says it was silent
        (30.0, Heard(9.5, "i1", 9.6), InstanceRole.CUT_OFF, "silent for 20.4 s"),
    ],
)
def test_judge(now, heard, role, why):
    verdict = standing(now, heard, "i1", TTL)
    assert verdict.role is role and why in verdict.reason


def test_a_leader_stops_acting_before_its_lease_can_lapse_in_etcd():
    for ttl in (1.0, 3.0, 10.0, 60.0):
        margin = safety_margin(ttl)
        assert 0 < margin <= 1.0 and margin < ttl
        last_leading = standing(100 + ttl - margin - 0.001, Heard(100.0, "i1", 100 + ttl - 1.5 * margin), "i1", ttl)
        first_not = standing(100 + ttl - margin, Heard(100.0, "i1", 100 + ttl - 1.5 * margin), "i1", ttl)
        assert last_leading.role is InstanceRole.LEADER and first_not.role is not InstanceRole.LEADER
