"""Connections of pgaurora's own to a node, as the monitor's role (probes, actions, WAL positions)."""

from __future__ import annotations

import asyncpg

from .config import Config
from .sslcontexts import node_ssl


async def connect_own(config: Config, host: str, port: int, timeout: float, name: str) -> asyncpg.Connection:
    """Log into a node as `[monitor] user`, over `[tls] backend_tls`; name: its application_name."""
    m = config.monitor
    return await asyncpg.connect(
        host=host,
        port=port,
        user=m.user,
        password=m.password,
        database=m.database,
        timeout=timeout,
        ssl=node_ssl(config.tls),
        server_settings={"application_name": name},
    )
