"""Probe one node over asyncpg; a probe never raises, it returns a NodeStatus."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from ..core.config import MonitorConfig, NodeConfig

T = TypeVar("T")

log = logging.getLogger("pgaurora.monitor")

_CONNINFO_KEY = re.compile(r"\s*(\w+)\s*=\s*")

# After probing a primary, the prober writes a heartbeat: a tiny non-transactional WAL message that
# the replicas receive within wal_writer_delay. Their receipt time is then the witness that the
# primary is alive, even on an idle cluster (see decide.hearing_writer).
HEARTBEAT_SQL = "SELECT pg_logical_emit_message(false, 'pgaurora', 'heartbeat')"

PROBE_SQL = """
SELECT pg_is_in_recovery() AS in_recovery,
       (SELECT system_identifier FROM pg_control_system()) AS system_id,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() - '0/0' END AS current_lsn,
       pg_last_wal_receive_lsn() - '0/0' AS receive_lsn,
       pg_last_wal_replay_lsn() - '0/0' AS replay_lsn,
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
            ELSE EXTRACT(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
       END AS lag_seconds,
       CASE WHEN pg_is_in_recovery()
            THEN COALESCE(r.received_tli, (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END AS timeline,
       r.status AS receiver_status, r.sender_host, r.sender_port,
       EXTRACT(epoch FROM clock_timestamp() - r.last_msg_receipt_time)::float8 AS receipt_age,
       current_setting('synchronous_standby_names') AS sync_names,
       current_setting('primary_conninfo') AS primary_conninfo,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END AS replay_paused
FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true
"""


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What one probe saw of one node."""

    name: str
    reachable: bool
    error: str | None = None
    in_recovery: bool | None = None
    system_id: int | None = None
    timeline: int | None = None
    current_lsn: int | None = None  # primaries only
    receive_lsn: int | None = None  # replicas only
    replay_lsn: int | None = None
    lag_seconds: float | None = None
    receiver_status: str | None = None
    upstream_host: str | None = None
    upstream_port: int | None = None
    sync_names: str | None = None
    conninfo_host: str | None = None  # where primary_conninfo points
    conninfo_port: int | None = None
    replay_paused: bool = False
    receipt_age: float | None = None  # seconds since the WAL receiver last heard from its upstream
    probed_at: float = 0.0

    @classmethod
    def unknown(cls, name: str, error: str) -> NodeStatus:
        return cls(name=name, reachable=False, error=error, probed_at=time.time())

    @property
    def is_primary(self) -> bool:
        return self.reachable and self.in_recovery is False

    @property
    def is_replica(self) -> bool:
        return self.reachable and self.in_recovery is True

    @property
    def wal_position(self) -> int:
        """How far this node's WAL goes: written (primary), else the furthest of received and replayed.

        A restarted standby replays the WAL it holds before it asks to stream, and then reports the start
        of the segment it asks for as received, behind what it replayed: hence the furthest of the two.
        """
        if self.current_lsn is not None:
            return self.current_lsn
        known = [lsn for lsn in (self.receive_lsn, self.replay_lsn) if lsn is not None]
        return max(known, default=-1)

    @property
    def position_settled(self) -> bool:
        """Does wal_position cover all the WAL this replica holds? Not while a restarted standby is
        still replaying its own pg_wal (it has not asked to stream yet, so nothing is 'received')."""
        return self.is_replica and self.receive_lsn is not None

    def streams_from(self, host: str, port: int) -> bool:
        return self.receiver_status == "streaming" and self.upstream_host == host and self.upstream_port == port

    def heard_within(self, seconds: float) -> bool:
        return self.receipt_age is not None and self.receipt_age <= seconds


def _as_int(value: Any) -> int | None:
    return None if value is None else int(value)


def parse_conninfo(conninfo: str | None) -> dict[str, str]:
    """key=value pairs of a libpq connection string; values may be 'quoted' with backslash escapes."""
    text, pos, fields = conninfo or "", 0, {}
    while pos < len(text):
        match = _CONNINFO_KEY.match(text, pos)
        if not match:
            break
        pos, value = match.end(), []
        if text[pos : pos + 1] == "'":
            pos += 1
            while pos < len(text) and text[pos] != "'":
                if text[pos] == "\\" and pos + 1 < len(text):
                    pos += 1
                value.append(text[pos])
                pos += 1
            pos += 1
        else:
            while pos < len(text) and not text[pos].isspace():
                value.append(text[pos])
                pos += 1
        fields[match.group(1)] = "".join(value)
    return fields


def _conninfo_target(conninfo: str | None) -> dict[str, Any]:
    """host and port that primary_conninfo points to (the password and the rest are ignored)."""
    fields = parse_conninfo(conninfo)
    port = fields.get("port", "5432")
    return {"conninfo_host": fields.get("host"), "conninfo_port": int(port) if port.isdigit() else None}


def status_from_row(name: str, row: Any) -> NodeStatus:
    return NodeStatus(
        name=name,
        reachable=True,
        in_recovery=row["in_recovery"],
        system_id=_as_int(row["system_id"]),
        timeline=_as_int(row["timeline"]),
        current_lsn=_as_int(row["current_lsn"]),
        receive_lsn=_as_int(row["receive_lsn"]),
        replay_lsn=_as_int(row["replay_lsn"]),
        lag_seconds=row["lag_seconds"],
        receiver_status=row["receiver_status"],
        upstream_host=row["sender_host"],
        upstream_port=row["sender_port"],
        sync_names=row["sync_names"],
        **_conninfo_target(row["primary_conninfo"]),
        replay_paused=bool(row["replay_paused"]),
        receipt_age=row["receipt_age"],
        probed_at=time.time(),
    )


class Prober:
    """Keeps one monitoring connection per node and probes through it."""

    def __init__(self, node: NodeConfig, monitor: MonitorConfig, ssl: object = False) -> None:
        self.node, self.monitor = node, monitor
        self.ssl = ssl  # asyncpg's ssl argument, from [tls] backend_tls
        self._conn: asyncpg.Connection | None = None
        self._heartbeat = True

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=self.node.host,
            port=self.node.port,
            user=self.monitor.user,
            password=self.monitor.password,
            database=self.monitor.database,
            timeout=self.monitor.probe_timeout,
            ssl=self.ssl,
            server_settings={"application_name": "pgaurora-monitor"},
        )

    async def probe(self) -> NodeStatus:
        """At most probe_timeout long, whatever the node does (a frozen host included)."""
        outcome = await bounded(self._probe(), self.monitor.probe_timeout)
        if isinstance(outcome, NodeStatus):
            return outcome
        self._drop()
        return NodeStatus.unknown(self.node.name, _describe(outcome))

    async def _probe(self) -> NodeStatus:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self.connect()
        row = await self._conn.fetchrow(PROBE_SQL, timeout=self.monitor.probe_timeout)
        status = status_from_row(self.node.name, row)
        if status.is_primary and self._heartbeat:
            await self._beat()
        return status

    async def _beat(self) -> None:
        if self._conn is None:
            return
        try:
            await self._conn.execute(HEARTBEAT_SQL, timeout=self.monitor.probe_timeout)
        except asyncpg.PostgresError as exc:  # e.g. a monitor user without the privilege: probe on without it
            self._heartbeat = False
            log.warning(
                "no heartbeat on %s (%s): on an idle cluster, replicas then vouch for a primary the "
                "monitor cannot reach only through wal_sender_timeout keepalives",
                self.node.name,
                exc,
            )

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # immediate: closes the socket, no round trip

    async def close(self) -> None:
        self._drop()


async def bounded(coro: Coroutine[Any, Any, T], timeout: float) -> T | BaseException:
    """The coroutine's result, or the exception it raised, or TimeoutError: never later than timeout.

    Unlike asyncio.timeout(), this does not wait for the coroutine to finish its own cancellation
    (asyncpg may await a frozen server while cancelling): the task is cancelled and left behind.
    """
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:  # the caller is cancelled (shutdown): so is its work
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise
    if task in done:
        return task.exception() or task.result()
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
    return TimeoutError(f"no answer within {timeout:g} s")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "probe timed out"
    return f"{type(exc).__name__}: {exc}".strip()
