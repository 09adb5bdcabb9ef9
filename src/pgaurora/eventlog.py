"""The event log: every failover, switchover, fence and rejoin as one JSON line."""

from __future__ import annotations

import collections
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("pgaurora.events")


class EventLog:
    """Appends events to a JSON-lines file (if given) and keeps the latest in memory for GET /events."""

    def __init__(self, path: str | Path | None = None, keep: int = 1000) -> None:
        self.path = Path(path) if path else None
        self._recent: collections.deque[dict] = collections.deque(maxlen=keep)

    def record(self, kind: str, reason: str, **fields: object) -> dict:
        now = time.time()
        event = {"time": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
                 "ts": round(now, 3), "kind": kind, "reason": reason, **fields}
        self._recent.append(event)
        log.warning("%s: %s", kind, reason)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(event, default=str) + "\n")
        return event

    def recent(self, limit: int | None = None) -> list[dict]:
        items = list(self._recent)
        return items[-limit:] if limit else items
