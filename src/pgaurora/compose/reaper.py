"""Reaps exited PostgreSQL servers that are this process's children, so a killed node frees its PID.

A postmaster killed from outside (a drill, an operator) stays a zombie until its parent waits for it,
and while its PID exists, a new postmaster in the same data directory refuses to start ("lock file
already exists"). Nodes are waited for when pgaurora stops or restarts them; this covers the rest.
Only zombies named postgres are waited for, so subprocess's own waits are never disturbed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading

log = logging.getLogger("pgaurora.compose")

PR_SET_CHILD_SUBREAPER = 36


def _zombie_servers() -> list[int]:
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1].split()
        if comm == "postgres" and rest[0] == "Z" and int(rest[1]) == me:
            found.append(int(entry))
    return found


def reap_once() -> int:
    reaped = 0
    for pid in _zombie_servers():
        try:
            os.waitpid(pid, os.WNOHANG)
            reaped += 1
        except ChildProcessError:  # a LocalNode waited for it first
            pass
    return reaped


def become_subreaper() -> None:
    """Orphans of our descendants (the servers of a pgaurora we killed) become our children, not init's:
    init may not reap at all (it does not on some VM sandboxes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("could not become a child subreaper (errno %d)", ctypes.get_errno())


def start_reaper(interval: float = 0.2) -> threading.Event:
    """A daemon thread that reaps every interval; set the returned event to stop it."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            reap_once()

    threading.Thread(target=run, name="pgaurora-reaper", daemon=True).start()
    return stop
