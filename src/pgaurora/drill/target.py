"""The cluster a drill runs against: one it composes, served by a pgaurora process of its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..compose import LocalCluster
from ..compose.ports import free_ports
from ..errors import ClusterError


def _get(url: str, method: str = "GET", timeout: float = 5) -> object:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class Partition:
    """iptables DROP rules that cut this host's root-owned traffic (pgaurora's monitor and proxy) off a
    node's address, while the PostgreSQL servers, which run as another user, still replicate."""

    def __init__(self, host: str, port: int, uid: int) -> None:
        self.spec = ["OUTPUT", "-d", host, "-p", "tcp", "--dport", str(port), "-m", "owner", "--uid-owner", str(uid),
                     "-j", "DROP"]
        self.active = False

    @staticmethod
    def problem(server_uid: int) -> str | None:
        """Why isolation cannot work here, or None."""
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


class ComposedTarget:
    """A LocalCluster made for the drill, and `pgaurora up --attach` serving it as a separate process,
    so that the drill can kill pgaurora itself (restart-pgaurora)."""

    def __init__(self, workdir: Path, replicas: int, base_address: str = "127.0.3.11", backend: str = "local") -> None:
        self.workdir = workdir
        port, *self.ports = free_ports(5)
        kind = LocalCluster
        if backend == "docker":
            from ..compose.docker import DockerCluster
            kind = DockerCluster
        self.cluster = kind(workdir / "cluster", replicas=replicas, port=port, base_address=base_address)
        self.proc: subprocess.Popen | None = None
        self.partitions: list[Partition] = []

    # -- endpoints ------------------------------------------------------------------------------
    @property
    def writer(self) -> tuple[str, int]:
        return "127.0.0.1", self.ports[0]

    @property
    def reader(self) -> tuple[str, int]:
        return "127.0.0.1", self.ports[1]

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[2]}"

    @property
    def dns(self) -> tuple[str, int]:
        return "127.0.0.1", self.ports[3]

    @property
    def user(self) -> str:
        return "postgres"

    @property
    def password(self) -> str:
        return self.cluster.password

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
        args = [sys.executable, "-m", "pgaurora", "up", "--attach", "--dir", str(self.cluster.root),
                "--writer-port", str(w), "--reader-port", str(r), "--admin-port", str(a), "--dns-port", str(d)]
        log = open(self.workdir / "pgaurora.log", "ab")
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"pgaurora did not become ready; see {self.workdir / 'pgaurora.log'}")
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
        for partition in self.partitions:
            partition.heal()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.cluster.destroy()

    # -- what pgaurora says ------------------------------------------------------------------------
    def status(self) -> dict | None:
        try:
            return _get(self.admin_url + "/status", timeout=2)
        except (OSError, ValueError):
            return None

    def events(self) -> list[dict]:
        try:
            return _get(self.admin_url + "/events?limit=500")
        except (OSError, ValueError):
            return []

    def switchover(self) -> dict:
        try:
            return _get(self.admin_url + "/switchover", method="POST", timeout=120)
        except urllib.error.HTTPError as exc:
            raise ClusterError(f"switchover refused: {exc.read().decode(errors='replace')}") from None

    # -- faults on nodes ---------------------------------------------------------------------------
    def node(self, name: str):
        return self.cluster.node(name)

    def isolate(self, name: str) -> None:
        node = self.node(name)
        partition = Partition(node.host, node.port, os.geteuid())
        self.partitions.append(partition)
        partition.cut()

    def heal(self) -> None:
        for partition in self.partitions:
            partition.heal()
        self.partitions.clear()
