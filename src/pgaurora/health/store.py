"""The monitor's durable memory in one JSON file, replaced atomically: temp file, fsync, rename, fsync dir."""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..core.errors import StateError
from .decide import ClusterState

FORMAT = 1
RECOVERY_HINT = (
    "start with --reset-state to rebuild it from what the nodes report (the primary, the "
    "timelines), or restore the file from a backup"
)


def to_document(state: ClusterState) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "writer": state.writer,
        "epoch": state.epoch,
        "timeline": state.timeline,
        "system_id": state.system_id,
        "fenced": sorted(state.fenced),
        "voters": sorted(state.voters),
        "proven": state.proven,
        "timelines": dict(sorted(state.timelines.items())),
        "drained": sorted(state.drained),
    }


def from_document(data: object, nodes: Collection[str]) -> ClusterState:
    """A ClusterState from a saved document; ValueError naming what is wrong with it."""
    if not isinstance(data, dict):
        raise ValueError("it is not a JSON object")
    writer, epoch = data.get("writer"), data.get("epoch")
    if writer is not None and writer not in nodes:
        raise ValueError(f"its writer {writer!r} is not a node of this configuration")
    if not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"its epoch {epoch!r} is not a whole number")
    fenced, voters, drained = data.get("fenced", []), data.get("voters", []), data.get("drained", [])
    if not all(isinstance(n, str) for n in [*fenced, *voters, *drained]):
        raise ValueError("its fenced, voting or drained nodes are not names")
    proven = data.get("proven", 1)  # files written before the commit quorum of k had none: ANY 1
    timelines = data.get("timelines", {})
    if not isinstance(timelines, dict) or not all(
        isinstance(n, str) and isinstance(t, int) and t > 0 for n, t in timelines.items()
    ):
        raise ValueError("its timelines are not node names with whole numbers")
    if not isinstance(proven, int) or proven < 1:
        raise ValueError(f"its proven acknowledgements {proven!r} is not a whole number of at least 1")
    return ClusterState(
        writer=writer,
        epoch=epoch,
        timeline=data.get("timeline"),
        system_id=data.get("system_id"),
        fenced=frozenset(fenced) & set(nodes),
        voters=frozenset(voters) & set(nodes),
        proven=proven,
        timelines={n: t for n, t in timelines.items() if n in nodes},
        drained=frozenset(drained) & set(nodes),
    )


class StateFile:
    """monitor.json: load() once at start, save() on every durable change."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self, nodes: Collection[str]) -> ClusterState | None:
        """The saved state; None when there is no file; StateError when it is empty or unreadable."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the monitor's state file {self.path}: {exc}; {RECOVERY_HINT}") from None
        if not text.strip():
            raise StateError(
                f"the monitor's state file {self.path} is empty (a crash or a full disk during a "
                f"write?); {RECOVERY_HINT}"
            )
        try:
            return from_document(json.loads(text), nodes)
        except ValueError as exc:  # JSONDecodeError included
            raise StateError(f"the monitor's state file {self.path} is unreadable ({exc}); {RECOVERY_HINT}") from None

    def save(self, state: ClusterState) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        data = (json.dumps(to_document(state)) + "\n").encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dirfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
