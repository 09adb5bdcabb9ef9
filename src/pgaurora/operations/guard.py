"""The guards every long operation shares: a composed cluster, one operation at a time, sessions ended on purpose."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..core.config import Config
from ..core.errors import ActionFailed
from ..core.eventlog import EventLog
from ..core.topology import TopologyHub
from ..health.commands import Command

if TYPE_CHECKING:
    from ..compose.runas import OsUser

DRAIN_TIMEOUT = 30.0


class ComposedNode(Protocol):
    """What the operations use of one node of a composed cluster (compose.node.LocalNode)."""

    name: str
    host: str
    port: int
    datadir: Path
    logfile: Path
    sockdir: Path

    @property
    def running(self) -> bool: ...

    def start(self, timeout: float = 60) -> None: ...

    def stop(self, mode: str = "fast", timeout: float = 60) -> None: ...

    def stopped_as_primary(self) -> bool: ...

    def sql(self, query: str, timeout: float = 60) -> str: ...


class ComposedCluster(Protocol):
    """What the operations use of a cluster pgaurora composed (compose.local.LocalCluster, DockerCluster)."""

    root: Path
    user: OsUser
    backend: str
    parked: list[str]

    @property
    def nodes(self) -> Sequence[ComposedNode]: ...

    def node(self, name: str) -> ComposedNode: ...

    def add_replica(self, upstream: str) -> ComposedNode: ...

    def remove_replica(self, name: str, upstream: str) -> None: ...

    def check_restart(self, name: str, settings: dict[str, str], bindir: str | None) -> dict[str, str]: ...

    def restart_node(self, name: str, settings: dict[str, str], bindir: str | None) -> None: ...

    def use_bindir(self, bindir: str) -> None: ...

    def archive_with(self, command_for: Callable[[ComposedNode], str]) -> None: ...

    def restore_set(self, primary_from: Callable[[ComposedNode], None], replicas: int) -> Sequence[ComposedNode]: ...

    def promote_anew(self, name: str, restore_command: Callable[[ComposedNode], str]) -> None: ...

    def park(self, names: list[str]) -> None: ...

    def forget_nodes(self, names: list[str]) -> None: ...


class Sessions(Protocol):
    """The proxy's count of live sessions per node, and of pooled connections lent there (transactions)."""

    def count(self, node: str) -> int: ...

    def lent_on(self, node: str) -> int: ...


class Commands(Protocol):
    """The monitor, as the operations use it: commands run between its ticks."""

    async def request(self, command: Command) -> dict[str, Any]: ...


class Host(Protocol):
    """What the operations use of the running service (service.app.Service), read-only."""

    @property
    def cluster(self) -> ComposedCluster | None: ...

    @property
    def member(self) -> object | None: ...  # several instances ([dcs]): the operations refuse

    @property
    def operations(self) -> asyncio.Lock: ...

    @property
    def proxy_state(self) -> Sessions: ...

    @property
    def config(self) -> Config: ...

    @property
    def events(self) -> EventLog: ...

    @property
    def hub(self) -> TopologyHub: ...

    @property
    def monitor(self) -> Commands: ...

    async def apply_config(self, new: Config, why: str) -> object: ...

    async def replace_nodes(
        self, new: Config, writer: str, reason: str, stop_leaving: Callable[[], Awaitable[None]] | None = None
    ) -> dict[str, Any]: ...


def composed(service: Host, what: str) -> ComposedCluster:
    """The cluster pgaurora composed (its controller), or ActionFailed saying why `what` cannot run."""
    cluster = service.cluster
    if cluster is None:
        raise ActionFailed(
            f"{what} works on clusters pgaurora composes (`pgaurora up`); for a cluster of your "
            "own, change the nodes in the config file and reload"
        )
    if service.member is not None:
        raise ActionFailed(f"{what} is not available with several instances ([dcs])")
    return cluster


@asynccontextmanager
async def exclusive(service: Host) -> AsyncIterator[None]:
    """One scaling or maintenance operation at a time; a second is refused rather than queued."""
    if service.operations.locked():
        raise ActionFailed(
            "another replicas add/remove or maintenance operation is running; try again when "
            "it is done (pgaurora events)"
        )
    async with service.operations:
        yield


async def end_sessions(service: Host, cluster: ComposedCluster, name: str, drain_timeout: float) -> int:
    """Wait up to drain_timeout for a drained node's sessions, and the pooled transactions running there, to end
    by themselves (its pools lend it nothing new), then end the rest: PostgreSQL sends each FATAL 57P01
    (terminating connection due to administrator command). How many were ended."""
    state = service.proxy_state
    deadline = time.monotonic() + drain_timeout
    while (state.count(name) or state.lent_on(name)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    left = state.count(name) + state.lent_on(name)
    if left:
        await asyncio.to_thread(
            cluster.node(name).sql,
            "SELECT count(pg_terminate_backend(pid)) FROM "
            "pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
    return left
