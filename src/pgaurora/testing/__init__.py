"""A whole pgaurora cluster for an application's own tests, as testcontainers gives a single server.

    from pgaurora.testing import AuroraCluster

    with AuroraCluster(replicas=2, backend="docker") as cluster:   # or backend="local"
        app = make_app(cluster.writer_url, cluster.reader_url)
        cluster.kill_primary()
        phases = cluster.wait_for_failover()   # seconds from the fault: detected, promoted, dns, writer available

The pytest plugin (pgaurora.testing.plugin) gives the same cluster as the `aurora_cluster` fixture.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..compose.reaper import become_subreaper, start_reaper
from ..core.polling import wait_for
from ..drill.target import ComposedTarget

__all__ = ["AuroraCluster"]


class AuroraCluster:
    """A primary, `replicas` streaming replicas and pgaurora in front of them, removed on exit."""

    def __init__(self, replicas: int = 2, backend: str = "local", base_address: str | None = None) -> None:
        self.replicas, self.backend = replicas, backend
        self.base_address = base_address or f"127.{random.randint(64, 250)}.{random.randint(0, 250)}.11"
        self._target: ComposedTarget | None = None
        self._workdir: Path | None = None
        self._reaper: threading.Event | None = None
        self._fault_at: float | None = None
        self._writer_before: str | None = None
        self._restore: list[Callable[[], object]] = []
        self._crashed: str | None = None  # the node the last kill took, which pgaurora heals
        self.started_in: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> AuroraCluster:
        began = time.monotonic()
        become_subreaper()
        self._reaper = start_reaper()
        self._workdir = Path(tempfile.mkdtemp(prefix="pgaurora-testing-"))
        os.chmod(self._workdir, 0o755)  # the PostgreSQL user must reach the cluster inside
        try:
            self._target = ComposedTarget(self._workdir, self.replicas, self.base_address, self.backend)
            self._t.start()
            wait_for("a cluster where a failover would be safe", lambda: (self.status() or {}).get("failover_safe"), 60)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.started_in = time.monotonic() - began
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._target is not None:
                self.restore()
                self._target.stop()
        finally:
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            if self._reaper is not None:
                self._reaper.set()

    # -- where to connect ------------------------------------------------------------------------------
    def _url(self, address: tuple[str, int]) -> str:
        return f"postgresql://postgres:{quote(self.password, safe='')}@{address[0]}:{address[1]}/postgres"

    @property
    def writer_url(self) -> str:
        return self._url(self._t.writer)

    @property
    def reader_url(self) -> str:
        return self._url(self._t.reader)

    @property
    def password(self) -> str:
        return self._t.password or ""

    @property
    def admin_url(self) -> str:
        return self._t.admin_url

    @property
    def _t(self) -> ComposedTarget:
        if self._target is None:
            raise RuntimeError("use AuroraCluster in a with statement: the cluster is not running")
        return self._target

    def status(self) -> dict[str, Any] | None:
        """pgaurora's /status, or None while its admin endpoint does not answer."""
        return self._t.status()

    def _status(self) -> dict[str, Any]:
        status = self.status()
        if status is None:
            raise RuntimeError("pgaurora's admin endpoint did not answer")
        return status

    @property
    def primary(self) -> str:
        return str(self._status()["writer"]["node"])

    # -- faults ------------------------------------------------------------------------------------------
    def _fault(self, on_primary: bool, act: str, undo: str | None) -> str:
        status = self._status()
        name = status["writer"]["node"] if on_primary else status["reader"]["nodes"][0]
        node = self._t.node(name)
        self._writer_before, self._fault_at = status["writer"]["node"], time.time()
        getattr(node, act)()
        if undo == "start" and self._t.heals:  # pgaurora starts it again itself: wait for that
            self._crashed = name
            self._restore.append(lambda: self.wait_healed())
        elif undo:
            self._restore.append(getattr(node, undo))
        return name

    def kill_primary(self) -> str:
        """SIGKILL (docker kill) the primary; pgaurora heals it (restore() waits for that). Returns its name."""
        return self._fault(True, "kill", "start")

    def pause_primary(self) -> str:
        """SIGSTOP (docker pause) the primary: hung, not dead."""
        return self._fault(True, "pause", "resume")

    def kill_replica(self) -> str:
        return self._fault(False, "kill", "start")

    def isolate_primary(self) -> str:
        """Cut pgaurora off the primary (iptables; root only) while replication flows; restore() heals."""
        name = self.primary
        self._writer_before, self._fault_at = name, time.time()
        self._t.isolate(name)
        self._restore.append(self._t.heal)
        return name

    def switchover(self) -> dict[str, Any]:
        self._writer_before, self._fault_at = self.primary, time.time()
        return self._t.switchover()

    def restore(self) -> None:
        """Bring back what the faults took away: failed nodes start or resume, partitions heal."""
        while self._restore:
            self._restore.pop()()

    # -- waiting -----------------------------------------------------------------------------------------
    def wait_healed(self, timeout: float = 60) -> dict[str, Any]:
        """Block until pgaurora has brought back the node a kill took (kill_primary(), kill_replica()) and every
        node is back, the writer and streaming replicas, with commits on every copy. Returns the status."""
        from ..drill.engine import healthy

        crashed, at, nodes = self._crashed, self._fault_at or 0, len(self._t.nodes)
        if crashed is not None:
            wait_for(
                f"pgaurora to heal {crashed}",
                lambda: any(
                    e["kind"] == "healed" and e.get("node") == crashed and e["ts"] >= at for e in self._t.events()
                ),
                timeout,
            )

        def healed() -> dict[str, Any] | None:
            status = self.status()
            return status if status is not None and healthy(status, nodes) else None

        return wait_for("the cluster to heal", healed, timeout)

    def wait_for_failover(self, timeout: float = 30) -> dict[str, Any]:
        """Block until another node is the writer; returns seconds from the fault to each phase."""
        if self._fault_at is None:
            raise RuntimeError("no fault was injected: call kill_primary(), pause_primary() or switchover() first")
        before, at = self._writer_before, self._fault_at

        def moved() -> dict[str, Any] | None:
            status = self.status()
            return status if status is not None and status["writer"]["node"] not in (None, before) else None

        status = wait_for(f"a writer other than {before}", moved, timeout)
        event = wait_for(
            "the failover's event (recorded once the replicas are re-pointed)",
            lambda: self._t.change_event(at),
            timeout,
        )
        phases = {k: round(v - at, 3) for k, v in (event.get("phases") or {}).items()}
        return {
            "writer": status["writer"]["node"],
            "detected": phases.get("detected"),
            "promoted": phases.get("promoted"),
            "dns": phases.get("dns_updated"),
            "writer_available": phases.get("endpoints_switched"),
        }
