"""What the monitor does to nodes: detach and promote, re-point a replica, set synchronous standbys."""

from __future__ import annotations

import asyncio

import asyncpg

from ..core.config import Config, NodeConfig
from ..core.errors import ActionFailed
from ..core.ownlogin import connect_own

TIMELINE_SQL = """SELECT pg_is_in_recovery() AS in_recovery,
    CASE WHEN pg_is_in_recovery() THEN NULL
         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END AS timeline"""


def literal(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def conninfo_value(value: object) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def replication_conninfo(config: Config, upstream: NodeConfig, application_name: str) -> str:
    host, port = upstream.replication_address
    parts = {"host": host, "port": port, "user": config.failover.replication_user, "application_name": application_name}
    if config.failover.replication_passfile:
        parts["passfile"] = config.failover.replication_passfile
    elif config.failover.replication_password:
        parts["password"] = config.failover.replication_password
    return " ".join(f"{k}={conninfo_value(v)}" for k, v in parts.items())


async def connect(config: Config, node: NodeConfig, timeout: float | None = None) -> asyncpg.Connection:
    return await connect_own(
        config, node.host, node.port, timeout or config.monitor.probe_timeout * 2, "pgaurora-monitor"
    )


IDLE_REPLAY = 0.1  # seconds without replay progress after which the received WAL left is not replayable


async def _wait_replay(conn: asyncpg.Connection, timeout: float) -> None:
    """Let the replica replay what it received (bounded); resume replay if someone paused it. Done when replay
    reaches the received position, or stops moving for IDLE_REPLAY while behind it:
    - a restarted standby reports as received only the start of the segment it will stream from, below what it
      replayed, and with its primary gone that never moves (the wait took 5 s);
    - a primary killed mid-record leaves a received tail that is not a whole record: replay never reaches it
      (a drill's failover waited 3.9 s). pg_promote replays whatever whole records remain."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = None, loop.time()
    while loop.time() < deadline:
        row = await conn.fetchrow(
            "SELECT pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() AS done, pg_is_wal_replay_paused() AS paused,"
            " pg_last_wal_replay_lsn() - '0/0' AS replayed"
        )
        if row["paused"]:
            await conn.execute("SELECT pg_wal_replay_resume()")
        if row["done"] is not False:
            return
        if row["replayed"] != last:
            last, since = row["replayed"], loop.time()
        elif not row["paused"] and loop.time() - since >= IDLE_REPLAY:
            return
        await asyncio.sleep(0.01)


async def promote(config: Config, node: NodeConfig, sync_names: str | None, old_timeline: int | None = None) -> int:
    """Promote a replica and verify that it left recovery on a new timeline; returns that timeline."""
    conn = await connect(config, node, timeout=config.failover.promote_timeout)
    try:
        await _wait_replay(conn, config.failover.catchup_timeout)
        if sync_names is not None:
            await conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = {literal(sync_names)}")
        wait = max(1, int(config.failover.promote_timeout))
        if not await conn.fetchval("SELECT pg_promote(true, $1)", wait):
            raise ActionFailed(f"{node.name} did not finish promotion within {wait} s")
        await conn.execute("SELECT pg_reload_conf()")
        row = await conn.fetchrow(TIMELINE_SQL)
        if row["in_recovery"]:
            raise ActionFailed(f"{node.name} is still in recovery after pg_promote")
        if old_timeline is not None and row["timeline"] <= old_timeline:
            raise ActionFailed(f"{node.name} left recovery on timeline {row['timeline']}, not after {old_timeline}")
        return int(row["timeline"])
    finally:
        conn.terminate()


DETACHED_SQL = """SELECT NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE pid IS NOT NULL) AS detached,
    greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) - '0/0' AS position"""


async def detach(config: Config, replica: NodeConfig, timeout: float) -> int | None:
    """Stop a replica streaming (an empty primary_conninfo) and wait until its WAL receiver has exited: from
    then on it receives nothing, not even from an old writer that wakes up. Returns how far its WAL goes."""
    conn = await connect(config, replica)
    try:
        await conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
        await conn.execute("SELECT pg_reload_conf()")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (row := await conn.fetchrow(DETACHED_SQL))["detached"]:
            if loop.time() > deadline:
                raise ActionFailed(f"the WAL receiver of {replica.name} still runs {timeout:g} s after detaching it")
            await asyncio.sleep(0.01)
        return None if row["position"] is None else int(row["position"])
    finally:
        conn.terminate()


async def ensure_slot(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute(
        "SELECT pg_create_physical_replication_slot($1, true) WHERE NOT EXISTS "
        "(SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
        name,
    )


async def repoint(config: Config, replica: NodeConfig, writer: NodeConfig) -> None:
    """Make replica stream from writer through a slot named after it."""
    wconn = await connect(config, writer)
    try:
        await ensure_slot(wconn, replica.name)
    finally:
        wconn.terminate()
    conn = await connect(config, replica)
    try:
        conninfo = replication_conninfo(config, writer, replica.name)
        await conn.execute(f"ALTER SYSTEM SET primary_conninfo = {literal(conninfo)}")
        await conn.execute(f"ALTER SYSTEM SET primary_slot_name = {literal(replica.name)}")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        conn.terminate()


async def caught_up(config: Config, writer: NodeConfig, members: frozenset[str], wait: float, needed: int = 1) -> bool:
    """Have `needed` of members flushed everything the writer has written now? Polls pg_stat_replication for
    up to `wait` seconds. Called once the writer runs with the new synchronous standbys, so every commit
    acknowledged before that is behind the position read here."""
    conn = await connect(config, writer)
    try:
        target = await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'")
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            flushed = await conn.fetchval(
                "SELECT count(DISTINCT application_name) FROM pg_stat_replication "
                "WHERE application_name = ANY($1::text[]) AND flush_lsn - '0/0' >= $2",
                sorted(members),
                target,
            )
            if flushed >= needed:
                return True
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.02)
    finally:
        conn.terminate()


async def set_sync_names(config: Config, writer: NodeConfig, value: str) -> None:
    conn = await connect(config, writer)
    try:
        await conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = {literal(value)}")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        conn.terminate()
