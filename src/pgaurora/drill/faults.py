"""The faults a drill can inject, in plain words, and which of them a target allows."""

from __future__ import annotations

from dataclasses import dataclass

ISOLATION_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Fault:
    name: str
    on: str  # "primary", "replica" or "pgaurora"
    what: str  # plain words, for --help and the report
    expect_failover: bool


FAULTS = {
    f.name: f
    for f in (
        Fault("kill-primary", "primary", "SIGKILL of the primary and its children, as a crash", True),
        Fault("stop-primary", "primary", "a fast shutdown of the primary", True),
        Fault("pause-primary", "primary", "SIGSTOP of the whole primary: hung, not dead (TCP still accepts)", True),
        Fault("kill-replica", "replica", "SIGKILL of a replica: it leaves the reader endpoint and the sync set", False),
        Fault("pause-replica", "replica", "SIGSTOP of a replica", False),
        Fault(
            "isolate-primary",
            "primary",
            f"iptables cuts pgaurora off the primary for {ISOLATION_SECONDS:g} s "
            "while the replicas still stream from it: a partition that must not cause a failover",
            False,
        ),
        Fault(
            "kill-primary-and-replica",
            "primary",
            "SIGKILL of the primary and a replica at the same moment (needs --sync-acks 2 or more)",
            True,
        ),
        Fault("switchover", "primary", "a planned switchover to the most advanced replica", True),
        Fault(
            "restart-pgaurora",
            "pgaurora",
            "SIGKILL of the primary and, right after, of pgaurora itself; "
            "pgaurora then starts again and must finish the failover",
            True,
        ),
    )
}

DEFAULT = "kill-primary,pause-primary,kill-replica,switchover"


def parse(text: str) -> list[Fault]:
    """Faults from 'a,b,c'; ValueError naming each unknown one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown or not names:
        raise ValueError(
            f"unknown fault{'s' * (len(unknown) > 1)} {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(FAULTS)}"
        )
    return [FAULTS[n] for n in names]


def describe() -> str:
    return "\n".join(f"{f.name:<24} {f.what}" for f in FAULTS.values())
