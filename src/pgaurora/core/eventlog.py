"""The event log: every failover, switchover, fence and rejoin as one JSON line, durable before it counts."""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("pgaurora.events")


class EventLog:
    """Appends events to a JSON-lines file (if given) and keeps the latest in memory for GET /events.

    Each line is fsynced before record() returns, so an intent written before an action survives a
    crash during that action. At start, the history already in the file is read back.
    """

    def __init__(self, path: str | Path | None = None, keep: int = 1000) -> None:
        self.path = Path(path) if path else None
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._recent.extend(self._read_history())
        self.counts: collections.Counter[str] = collections.Counter()  # events recorded by this process, by kind

    def _read_history(self) -> list[dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return []
        text = self.path.read_text(errors="replace")
        if text and not text.endswith("\n"):  # end a torn last line, so the next event starts its own
            with self.path.open("a") as f:
                f.write("\n")
        events = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                events.append(json.loads(line))
            except ValueError:  # a line torn by a crash mid-write: the rest of the history still counts
                log.warning("%s:%d is not a complete event; skipped", self.path, number)
        return events

    @property
    def has_history(self) -> bool:
        return bool(self._recent)

    def record(self, kind: str, reason: str, **fields: object) -> dict[str, Any]:
        now = time.time()
        event = {
            "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "ts": round(now, 3),
            "kind": kind,
            "reason": reason,
            **fields,
        }
        self._recent.append(event)
        self.counts[kind] += 1
        log.warning("%s: %s", kind, reason)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(event, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return event

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        items = list(self._recent)
        return items[-limit:] if limit else items
