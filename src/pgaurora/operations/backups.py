"""Backups: WAL archiving that survives failover, backups from a replica, the schedule, and their status."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from ..compose.backrest import BackRest
from ..compose.runas import OsUser
from ..core.config import BackupConfig
from ..core.errors import ActionFailed, ClusterError
from ..core.sslcontexts import node_ssl
from .guard import ComposedCluster, ComposedNode, Host, exclusive

log = logging.getLogger("pgaurora.backups")

ARCHIVE_POLL = 2.0
SCHEDULE_POLL = 10.0
STOP_WAIT = 120.0
KINDS = ("full", "diff", "incr")
ARCHIVER_QUERY = """
SELECT last_archived_wal, extract(epoch FROM last_archived_time)::float8 AS last_archived_time, failed_count,
       last_failed_wal, extract(epoch FROM last_failed_time)::float8 AS last_failed_time,
       (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') AS pending
FROM pg_stat_archiver"""


@dataclass
class ArchiveStatus:
    node: str | None = None
    last_archived_wal: str | None = None
    last_archived_time: float | None = None
    failed_count: int = 0
    last_failed_wal: str | None = None
    last_failed_time: float | None = None
    pending: int = 0  # segments waiting for the archiver
    error: str | None = None


def engine_for(config: BackupConfig, root: Path, stanza: str, user: OsUser) -> BackRest:
    repository = Path(config.repository) if config.repository else None
    return BackRest(root, stanza, user, repository, config.passphrase(), config.retention_full, config.options)


class Backups:
    """Set up when the service starts; then it watches the writer's archiver, closes the WAL gap a dying
    primary leaves, and runs the schedule. Backups are taken from a healthy replica when there is one."""

    def __init__(self, service: Host, config: BackupConfig, cluster: ComposedCluster) -> None:
        self.service, self.config, self.cluster = service, config, cluster
        self.engine = engine_for(config, cluster.root, service.config.cluster, cluster.user)
        self.archive = ArchiveStatus()
        self.failures_seen = 0
        self.archive_failures = 0  # since start, for /metrics
        self.last_backup: dict[str, Any] | None = None
        self._timeline: int | None = None
        self._cached: list[dict[str, Any]] = []  # the repository's backups, as last read
        self._running: asyncio.Future[Any] | None = None  # the pgBackRest backup under way
        self._tasks: list[asyncio.Task[Any]] = []

    # -- setup and the loops -----------------------------------------------------------------
    async def start(self) -> None:
        writer = self._node(self.service.hub.current.writer)
        await asyncio.to_thread(self._setup, writer)
        self._timeline = self._writer_timeline()
        self.last_backup = await asyncio.to_thread(self._newest_backup)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch()), loop.create_task(self._schedule())]

    def _setup(self, writer: ComposedNode) -> None:
        self.engine.write_config()
        self.cluster.archive_with(self.engine.archive_command)
        self.engine.stanza_create(writer)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._running is not None and not self._running.done():  # pgBackRest is not left running behind us
            log.warning("waiting for the backup under way to finish (at most %.0f s)", STOP_WAIT)
            await asyncio.wait([self._running], timeout=STOP_WAIT)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(ARCHIVE_POLL)
            try:
                await self._close_gap()
                await self._poll_archiver()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a status loop never dies; it says what went wrong
                self.archive.error = f"{type(exc).__name__}: {exc}"

    async def _schedule(self) -> None:
        """Checked at once (a cluster without a backup gets its first now), then at a quarter of the
        shortest interval, at most every SCHEDULE_POLL seconds."""
        every = [x / 4 for x in (self.config.full_every, self.config.incr_every) if x]
        while True:
            kind = self._due(time.time())
            if kind is not None and not self.service.operations.locked():
                try:
                    await self.backup(kind, scheduled=True)
                except (ActionFailed, ClusterError) as exc:
                    self.service.events.record("backup_failed", f"scheduled {kind} backup failed: {exc}", type=kind)
            await asyncio.sleep(min([SCHEDULE_POLL, *every]))

    def _due(self, now: float) -> str | None:
        return due(self._cached, now, self.config.full_every, self.config.incr_every)

    # -- WAL archiving ---------------------------------------------------------------------------
    def _writer_timeline(self) -> int | None:
        topology = self.service.hub.current
        node = topology.by_name.get(topology.writer) if topology.writer else None
        return node.timeline if node is not None else None

    async def _close_gap(self) -> None:
        """After a promotion, push the old timeline's segments that the new writer received by streaming:
        the old primary may have died before archiving them, and recovery needs them to cross over."""
        timeline = self._writer_timeline()
        if timeline is None or self._timeline is None or timeline <= self._timeline:
            self._timeline = timeline if timeline is not None else self._timeline
            return
        old, writer = self._timeline, self._node(self.service.hub.current.writer)
        pushed = await asyncio.to_thread(self.engine.push_timeline, writer, old)
        self._timeline = timeline
        self.service.events.record(
            "archive_gap_closed",
            f"{writer.name} pushed the {len(pushed)} segment(s) of "
            f"timeline {old} it holds; the repository has them all",
            node=writer.name,
            timeline=old,
            segments=len(pushed),
        )

    async def _poll_archiver(self) -> None:
        topology = self.service.hub.current
        spec = next((n for n in self.service.config.nodes if n.name == topology.writer), None)
        if spec is None:
            return
        monitor = self.service.config.monitor
        conn = await asyncpg.connect(
            host=spec.host,
            port=spec.port,
            user=monitor.user,
            password=monitor.password,
            database=monitor.database,
            ssl=node_ssl(self.service.config.tls),
            timeout=5,
        )
        try:
            row = await conn.fetchrow(ARCHIVER_QUERY, timeout=5)
        finally:
            await conn.close()
        self.archive = ArchiveStatus(
            spec.name,
            row["last_archived_wal"],
            row["last_archived_time"],
            row["failed_count"],
            row["last_failed_wal"],
            row["last_failed_time"],
            row["pending"],
        )
        self._record_failures(spec.name)

    def _record_failures(self, node: str) -> None:
        failed = self.archive.failed_count
        newer = (self.archive.last_failed_time or 0) > (self.archive.last_archived_time or 0)
        if failed > self.failures_seen and newer:
            self.archive_failures += failed - self.failures_seen
            self.service.events.record(
                "archive_failed",
                f"{node} could not archive {self.archive.last_failed_wal} "
                f"({failed} failure(s) so far, {self.archive.pending} segment(s) waiting); "
                f"see {self.engine.dir / 'log'}",
                node=node,
                wal=self.archive.last_failed_wal,
            )
        self.failures_seen = failed

    # -- backups -----------------------------------------------------------------------------
    async def backup(self, kind: str = "full", scheduled: bool = False) -> dict[str, Any]:
        if kind not in KINDS:
            raise ActionFailed(f"backup type must be one of {', '.join(KINDS)}, not {kind!r}")
        async with exclusive(self.service):
            topology = self.service.hub.current
            if topology.writer is None:
                raise ActionFailed("no writer is known: a backup needs one")
            standby = next((self._node(n) for n in topology.readers), None)
            started = time.monotonic()
            self._running = asyncio.get_running_loop().run_in_executor(
                None, self.engine.backup, kind, self._node(topology.writer), standby
            )
            try:
                label = await asyncio.shield(self._running)
            except ClusterError as exc:
                self.service.events.record("backup_failed", f"{kind} backup failed: {exc}", type=kind)
                raise ActionFailed(f"{kind} backup failed: {exc}") from None
            took = time.monotonic() - started
            self.last_backup = await asyncio.to_thread(self._newest_backup)
            made = next(b for b in self._cached if b["label"] == label)
            source = standby.name if standby is not None else topology.writer
            self.service.events.record(
                "backup",
                f"{kind} backup {label} from {source} in {took:.1f} s" + (" (scheduled)" if scheduled else ""),
                label=label,
                type=kind,
                node=source,
                seconds=round(took, 2),
            )
            return {**describe(made), "node": source, "seconds": round(took, 2)}

    def _newest_backup(self) -> dict[str, Any] | None:
        self._cached = self.engine.backups()
        return self._cached[-1] if self._cached else None

    async def listing(self) -> dict[str, Any]:
        """Every backup, and the range of times a restore can reach."""
        backups = await asyncio.to_thread(self.engine.backups)
        self._cached = backups
        newest_wal = await asyncio.to_thread(self.engine.newest_archive_time)
        earliest = min((b["timestamp"]["stop"] + 1 for b in backups), default=None)  # see restore.check_range
        return {
            "backups": [describe(b) for b in backups],
            "encrypted": self.engine.encrypted,
            "repository": str(self.engine.repository),
            "restorable": {"from": earliest, "to": newest_wal} if earliest and newest_wal else None,
        }

    def _node(self, name: str | None) -> ComposedNode:
        if name is None:
            raise ActionFailed("no writer is known")
        return self.cluster.node(name)

    def document(self) -> dict[str, Any]:
        """For /status."""
        a = self.archive
        newest = describe(self.last_backup) if self.last_backup else None
        return {
            "repository": str(self.engine.repository),
            "encrypted": self.engine.encrypted,
            "archive": {
                "node": a.node,
                "last_archived_wal": a.last_archived_wal,
                "last_archived_time": a.last_archived_time,
                "pending_segments": a.pending,
                "failed_count": a.failed_count,
                "last_failed_wal": a.last_failed_wal,
                "error": a.error,
            },
            "newest_backup": newest,
        }


def due(backups: list[dict[str, Any]], now: float, full_every: float | None, incr_every: float | None) -> str | None:
    """The kind of backup the schedule wants now, if any: a full one when the newest full is older than
    full_every (or there is none), else an incremental one when the newest of any kind is older than incr_every."""
    last_full = max((b["timestamp"]["stop"] for b in backups if b["type"] == "full"), default=None)
    if full_every and (last_full is None or now - last_full >= full_every):
        return "full"
    last_any = max((b["timestamp"]["stop"] for b in backups), default=None)
    if incr_every and last_any is not None and now - last_any >= incr_every:
        return "incr"
    return None


def describe(backup: dict[str, Any]) -> dict[str, Any]:
    """One backup as pgaurora shows it."""
    stamp = backup["timestamp"]
    return {
        "label": backup["label"],
        "type": backup["type"],
        "started": stamp["start"],
        "finished": stamp["stop"],
        "seconds": stamp["stop"] - stamp["start"],
        "size_bytes": backup["info"]["size"],
        "repository_bytes": backup["info"]["repository"]["delta"],
        "wal": [backup["archive"]["start"], backup["archive"]["stop"]],
    }
