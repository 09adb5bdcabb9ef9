"""The cluster under benchmark: a local one the benchmark starts, or the one a pgaurora config file names."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from pgaurora.compose import LocalCluster
from pgaurora.compose.runas import OsUser, server_user
from pgaurora.core.config import Config, load
from pgaurora.core.errors import ConfigError
from pgaurora.service.admin import client as admin_client

DATABASE = "pgaurora_bench"  # pgbench's tables live here, never in a database of the user's


@dataclass(frozen=True)
class BenchCluster:
    primary: tuple[str, int]
    replica: tuple[str, int] | None  # the reader endpoint's direct baseline; None: no reader runs
    user: str
    password: str | None
    runas: OsUser  # PgBouncer refuses to run as root
    pgaurora_toml: str | None = None  # local: nodes and credentials for the benchmark's own pgaurora
    auth_password: str | None = None  # local: pgaurora_auth's password, for pooled endpoints' auth_query
    config: Config | None = None  # given: the user's pgaurora config
    config_path: Path | None = None

    async def connect(self, address: tuple[str, int]) -> asyncpg.Connection:
        """An admin connection (database postgres) to one node."""
        return await asyncpg.connect(
            host=address[0],
            port=address[1],
            user=self.user,
            password=self.password,
            database="postgres",
            ssl=False,
            timeout=10,
        )

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password or "", "PGUSER": self.user, "PGDATABASE": DATABASE}


@contextlib.contextmanager
def local_cluster(work: Path, port: int, max_connections: int) -> Iterator[BenchCluster]:
    """A primary and one asynchronous replica on their own loopback addresses, destroyed afterwards."""
    cluster = LocalCluster(
        work / "cluster",
        replicas=1,
        port=port,
        base_address="127.0.4.11",
        synchronous=False,
        max_connections=max_connections,
    )
    cluster.lock()
    try:
        cluster.create()
        nodes = "".join(f'[[nodes]]\nname = "{n.name}"\nhost = "{n.host}"\nport = {n.port}\n' for n in cluster.nodes)
        toml = (
            f'{nodes}[monitor]\npassword = "{cluster.password}"\n[failover]\nsync_mode = "off"\n'
            f'replication_password = "{cluster.replication_password}"\n'
            f'replication_passfile = "{cluster.passfile}"\n'
        )
        yield BenchCluster(
            (cluster.primary.host, cluster.port),
            (cluster.replicas[0].host, cluster.port),
            "postgres",
            cluster.password,
            cluster.user,
            pgaurora_toml=toml,
            auth_password=cluster.auth_password,
        )
    finally:
        cluster.destroy()


def given_cluster(path: str) -> BenchCluster:
    """The cluster a pgaurora config file describes, logged into with its monitor credentials."""
    try:
        config = load(path)
    except ConfigError as exc:
        raise SystemExit(f"bench/proxy.py: {exc}") from None
    roles = asyncio.run(_roles(config))
    primaries = [addr for addr, role in roles.items() if role == "primary"]
    if len(primaries) != 1:
        seen = ", ".join(f"{h}:{p} {r}" for (h, p), r in roles.items())
        raise SystemExit(f"bench/proxy.py: {path} must name exactly one reachable primary; found: {seen}")
    replicas = [addr for addr, role in roles.items() if role == "replica"]
    return BenchCluster(
        primaries[0],
        replicas[0] if replicas else None,
        config.monitor.user,
        config.monitor.password,
        server_user(),
        config=config,
        config_path=Path(path),
    )


async def _roles(config: Config) -> dict[tuple[str, int], str]:
    async def role(host: str, port: int) -> str:
        try:
            conn = await asyncpg.connect(
                host=host,
                port=port,
                user=config.monitor.user,
                ssl=False,
                password=config.monitor.password,
                database=config.monitor.database,
                timeout=5,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            return f"unreachable ({exc})"
        try:
            return "replica" if await conn.fetchval("SELECT pg_is_in_recovery()") else "primary"
        finally:
            await conn.close()

    addresses = [(n.host, n.port) for n in config.nodes]
    return dict(zip(addresses, await asyncio.gather(*(role(h, p) for h, p in addresses)), strict=True))


@contextlib.contextmanager
def bench_database(bc: BenchCluster, scale: int) -> Iterator[None]:
    """pgbench's tables at `scale` in their own database, replayed on the replica; dropped afterwards."""
    _sql(bc, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)", f"CREATE DATABASE {DATABASE}")
    try:
        subprocess.run(
            ["pgbench", "-i", "-q", "-s", str(scale), "-h", bc.primary[0], "-p", str(bc.primary[1])],
            check=True,
            capture_output=True,
            env=bc.env(),
        )
        if bc.replica is not None:
            _wait_replayed(bc)
        yield
    finally:
        _sql(bc, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def _sql(bc: BenchCluster, *statements: str) -> None:
    async def run():
        conn = await bc.connect(bc.primary)
        try:
            for statement in statements:
                await conn.execute(statement)
        except asyncpg.PostgresError as exc:
            raise SystemExit(
                f"bench/proxy.py: {statement!r} failed as {bc.user}: {exc} (the benchmark keeps "
                f"pgbench's tables in a database of its own, so it needs CREATEDB)"
            ) from None
        finally:
            await conn.close()

    asyncio.run(run())


def _wait_replayed(bc: BenchCluster, timeout: float = 120) -> None:
    """Poll until the replica has replayed everything the primary had written when we asked."""

    async def run():
        primary, replica = await bc.connect(bc.primary), await bc.connect(bc.replica)
        try:
            target = await primary.fetchval("SELECT pg_current_wal_lsn()")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if await replica.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", target):
                    return
                await asyncio.sleep(0.1)
            raise SystemExit(
                f"bench/proxy.py: the replica {bc.replica[0]}:{bc.replica[1]} did not replay "
                f"pgbench's tables within {timeout:.0f} s"
            )
        finally:
            await primary.close()
            await replica.close()

    asyncio.run(run())


def running_pgaurora(config: Config) -> dict | None:
    """The admin /status of a pgaurora already serving `config`, or None when nothing answers there."""
    try:  # with the token that pgaurora published for this host's clients, as the CLI sends it
        return admin_client.call(f"http://{config.admin.host}:{config.admin.port}", "/status", timeout=5)
    except (OSError, ValueError, admin_client.AdminError):
        return None
