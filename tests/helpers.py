"""Test helpers: deadlines, free ports, and a Service running on its own uvloop thread."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import uvloop

from pgaurora import config as config_mod
from pgaurora.app import Service
from pgaurora.compose import LocalCluster
from pgaurora.eventlog import EventLog


def wait_until(what: str, timeout: float, interval: float = 0.05) -> Iterator[int]:
    """for attempt in wait_until("writer switched", 10): ... break  -- raises AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        yield attempt
        attempt += 1
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_loopback_base(count: int) -> str:
    """A base address 127.0.X.11 whose next `count` addresses are unused by earlier tests."""
    return f"127.0.{random.randint(20, 250)}.{random.randint(1, 200)}"


def cluster_dir() -> Path:
    """A directory the unprivileged PostgreSQL user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pgaurora-test-"))
    os.chmod(path, 0o755)
    return path


def make_cluster(replicas: int = 2, **kwargs) -> LocalCluster:
    port = free_port()
    cluster = LocalCluster(cluster_dir() / "cluster", replicas=replicas, port=port,
                           base_address=free_loopback_base(replicas + 1), password="test-pw", **kwargs)
    cluster.lock()
    cluster.create()
    return cluster


def service_config(cluster: LocalCluster, **overrides) -> config_mod.Config:
    dns_port = free_port()
    data = {
        "cluster": cluster.name, "state_dir": str(cluster.root), "nodes": cluster.node_configs(),
        "writer": {"port": free_port()}, "reader": {"port": free_port()}, "admin": {"port": free_port()},
        "dns": {"port": dns_port},
        "monitor": {"user": "postgres", "password": cluster.password, "probe_interval": 0.2},
        "failover": {"replication_password": cluster.replication_password,
                     "sync_mode": "quorum" if cluster.synchronous else "off"},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return config_mod.build(data)


class ServiceThread:
    """Runs a Service on its own uvloop event loop, so blocking test clients cannot stall the proxy."""

    def __init__(self, config: config_mod.Config, controller=None) -> None:
        self.config = config
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.events = EventLog()
        self.service = self.call(self._make(controller))
        self.call(self.service.start())

    async def _make(self, controller) -> Service:
        return Service(self.config, controller=controller, events=self.events)

    def call(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def topology(self):
        return self.service.hub.current

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.call(self.service.wait_ready(timeout)), f"not ready: {self.topology.reason}"

    def stop(self) -> None:
        self.call(self.service.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    # -- addresses ------------------------------------------------------------------------
    @property
    def writer(self) -> tuple[str, int]:
        return self.config.writer.host, self.config.writer.port

    @property
    def reader(self) -> tuple[str, int]:
        return self.config.reader.host, self.config.reader.port

    @property
    def admin_url(self) -> str:
        return f"http://{self.config.admin.host}:{self.config.admin.port}"

    def dsn(self, endpoint: str = "writer", **params) -> str:
        host, port = getattr(self, endpoint)
        extra = "".join(f" {k}={v}" for k, v in params.items())
        return f"host={host} port={port} user=postgres password={self.config.monitor.password} dbname=postgres{extra}"


class WriteLoop:
    """Inserts numbered rows through an endpoint, reconnecting on errors; remembers what was acknowledged."""

    def __init__(self, dsn: str, table: str = "numbers") -> None:
        import psycopg
        self.psycopg, self.dsn, self.table = psycopg, dsn, table
        self.acked: list[tuple[int, float]] = []  # (id, wall-clock time of the acknowledgement)
        self.errors: list[tuple[float, str]] = []
        self._stop = threading.Event()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY)")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, next_id = None, 0
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self.psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
                conn.execute(f"INSERT INTO {self.table} VALUES (%s)", (next_id,))
                self.acked.append((next_id, time.time()))
            except self.psycopg.Error as exc:
                self.errors.append((time.time(), str(exc).strip()[:200]))
                if conn is not None:
                    conn.close()
                conn = None
            next_id += 1
        if conn is not None:
            conn.close()

    def acked_after(self, moment: float) -> list[tuple[int, float]]:
        return [(i, t) for i, t in self.acked if t > moment]

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(30)


class TcpRelay:
    """Forwards a loopback port to a node; cut() closes every relayed connection and accepts no more."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.cut_off = threading.Event()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.cut_off.set()
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.cut()
        self.listener.close()
