"""The immutable Topology snapshot and the hub through which the monitor alone publishes it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any


class Role(str, Enum):
    PRIMARY = "primary"
    REPLICA = "replica"
    FENCED = "fenced"
    UNKNOWN = "unknown"


class Health(str, Enum):
    HEALTHY = "healthy"
    LAGGING = "lagging"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class NodeState:
    name: str
    host: str
    port: int
    role: Role = Role.UNKNOWN
    health: Health = Health.UNREACHABLE
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    timeline: int | None = None
    lsn: int | None = None
    upstream: str | None = None
    drained: bool = False  # out of the reader endpoint by an operator's `drain`, still replicating

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Topology:
    """What the endpoints, DNS and status read; replaced whole, never mutated."""

    cluster: str
    nodes: tuple[NodeState, ...] = ()
    writer: str | None = None
    readers: tuple[str, ...] = ()  # replicas eligible for reads, in stable order
    epoch: int = 0
    version: int = 0
    reason: str = "starting"
    sync_standbys: str = ""
    voters: tuple[str, ...] = ()  # all but proven-1 must answer before a failover can prove it loses nothing
    proven: int = 1  # the acknowledgements the voters' proof relies on (sync_acks, when all is well)
    survivable: int = 0  # nodes (the writer first) that can fail at once now, with no commit lost and no person
    failover_safe: bool = False  # would a failover now keep every acknowledged commit?
    failover_outlook: str = ""  # why, or why not
    proxies: tuple[str, ...] = ()  # hosts of the live pgaurora instances (proxy.<zone>)
    published_at: float = 0.0
    by_name: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {n.name: n for n in self.nodes})

    def node(self, name: str | None) -> NodeState | None:
        return self.by_name.get(name) if name else None

    @property
    def writer_node(self) -> NodeState | None:
        return self.node(self.writer)

    @property
    def reader_nodes(self) -> tuple[NodeState, ...]:
        return tuple(self.by_name[name] for name in self.readers)


class TopologyHub:
    """Holds the current Topology; only the monitor calls publish()."""

    def __init__(self, initial: Topology) -> None:
        self._current = initial
        self._changed = asyncio.Condition()
        self._listeners: list[Callable[[Topology, Topology], None]] = []

    @property
    def current(self) -> Topology:
        return self._current

    def subscribe(self, listener: Callable[[Topology, Topology], None]) -> None:
        """Call listener(old, new) synchronously on every publish."""
        self._listeners.append(listener)

    async def publish(self, new: Topology) -> Topology:
        old = self._current
        new = replace(new, version=old.version + 1, published_at=asyncio.get_running_loop().time())
        self._current = new
        for listener in self._listeners:
            listener(old, new)
        async with self._changed:
            self._changed.notify_all()
        return new

    async def wait_for(self, predicate: Callable[[Topology], bool], timeout: float) -> Topology | None:
        """The first topology satisfying predicate, or None after timeout seconds."""
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(lambda: predicate(self._current))
                    return self._current
        except TimeoutError:
            return None


def loss_bound_bytes(topology: Topology) -> int | None:
    """How much acknowledged WAL a failover could lose now: 0 under synchronous commit, else how far
    the writer is ahead of the most advanced replica (None when that cannot be known)."""
    if topology.sync_standbys:
        return 0
    writer = topology.writer_node
    replicas = [n.lsn for n in topology.nodes if n.role is Role.REPLICA and n.lsn is not None]
    if writer is None or writer.lsn is None or not replicas:
        return None
    return max(0, writer.lsn - max(replicas))
