"""DockerCluster: LocalCluster's nodes as containers (testcontainers), on host networking and loopback.

Each node is one container running the postmaster with host networking, on the node's own 127.0.0.x
address, so all traffic stays on loopback. The cluster directory is bind-mounted at the same path in
every container, so data directories, sockets and logs are where LocalCluster keeps them, and
PostgreSQL's programs (initdb, pg_basebackup, pg_rewind, pg_controldata) run in one-off containers of
the same image. Containers are named after the cluster's instance id and the node, so that any
process that opens the cluster (the drill, `pgaurora up --attach`) controls the same ones.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from ..core.errors import ClusterError
from .image import build
from .local import LocalCluster
from .node import LocalNode

_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


def docker_client():
    """A client for the engine DOCKER_HOST names; ClusterError when none answers."""
    import docker

    try:
        client = docker.from_env(timeout=60)
        client.ping()
        return client
    except Exception as exc:  # docker.errors.DockerException and socket errors alike
        raise ClusterError(f"no Docker engine answers (DOCKER_HOST or /var/run/docker.sock): {exc}") from None


class DockerNode(LocalNode):
    """A node whose postmaster runs in a container; its files stay in the bind-mounted cluster directory."""

    def __init__(
        self, name: str, host: str, port: int, root: Path, bindir: str, user, client, image: str, container: str
    ) -> None:
        super().__init__(name, host, port, root, bindir, user)
        self.root, self.client, self.image, self.container_name = root, client, image, container

    def _kwargs(self) -> dict:
        return {
            "network_mode": "host",
            "user": f"{self.user.uid}:{self.user.gid}",
            "volumes": {str(self.root): {"bind": str(self.root), "mode": "rw"}},
            "environment": {"HOME": "/tmp"},
        }

    def _container(self):
        import docker.errors

        try:
            return self.client.containers.get(self.container_name)
        except docker.errors.NotFound:
            return None

    @property
    def pid(self) -> int | None:  # the postmaster's PID is the container's business
        return None

    @property
    def running(self) -> bool:
        container = self._container()
        return container is not None and container.status in ("running", "paused")

    def _start(self, timeout: float) -> None:
        from testcontainers.core.container import DockerContainer

        if self.running:
            return
        self._remove()
        command = [
            "sh",
            "-c",
            'exec "$0" -D "$1" >> "$2" 2>&1',
            self.bin("postgres"),
            str(self.datadir),
            str(self.logfile),
        ]
        DockerContainer(self.image).with_name(self.container_name).with_command(command).with_volume_mapping(
            str(self.root), str(self.root), "rw"
        ).with_env("HOME", "/tmp").with_kwargs(network_mode="host", user=f"{self.user.uid}:{self.user.gid}").start()
        deadline, began = time.monotonic() + timeout, int(time.time())
        while self._status() not in ("ready", "standby") or self._started_at() < began:
            container = self._container()
            if container is None or container.status == "exited" or time.monotonic() > deadline:
                self._remove()
                raise ClusterError(f"node {self.name} did not start; last log lines:\n{self.log_tail()}")
            time.sleep(0.05)

    def _started_at(self) -> int:
        """The postmaster's start time from postmaster.pid: a crashed one leaves its old file behind."""
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n")[2])
        except (FileNotFoundError, IndexError, ValueError):
            return 0

    def _stop_with(self, sig: int, timeout: float) -> None:
        container = self._container()
        if container is None:
            return
        if container.status == "paused":
            container.unpause()
        if container.status != "exited":
            try:
                container.kill(signal=int(sig))
                container.wait(timeout=timeout)
            except Exception:  # already gone, or it did not stop in time: removed by force below
                pass
        self._remove()

    def _remove(self, timeout: float = 30) -> None:
        """Remove the container and wait until it is gone (a removal already under way is waited for)."""
        import docker.errors

        container = self._container()
        if container is None:
            return
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise
        deadline = time.monotonic() + timeout
        while self._container() is not None:
            if time.monotonic() > deadline:
                raise ClusterError(f"the container of {self.name} was not removed within {timeout:.0f} s")
            time.sleep(0.05)

    def _stop(self, mode: str, timeout: float) -> None:
        self.held = True
        self._stop_with(_SIGNALS[mode], timeout)
        if (self.datadir / "postmaster.pid").exists() and mode != "immediate":
            raise ClusterError(f"node {self.name} did not stop cleanly within {timeout:.0f} s")

    def kill(self) -> None:
        """docker kill: SIGKILL of the postmaster, as a crash would."""
        self._stop_with(signal.SIGKILL, 30)

    def pause(self) -> None:
        container = self._container()
        if container is None:
            raise ClusterError(f"node {self.name} is not running")
        container.pause()

    def resume(self) -> None:
        container = self._container()
        if container is not None and container.status == "paused":
            container.unpause()

    def sql(self, query: str, timeout: float = 60) -> str:
        container = self._container()
        if container is None:
            raise ClusterError(f"SQL on {self.name} failed: the node is not running")
        code, out = container.exec_run(
            [
                self.bin("psql"),
                "-h",
                str(self.sockdir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                query,
            ],
            user=f"{self.user.uid}:{self.user.gid}",
            demux=True,
        )
        stdout, stderr = (part.decode(errors="replace") if part else "" for part in out)
        if code != 0:
            raise ClusterError(f"SQL on {self.name} failed: {stderr.strip()}")
        return stdout.strip()

    def run_tool(self, argv: list[str], *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """The program in a one-off container of the node's image, with the cluster directory mounted."""
        container = self.client.containers.run(self.image, argv, detach=True, **self._kwargs())
        try:
            try:
                code = container.wait(timeout=timeout)["StatusCode"]
            except Exception:
                raise ClusterError(f"{Path(argv[0]).name} did not finish within {timeout:.0f} s") from None
            stdout = container.logs(stdout=True, stderr=False).decode(errors="replace")
            stderr = container.logs(stdout=False, stderr=True).decode(errors="replace")
        finally:
            container.remove(force=True)
        if check and code != 0:
            raise ClusterError(f"{Path(argv[0]).name} failed (exit {code}): {(stderr or stdout).strip()[-2000:]}")
        return subprocess.CompletedProcess(argv, code, stdout, stderr)


class DockerCluster(LocalCluster):
    """The same cluster as LocalCluster, every node in a container of `image`."""

    backend = "docker"

    @classmethod
    def _reopening(cls, spec: dict[str, Any]) -> dict[str, Any]:
        return {"image": spec["image"], "instance": spec["instance"]}

    def __init__(self, state_dir, *, image: str | None = None, instance: str | None = None, **kwargs) -> None:
        self.client = docker_client()
        self.image = image or build(self.client)
        self.instance = instance or secrets.token_hex(4)
        super().__init__(state_dir, **kwargs)

    def _node(self, name: str, host: str, port: int) -> DockerNode:
        return DockerNode(
            name,
            host,
            port,
            self.root,
            self.bindir,
            self.user,
            self.client,
            self.image,
            f"pgaurora-{self.instance}-{name}",
        )

    def _spec(self) -> dict:
        return {"image": self.image, "instance": self.instance}

    def destroy(self) -> None:
        for node in self.nodes:
            node.kill()  # removes the container, running or not
        super().destroy()
