"""Polling with a deadline, never a bare sleep: until a condition holds, or the values seen over a while."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from .errors import PgAuroraError

T = TypeVar("T")


class Timeout(PgAuroraError, TimeoutError):
    """A condition did not become true in time."""


def wait_for(what: str, predicate: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T:
    """predicate()'s first true value, polled until a deadline; Timeout naming what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def values_over(probe: Callable[[], object], seconds: float, interval: float = 0.05) -> list[object]:
    """Every distinct value probe() gave over a while: the while passes in full (to watch that something does
    not happen, or happens only once)."""
    seen: list[object] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = probe()
        if value not in seen:
            seen.append(value)
        time.sleep(interval)
    return seen
