"""Crash points for tests: with PGAURORA_CRASH_AT=name, the process SIGKILLs itself when it reaches name."""

from __future__ import annotations

import os
import signal

ENV = "PGAURORA_CRASH_AT"


def crash_point(name: str) -> None:
    """A place where a real crash must leave a recoverable state (read once per call; rarely reached)."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
