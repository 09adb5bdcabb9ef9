"""The guards every long operation shares: a composed cluster, one operation at a time, sessions ended on purpose."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from ..core.errors import ActionFailed

if TYPE_CHECKING:
    from ..service.app import Service

DRAIN_TIMEOUT = 30.0


def composed(service: Service, what: str):
    """The cluster pgaurora composed (its controller), or ActionFailed saying why `what` cannot run."""
    controller = service.monitor.controller
    if controller is None or not hasattr(controller, "add_replica"):
        raise ActionFailed(
            f"{what} works on clusters pgaurora composes (`pgaurora up`); for a cluster of your "
            "own, change the nodes in the config file and reload"
        )
    if service.member is not None:
        raise ActionFailed(f"{what} is not available with several instances ([dcs])")
    return controller


@asynccontextmanager
async def exclusive(service: Service):
    """One scaling or maintenance operation at a time; a second is refused rather than queued."""
    if service.operations.locked():
        raise ActionFailed(
            "another replicas add/remove or maintenance operation is running; try again when "
            "it is done (pgaurora events)"
        )
    async with service.operations:
        yield


async def end_sessions(service: Service, cluster, name: str, drain_timeout: float) -> int:
    """Wait up to drain_timeout for a drained node's sessions to end by themselves, then end the rest: PostgreSQL
    sends each FATAL 57P01 (terminating connection due to administrator command). How many were ended."""
    state = service.proxy_state
    deadline = time.monotonic() + drain_timeout
    while state.count(name) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    left = state.count(name)
    if left:
        await asyncio.to_thread(
            cluster.node(name).sql,
            "SELECT count(pg_terminate_backend(pid)) FROM "
            "pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
    return left
