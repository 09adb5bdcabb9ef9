"""Test helpers: deadlines, free ports, and a Service running on its own uvloop thread."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import tomli_w

from pgaurora.compose import LocalCluster
from pgaurora.compose.ports import free_port, free_ports
from pgaurora.core import config as config_mod
from pgaurora.service.admin import client as admin_client
from pgaurora.testing.background import BackgroundService, WriteLoop

PGAURORA = [sys.executable, "-m", "pgaurora"]  # this interpreter's pgaurora, never one found on PATH


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


def observe(what: str, duration: float, interval: float = 0.05) -> Iterator[int]:
    """for _ in observe("no failover", 3): assert ...  -- checks an invariant repeatedly for a while."""
    deadline = time.monotonic() + duration
    count = 0
    while time.monotonic() < deadline:
        yield count
        count += 1
        time.sleep(interval)
    assert count > 0, f"never checked {what}"


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
    cluster = LocalCluster(
        cluster_dir() / "cluster",
        replicas=replicas,
        port=port,
        base_address=free_loopback_base(replicas + 1),
        password="test-pw",
        **kwargs,
    )
    cluster.lock()
    cluster.create()
    return cluster


def service_config(cluster: LocalCluster, **overrides) -> config_mod.Config:
    writer, reader, admin, dns = free_ports(4)
    data = {
        "cluster": cluster.name,
        "state_dir": str(cluster.root),
        "nodes": cluster.node_configs(),
        "writer": {"port": writer},
        "reader": {"port": reader},
        "admin": {"port": admin},
        "dns": {"port": dns},
        "monitor": {"user": "postgres", "password": cluster.password, "probe_interval": 0.2},
        "failover": {
            "replication_password": cluster.replication_password,
            "replication_passfile": str(cluster.passfile),
            "sync_mode": "quorum" if cluster.synchronous else "off",
        },
        # Faults in most tests must last: they test failover, not healing (tests/integration/test_heal.py does)
        "heal": {"enabled": False},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return config_mod.build(data)


class ServiceThread(BackgroundService):
    """BackgroundService plus the addresses tests need."""

    @property
    def writer(self) -> tuple[str, int]:
        return self.endpoint("writer")

    @property
    def reader(self) -> tuple[str, int]:
        return self.endpoint("reader")

    @property
    def admin_url(self) -> str:
        return f"http://{self.config.admin.host}:{self.config.admin.port}"

    def dsn(self, endpoint: str = "writer", **params) -> str:
        host, port = getattr(self, endpoint)
        extra = "".join(f" {k}={v}" for k, v in params.items())
        return f"host={host} port={port} user=postgres password={self.config.monitor.password} dbname=postgres{extra}"

    def write_loop(self, table: str = "numbers") -> WriteLoop:
        return WriteLoop(self.writer, "postgres", self.config.monitor.password, table)

    def wait_ready(self, timeout: float = 30) -> None:
        try:
            super().wait_ready(timeout)
        except TimeoutError as exc:
            raise AssertionError(str(exc)) from None


def ids_on(node, table: str = "numbers") -> set[int]:
    """The ids in a table of a node, as the node itself has them (the write loops' tables)."""
    out = node.sql(f"SELECT string_agg(id::text, ',') FROM {table}")
    return {int(x) for x in out.split(",")} if out else set()


def hosts_through(dsn: str, count: int = 12) -> set[str]:
    """The node addresses `count` new sessions on dsn reached."""
    import psycopg

    hosts = set()
    for _ in range(count):
        with psycopg.connect(dsn) as conn:
            hosts.add(conn.execute("SELECT host(inet_server_addr())").fetchone()[0])
    return hosts


def exchange(address, payload: bytes, timeout: float = 6.0) -> tuple[bytes, float]:
    """Send payload, read until the proxy closes; returns what came back and how long it took."""
    started = time.monotonic()
    with socket.create_connection(address, timeout=timeout) as sock:
        if payload:
            sock.sendall(payload)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic() - started


def error_of(data: bytes):
    from pgaurora.wire import Framer, decode_backend

    framer = Framer()
    framer.feed(data)
    frame = framer.next_frame()
    assert frame is not None and frame.type == b"E", data
    return decode_backend(frame.type, frame.payload)


class Command:
    """A pgaurora process whose output is collected line by line."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.proc = subprocess.Popen(
            [*PGAURORA, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, text: str, timeout: float) -> None:
        for _ in wait_until(f"{text!r} from pgaurora (got: {self.lines[-5:]})", timeout):
            if any(text in line for line in self.lines):
                return
            assert self.proc.poll() is None, "\n".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def write_config(config: config_mod.Config, path: Path) -> Path:
    """The config as the TOML file `pgaurora proxy -c` reads."""
    path.write_text(tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)))
    return path


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


def require_docker() -> None:
    """Skip when no Docker engine answers, saying why; in CI (PGAURORA_REQUIRE_DOCKER=1) fail instead."""
    import pytest

    from pgaurora.compose.docker import docker_client
    from pgaurora.core.errors import ClusterError

    try:
        docker_client()
    except ClusterError as exc:
        if os.environ.get("PGAURORA_REQUIRE_DOCKER") == "1":
            pytest.fail(f"Docker is required here (PGAURORA_REQUIRE_DOCKER=1): {exc}")
        pytest.skip(f"no Docker engine: {exc}")


class ReadSessions:
    """Reader sessions that stay open and query every 50 ms; each error is kept with the node it hit."""

    def __init__(self, address: tuple[str, int], password: str, count: int) -> None:
        self.address, self.password = address, password
        self.errors: list[dict] = []  # {"time", "node", "sqlstate", "message"}
        self.nodes: dict[int, str] = {}  # session number -> host of the node it is on now
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)]
        for thread in self.threads:
            thread.start()

    def _run(self, number: int) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(
                        host=self.address[0],
                        port=self.address[1],
                        user="postgres",
                        password=self.password,
                        dbname="postgres",
                        autocommit=True,
                        connect_timeout=10,
                    )
                self.nodes[number] = conn.execute("SELECT host(inet_server_addr())").fetchone()[0]
            except psycopg.Error as exc:
                self.errors.append(
                    {
                        "time": time.time(),
                        "node": self.nodes.get(number),
                        "sqlstate": exc.sqlstate,
                        "message": str(exc)[:200],
                    }
                )
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(0.05)  # pacing of the workload, not a synchronisation
        if conn is not None:
            conn.close()

    def on(self, host: str) -> int:
        return sum(1 for h in self.nodes.values() if h == host)

    def stop(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(30)


def admin(url: str, method: str = "GET", body: Any = None, timeout: float = 30, token: str | None = None) -> Any:
    """A request to an admin URL (http://host:port/path?query) with the token the CLI would send."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return admin_client.call(f"{parts.scheme}://{parts.netloc}", path, method, body, timeout, token)


def refused(url: str, method: str = "POST", body: Any = None, token: str | None = None) -> tuple[int, str]:
    """An admin request that must fail: its HTTP status and message (AssertionError if it succeeds)."""
    try:
        admin(url, method, body, 60, token)
    except admin_client.AdminError as exc:
        return exc.status, exc.message + "".join(f"\n{p}" for p in exc.problems)
    raise AssertionError(f"{method} {url} succeeded")


class RowWriter:
    """Inserts one row per transaction (ids counting up from 1000), reconnecting after errors.

    An INSERT whose acknowledgement is lost (the connection dies at a failover) may have committed
    all the same: its outcome is unknown. Retrying the same id could then hit the primary key
    forever, so every attempt takes a fresh id; ids whose outcome is unknown are kept in `unknown`.
    """

    def __init__(self, connect: Callable[[], Any], pace: float = 0.01) -> None:
        self.connect, self.pace = connect, pace
        self.inserted: list[int] = []  # acknowledged
        self.unknown: list[int] = []  # failed: committed or not, nobody knows
        self.errors: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @classmethod
    def through(cls, address: tuple[str, int], password: str) -> RowWriter:
        """A writer into table marks through a PostgreSQL endpoint (psycopg, autocommit)."""
        return cls(
            lambda: psycopg.connect(
                host=address[0],
                port=address[1],
                user="postgres",
                password=password,
                dbname="postgres",
                autocommit=True,
                connect_timeout=5,
            )
        )

    def _run(self) -> None:
        conn, next_id = None, 1000
        while not self._stop.is_set():
            attempt = None
            try:
                conn = conn or self.connect()
                attempt, next_id = next_id, next_id + 1  # never retried: a lost ack may hide a commit
                conn.execute("INSERT INTO marks (id) VALUES (%s)", (attempt,))
                self.inserted.append(attempt)
            except psycopg.Error as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                if attempt is not None:
                    self.unknown.append(attempt)
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(self.pace)  # pacing of the workload

    def wait_for(self, count: int, timeout: float = 20) -> None:
        start = len(self.inserted)
        for _ in wait_until(f"{count} more rows", timeout):
            if len(self.inserted) >= start + count:
                break

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(30)


def admin_tokens(directory: Path, **scopes: str) -> tuple[list[dict], dict[str, str]]:
    """Token files (mode 600) for [[admin.tokens]], one per name=scope; returns the config and the tokens."""
    tokens, config = {}, []
    for name, scope in scopes.items():
        path = Path(directory) / f"{name}.token"
        tokens[name] = f"{name}-{random.getrandbits(64):016x}"
        path.write_text(tokens[name] + "\n")
        os.chmod(path, 0o600)
        config.append({"name": name, "scope": scope, "file": str(path)})
    return config, tokens


def ended_on_purpose(error: dict) -> bool:
    """A ReadSessions error from a session pgaurora ended on purpose (drain timeout, removal, restart): 57P01 as
    the backend sent it, or the bare close libpq reports now and then instead. That is PostgreSQL and libpq, not
    the proxy: `bench/terminations.py` measured 10 bare closes in 1,200 terminations directly on a server and 6
    in 1,200 through pgaurora's reader endpoint, in one run."""
    return error["sqlstate"] == "57P01" or (
        error["sqlstate"] is None and "server closed the connection unexpectedly" in error["message"]
    )
