"""The commands the monitor takes between its ticks: one frozen dataclass each, as Monitor.request() accepts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..core.config import Config


@dataclass(frozen=True)
class Switchover:
    """Planned change of writer, to `to` or to the best replica."""

    kind: ClassVar[str] = "switchover"
    to: str | None = None


@dataclass(frozen=True)
class Failover:
    """An operator's failover from a writer that is down; unsafe only with accept_data_loss."""

    kind: ClassVar[str] = "failover"
    to: str | None = None
    accept_data_loss: bool = False


@dataclass(frozen=True)
class Rejoin:
    """Rejoin a fenced former primary as a replica."""

    kind: ClassVar[str] = "rejoin"
    node: str


@dataclass(frozen=True)
class Drain:
    """Take a replica out of the reader endpoint."""

    kind: ClassVar[str] = "drain"
    node: str


@dataclass(frozen=True)
class Undrain:
    """Put a drained replica back in the reader endpoint."""

    kind: ClassVar[str] = "undrain"
    node: str


@dataclass(frozen=True)
class Retire:
    """A replica leaves (or, with leaving=False, rejoins) the voters and synchronous standbys."""

    kind: ClassVar[str] = "retire"
    node: str
    leaving: bool = True


@dataclass(frozen=True)
class Reconfigure:
    """Take a reloaded configuration: probe added nodes, forget removed ones."""

    kind: ClassVar[str] = "reconfigure"
    config: Config
    added: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True)
class Replace:
    """Serve a new set of nodes with `writer` as its writer, in a new epoch (a backtrack's swap). With
    stop_leaving, writes are held and pooled transactions drained first, and then it stops the nodes leaving."""

    kind: ClassVar[str] = "replace"
    config: Config
    writer: str
    reason: str
    stop_leaving: Callable[[], Awaitable[None]] | None = None


Command = Switchover | Failover | Rejoin | Drain | Undrain | Retire | Reconfigure | Replace


def arguments(command: Command) -> dict[str, Any]:
    """The command's fields, as its handler's keyword arguments (no deep copy, unlike dataclasses.asdict)."""
    return {f.name: getattr(command, f.name) for f in fields(command)}
