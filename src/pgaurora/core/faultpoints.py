"""Fault points for tests: PGAURORA_CRASH_AT=name SIGKILLs the process there; PGAURORA_FAIL_AT=name fails a step."""

from __future__ import annotations

import os
import signal

ENV = "PGAURORA_CRASH_AT"


def crash_point(name: str) -> None:
    """A place where a real crash must leave a recoverable state (read once per call; rarely reached)."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


FAIL_ENV = "PGAURORA_FAIL_AT"


def fail_point(name: str) -> None:
    """A step that may fail for real (a full disk, a port taken): with PGAURORA_FAIL_AT=name it fails here."""
    if os.environ.get(FAIL_ENV) == name:
        from .errors import ClusterError

        raise ClusterError(f"injected failure at {name} ({FAIL_ENV})")
