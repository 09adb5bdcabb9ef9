"""Leadership: which role this instance has, from what it last heard from etcd (pure, table-tested)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.coordination import InstanceRole


@dataclass(frozen=True)
class Heard:
    """What this instance last learned from etcd, with monotonic times."""

    renewed_at: float | None  # when the last keepalive that etcd acknowledged was sent
    holder: str | None  # who holds the leader key, as last read
    answered_at: float | None  # when etcd last answered anything


@dataclass(frozen=True)
class Standing:
    role: InstanceRole
    reason: str


def safety_margin(ttl: float) -> float:
    """How long before its lease could expire in etcd a leader stops acting: a third of the ttl, at most
    one second (the lease's expiry counts from when etcd got the keepalive, which is after we sent it)."""
    return min(1.0, ttl / 3)


def standing(now: float, heard: Heard, me: str, ttl: float) -> Standing:
    if heard.answered_at is None or now - heard.answered_at >= ttl:
        silent = "never answered" if heard.answered_at is None else f"silent for {now - heard.answered_at:.1f} s"
        return Standing(InstanceRole.CUT_OFF, f"etcd {silent} (ttl {ttl:g} s): not acting")
    if heard.holder == me:
        if heard.renewed_at is not None and now < heard.renewed_at + ttl - safety_margin(ttl):
            return Standing(InstanceRole.LEADER, f"{me} holds the leader key")
        return Standing(
            InstanceRole.CUT_OFF, f"{me} could not renew its lease in time: not acting until it is sure again"
        )
    if heard.holder is None:
        return Standing(InstanceRole.CANDIDATE, "no instance holds the leader key")
    return Standing(InstanceRole.FOLLOWER, f"{heard.holder} leads")
