"""Run a Service on uvloop until SIGINT or SIGTERM, and report readiness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Callable

import asyncpg
import uvloop

from ..core.config import ClientTls
from ..core.errors import ConfigError
from ..service.app import Service

log = logging.getLogger("pgaurora")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )


async def check_endpoint(
    host: str, port: int, user: str, password: str | None, tls: bool = False, within: float = 30.0
) -> bool:
    """Does a real client get through this endpoint (over TLS when `tls`)? Returns pg_is_in_recovery() there.
    A session lost on the way (a switchover or a failover just then) is tried again until `within` runs out."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            return await _query_through(host, port, user, password, tls)
        except (
            asyncpg.ConnectionDoesNotExistError,
            asyncpg.PostgresConnectionError,
            asyncpg.AdminShutdownError,
            asyncpg.CannotConnectNowError,
            asyncpg.InternalClientError,
            ConnectionError,
        ):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _query_through(host: str, port: int, user: str, password: str | None, tls: bool) -> bool:
    conn = await asyncpg.connect(
        host=host,
        port=port,
        user=user,
        password=password,
        database="postgres",
        timeout=10,
        ssl="require" if tls else False,
    )
    try:
        return await conn.fetchval("SELECT pg_is_in_recovery()")
    finally:
        try:
            await asyncio.wait_for(conn.close(), 5)
        except Exception:  # the session is already gone (what a retry is for): just drop it
            conn.terminate()


async def _serve(service: Service, on_ready: Callable[[], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, service)
    await service.start()
    try:
        ready = loop.create_task(_become_ready(service, on_ready))
        stopping = loop.create_task(stop.wait())
        await asyncio.wait([ready, stopping], return_when=asyncio.FIRST_COMPLETED)  # SIGTERM ends a wait too
        if not ready.done():
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
        elif (failure := ready.exception()) is not None:
            stopping.cancel()
            raise failure
        await stopping
    finally:
        await service.stop()


async def _become_ready(service: Service, on_ready: Callable[[], None]) -> None:
    if not await service.wait_ready(timeout=60):
        log.error("no usable topology after 60 s: %s", service.hub.current.reason)
    m, c = service.config.monitor, service.config
    tls = c.tls.client_mode is ClientTls.REQUIRE
    await check_endpoint(c.writer.host, c.writer.port, m.user, m.password, tls)
    await check_endpoint(c.reader.host, c.reader.port, m.user, m.password, tls)
    on_ready()


def _reload(service: Service) -> None:
    asyncio.get_running_loop().create_task(_reload_now(service))


async def _reload_now(service: Service) -> None:
    try:
        result = await service.reload()
        log.info("SIGHUP: reloaded (%s)", result)
    except ConfigError as exc:
        log.error("SIGHUP: %s; the running configuration and certificate stay in use", exc)


FDS_PER_SESSION = 4  # client and server sockets, and the native relay's duplicates of both


def raise_fd_limit(max_clients: int) -> int:
    """Lift the soft open-files limit toward what max_client_connections needs (as HAProxy does for
    maxconn); warn, naming the setting, when the hard limit is too low. Returns the soft limit."""
    want = FDS_PER_SESSION * max_clients + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft < want:
        log.warning(
            "open files limited to %d (hard limit); proxy.max_client_connections = %d needs %d", soft, max_clients, want
        )
    return soft


def serve(service: Service, on_ready: Callable[[], None]) -> None:
    raise_fd_limit(service.config.proxy.max_client_connections)
    uvloop.run(_serve(service, on_ready))
