"""Write-ahead failover intents: which ones a restart left open, and what the nodes now say of each (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .decide import ClusterState
from .probe import NodeStatus

STARTED = "failover_started"
CLOSING = frozenset({"failover", "failover_completed_after_restart", "failover_completed_late", "failover_abandoned"})


def open_intents(history: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """failover_started events that no later event closes, oldest first."""
    started, closed = {}, set()
    for event in history:
        if event.get("kind") == STARTED and event.get("intent"):
            started[event["intent"]] = event
        elif event.get("kind") in CLOSING and event.get("intent"):
            closed.add(event["intent"])
    return [e for i, e in started.items() if i not in closed]


@dataclass(frozen=True, slots=True)
class Resolution:
    completed: bool  # the candidate was promoted
    found: str  # what the nodes showed, for the event
    follow: bool = False  # the monitor must still make the candidate its writer (new epoch)
    timeline: int | None = None


def reconcile(intent: dict[str, Any], state: ClusterState, statuses: Mapping[str, NodeStatus]) -> Resolution | None:
    """What became of an intent, judged from the nodes; None while its candidate cannot be seen."""
    name, old = intent["candidate"], intent.get("old_writer")
    seen = statuses.get(name)
    if seen is None or not seen.reachable:
        return None
    tl = seen.timeline
    if seen.is_replica:
        return Resolution(False, f"{name} is still a replica (timeline {tl}): the promotion did not happen")
    if (tl or 0) <= (intent.get("timeline") or 0):
        return Resolution(
            False,
            f"{name} is a primary on timeline {tl}, not on a timeline after "
            f"{intent.get('timeline')}: not this promotion",
        )
    if state.writer == name:
        return Resolution(
            True, f"{name} is primary on timeline {tl} and already the writer (epoch {state.epoch})", timeline=tl
        )
    if state.writer == old:
        return Resolution(
            True,
            f"{name} is primary on timeline {tl}; the new epoch had not been saved, so it is saved now",
            follow=True,
            timeline=tl,
        )
    return Resolution(
        False,
        f"{name} is primary on timeline {tl}, but {state.writer} became the writer since; it is fenced like any rival",
    )
