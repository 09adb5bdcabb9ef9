"""Backtrack: the cluster's data rewound to a point in time in place, at the same endpoints, and back again."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..compose.backrest import recovered_to
from ..compose.restore import check_range, parse_time
from ..core import config as config_mod
from ..core.errors import ActionFailed, ClusterError
from .backups import Backups
from .guard import ComposedCluster, ComposedNode, Host, composed, exclusive

STATE_FILE = "backtrack.json"
EXPIRY_POLL = 60.0


class BacktrackHost(Host, Protocol):
    """The running service, with the backups a backtrack restores from."""

    @property
    def backups(self) -> Backups | None: ...


class Backtrack:
    """Restores the time asked for into a fresh set of nodes while the old set serves; then stops the old set
    and moves both endpoints to the new one in a new epoch. The old set stays, stopped, for `keep` seconds:
    undo() swaps back."""

    def __init__(self, service: BacktrackHost, keep: float) -> None:
        self.service, self.keep = service, keep
        self._task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._expire())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def run(self, target: str) -> dict[str, Any]:
        cluster, backups = self._parts()
        moment = parse_time(target)
        async with exclusive(self.service):
            await asyncio.to_thread(check_range, backups.engine, moment)
            if cluster.parked:  # one backtrack can be undone at a time: the one before is over
                await self._forget(cluster, "a new backtrack began")
            old = [n.name for n in cluster.nodes]
            started = time.monotonic()

            def restore(node: ComposedNode) -> None:
                return backups.engine.restore(node.datadir, moment.isoformat(sep=" "))

            try:
                made = await asyncio.to_thread(cluster.restore_set, restore, len(old) - 1)
            except ClusterError as exc:
                raise ActionFailed(f"backtrack failed before any endpoint moved: {exc}") from None
            recovered = recovered_to(made[0].logfile.read_text(errors="replace"))
            restored = time.monotonic() - started
            pause = await self._swap(
                cluster,
                leaving=old,
                coming=[n.name for n in made],
                writer=made[0].name,
                reason=f"backtrack to {target}: the data as of {recovered}",
            )
            self._remember({"previous": old, "until": time.time() + self.keep, "target": target})
            return {
                "target": target,
                "recovered_to": recovered,
                "writer": made[0].name,
                "nodes": [n.name for n in made],
                "restore_seconds": round(restored, 2),
                "unavailable_seconds": round(pause, 3),
                "previous": old,
                "kept_until": time.time() + self.keep,
            }

    async def undo(self) -> dict[str, Any]:
        cluster, backups = self._parts()
        remembered = self._remembered()
        if remembered is None:
            raise ActionFailed("there is no backtrack to undo (or its nodes were removed when backtrack_keep ran out)")
        async with exclusive(self.service):
            previous = remembered["previous"]
            current = [n.name for n in cluster.nodes if n.name not in previous]
            writer = await asyncio.to_thread(self._start, cluster, previous, backups.engine.restore_command)
            if writer is None:
                raise ActionFailed(f"none of {', '.join(previous)} came back as a primary; nothing was moved")
            pause = await self._swap(
                cluster,
                leaving=current,
                coming=previous,
                writer=writer,
                reason=f"backtrack to {remembered['target']} undone",
            )
            self._remember(
                {"previous": current, "until": time.time() + self.keep, "target": f"undo of {remembered['target']}"}
            )
            return {"writer": writer, "nodes": previous, "unavailable_seconds": round(pause, 3), "previous": current}

    async def _swap(
        self, cluster: ComposedCluster, leaving: list[str], coming: list[str], writer: str, reason: str
    ) -> float:
        """Hold writes and let pooled transactions finish, stop the leaving nodes, serve the coming ones. The
        pause: from the hold to the new writer."""
        started = time.monotonic()

        async def stop_leaving() -> None:
            await asyncio.to_thread(self._stop, cluster, leaving)

        await self.service.replace_nodes(self._config_for(cluster, coming), writer, reason, stop_leaving)
        pause = time.monotonic() - started
        await asyncio.to_thread(cluster.park, leaving)  # a later `pgaurora up` starts and serves only `coming`
        return pause

    @staticmethod
    def _stop(cluster: ComposedCluster, names: list[str]) -> None:
        for name in names:
            node = cluster.node(name)
            if node.running:
                node.stop("fast")

    @staticmethod
    def _start(
        cluster: ComposedCluster, names: list[str], restore_command: Callable[[ComposedNode], str]
    ) -> str | None:
        """Start the nodes; the one that stopped as a primary comes back on a new timeline. That primary."""
        primary = next((n for n in names if cluster.node(n).stopped_as_primary()), None)
        if primary is not None:
            cluster.promote_anew(primary, restore_command)
        for name in names:
            if name != primary:
                cluster.node(name).start()
        return primary

    def _config_for(self, cluster: ComposedCluster, names: list[str]) -> config_mod.Config:
        config = self.service.config
        nodes = [{"name": n.name, "host": n.host, "port": n.port} for n in cluster.nodes if n.name in names]
        return config_mod.build(
            {**config.model_dump(mode="json", exclude_none=True), "nodes": nodes}, "the backtracked nodes"
        )

    def _parts(self) -> tuple[ComposedCluster, Backups]:
        cluster = composed(self.service, "backtrack")
        if self.service.backups is None:
            raise ActionFailed("backtrack restores from the backups: start pgaurora up with --backups")
        return cluster, self.service.backups

    # -- what a backtrack left behind ------------------------------------------------------------
    def _path(self) -> Path:
        return composed(self.service, "backtrack").root / STATE_FILE

    def _remember(self, state: dict[str, Any]) -> None:
        self._path().write_text(json.dumps(state) + "\n")

    def _remembered(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(self._path().read_text())
            return state
        except (FileNotFoundError, ValueError):
            return None

    async def _expire(self) -> None:
        """Remove the replaced nodes once backtrack_keep has passed."""
        while True:
            await asyncio.sleep(EXPIRY_POLL)
            state = self._remembered()
            if state is None or time.time() < state["until"] or self.service.operations.locked():
                continue
            async with exclusive(self.service):
                await self._forget(composed(self.service, "backtrack"), "backtrack_keep ran out")

    async def _forget(self, cluster: ComposedCluster, why: str) -> None:
        """Remove the parked nodes: the last backtrack can no longer be undone."""
        parked = list(cluster.parked)
        await asyncio.to_thread(cluster.forget_nodes, parked)
        self._path().unlink(missing_ok=True)
        self.service.events.record(
            "backtrack_expired",
            f"{', '.join(parked)} removed ({why}): the last backtrack can no longer be undone",
            nodes=parked,
        )
