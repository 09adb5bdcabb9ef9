"""The cluster a drill runs against: one it composes (served by a pgaurora of its own), or one a config names."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compose.backends import cluster_class
from ..compose.ports import free_ports
from ..core.config import Config
from ..core.errors import ClusterError
from ..service.admin import client as admin_client


def _get(url: str, method: str = "GET", timeout: float = 5) -> Any:
    parts = urllib.parse.urlsplit(url)
    base, path = f"{parts.scheme}://{parts.netloc}", parts.path + (f"?{parts.query}" if parts.query else "")
    return admin_client.call(base, path, method, {} if method == "POST" else None, timeout)


class Partition:
    """iptables DROP rules that cut this host's root-owned traffic (pgaurora's monitor and proxy) off a
    node's address, while the PostgreSQL servers, which run as another user, still replicate."""

    def __init__(self, host: str, port: int, uid: int) -> None:
        self.spec = [
            "OUTPUT",
            "-d",
            host,
            "-p",
            "tcp",
            "--dport",
            str(port),
            "-m",
            "owner",
            "--uid-owner",
            str(uid),
            "-j",
            "DROP",
        ]
        self.active = False

    @staticmethod
    def problem(server_uid: int | None) -> str | None:
        """Why isolation cannot work here, or None (server_uid: None when the servers are on other hosts)."""
        if os.geteuid() != 0:
            return "isolate-* faults need root (they add iptables rules)"
        if shutil.which("iptables") is None:
            return "isolate-* faults need iptables (apt-get install iptables)"
        if server_uid == os.geteuid():
            return "isolate-* faults need PostgreSQL to run as another user than pgaurora"
        return None

    def cut(self) -> None:
        subprocess.run(["iptables", "-I", *self.spec], check=True, capture_output=True, timeout=30)
        self.active = True

    def heal(self) -> None:
        if self.active:
            subprocess.run(["iptables", "-D", *self.spec], check=False, capture_output=True, timeout=30)
            self.active = False


class Target:
    """What the drill needs of a cluster: endpoints, pgaurora's admin API, the nodes, partitions. Only a
    composed target can restart pgaurora (the restart-pgaurora fault, which check_faults allows only there)."""

    writer: tuple[str, int]
    reader: tuple[str, int]
    admin_url: str
    user: str
    password: str | None
    nodes: list
    heals = False  # does pgaurora start crashed nodes again itself (`pgaurora up`), or must the drill

    def __init__(self) -> None:
        self.partitions: list[Partition] = []

    def node(self, name: str):
        for node in self.nodes:
            if node.name == name:
                return node
        raise ClusterError(f"no node named {name!r}")

    def status(self) -> dict | None:
        try:
            return _get(self.admin_url + "/status", timeout=2)
        except (OSError, ValueError, admin_client.AdminError):
            return None

    def events(self) -> list[dict]:
        try:
            return _get(self.admin_url + "/events?limit=500")
        except (OSError, ValueError, admin_client.AdminError):
            return []

    def change_event(self, since: float) -> dict | None:
        """The first change of writer pgaurora recorded since a moment: a failover (finished at once or
        after a restart of pgaurora) or a switchover, with its phases."""
        kinds = ("failover", "failover_completed_after_restart", "switchover")
        return next((e for e in self.events() if e.get("ts", 0) >= since and e["kind"] in kinds), None)

    def switchover(self) -> dict:
        try:
            return _get(self.admin_url + "/switchover", method="POST", timeout=120)
        except admin_client.AdminError as exc:
            raise ClusterError(f"switchover refused: {exc.message}") from None

    def pgaurora_uid(self) -> int:
        """The OS user pgaurora runs as (its traffic is what a partition cuts)."""
        pid = (self.status() or {}).get("pid")
        try:
            with open(f"/proc/{pid}/status") as f:
                return int(next(line for line in f if line.startswith("Uid:")).split()[1])
        except (OSError, StopIteration, TypeError):
            return os.geteuid()

    def isolate(self, name: str) -> None:
        node = self.node(name)
        partition = Partition(node.host, node.port, self.pgaurora_uid())
        self.partitions.append(partition)
        partition.cut()

    def heal(self) -> None:
        for partition in self.partitions:
            partition.heal()
        self.partitions.clear()


class ConfiguredTarget(Target):
    """An existing cluster that a running pgaurora fronts, described by its config file. The drill
    controls no host here: only switchover and isolate-primary are possible."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.writer = (config.writer.host, config.writer.port)
        self.reader = (config.reader.host, config.reader.port)
        self.admin_url = f"http://{config.admin.host}:{config.admin.port}"
        self.user, self.password = config.monitor.user, config.monitor.password
        self.nodes = [_Node(n.name, n.host, n.port) for n in config.nodes]

    def start(self) -> None:
        if self.status() is None:
            raise ClusterError(
                f"no pgaurora answers at {self.admin_url}; start `pgaurora proxy -c` with this config first"
            )

    def stop(self) -> None:
        self.heal()


@dataclass(frozen=True)
class _Node:
    name: str
    host: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


class ComposedTarget(Target):
    """A LocalCluster made for the drill, and `pgaurora up --attach` serving it as a separate process,
    so that the drill can kill pgaurora itself (restart-pgaurora). pgaurora heals it: the drill only waits."""

    heals = True

    def __init__(
        self,
        workdir: Path,
        replicas: int,
        base_address: str = "127.0.3.11",
        backend: str = "local",
        sync_acks: int = 1,
        pool: str = "passthrough",
    ) -> None:
        super().__init__()
        self.workdir, self.pool = workdir, pool
        port, *self.ports = free_ports(5)
        self.cluster = cluster_class(backend)(
            workdir / "cluster", replicas=replicas, port=port, base_address=base_address, sync_acks=sync_acks
        )
        self.nodes = self.cluster.nodes
        self.proc: subprocess.Popen[bytes] | None = None
        self.writer, self.reader = ("127.0.0.1", self.ports[0]), ("127.0.0.1", self.ports[1])
        self.admin_url = f"http://127.0.0.1:{self.ports[2]}"
        self.user, self.password = "postgres", self.cluster.password

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self.cluster.lock()
        try:
            self.cluster.create()
        finally:
            self.cluster.unlock()  # `pgaurora up --attach` takes it
        self.start_pgaurora()

    def start_pgaurora(self, timeout: float = 60) -> None:
        w, r, a, d = self.ports
        args = [
            sys.executable,
            "-m",
            "pgaurora",
            "up",
            "--attach",
            "--dir",
            str(self.cluster.root),
            "--writer-port",
            str(w),
            "--reader-port",
            str(r),
            "--admin-port",
            str(a),
            "--dns-port",
            str(d),
            "--split-port",
            "0",  # the drill's workload uses the writer and reader endpoints
            "--pool",
            self.pool,
        ]
        log = open(self.workdir / "pgaurora.log", "ab")
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.workdir / "pgaurora.log").read_text(errors="replace").splitlines()[-15:]
                raise ClusterError("pgaurora did not become ready; the end of its log:\n" + "\n".join(tail))
            time.sleep(0.05)

    def _ready(self) -> bool:
        status = self.status()
        return bool(status and status["writer"]["node"] and status["reader"]["nodes"])

    def kill_pgaurora(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        """Stop pgaurora (which stops the nodes it served), then remove the cluster."""
        self.heal()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.cluster.destroy()
