"""Waiting for a condition by polling it with a deadline, never by a bare sleep."""

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
