"""The reader endpoint follows replica health and lag; the proxy's own errors carry the right SQLSTATE."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import psycopg
import pytest

from tests.helpers import ServiceThread, free_ports, hosts_through, service_config, wait_until


def _reader_hosts(proxy, count: int = 10) -> set[str]:
    return hosts_through(proxy.dsn("reader", connect_timeout=5), count)


def test_reader_skips_stopped_replica_within_2s(proxy, cluster):
    n2, n3 = cluster.replicas
    assert _reader_hosts(proxy) == {n2.host, n3.host}
    n3.stop()
    stopped = time.monotonic()
    try:
        for _ in wait_until("reader connections to avoid the stopped replica", 2):
            if _reader_hosts(proxy) == {n2.host} and "n3" not in proxy.topology.readers:
                break
        assert time.monotonic() - stopped < 2.0
    finally:
        n3.start()
    for _ in wait_until("the restarted replica to serve reads again", 15):
        if _reader_hosts(proxy) == {n2.host, n3.host}:
            break


def test_reader_skips_lagging_replica_until_it_catches_up(proxy, cluster):
    n2, n3 = cluster.replicas
    n2.sql("SELECT pg_wal_replay_pause()")
    try:
        cluster.primary.sql(
            "CREATE TABLE IF NOT EXISTS lag_filler (v text); "
            "INSERT INTO lag_filler SELECT repeat('x', 200) FROM generate_series(1, 20000)"
        )
        for _ in wait_until("the paused replica to be excluded as lagging", 10):
            state = proxy.topology.node("n2")
            if state.health.value == "lagging" and proxy.topology.readers == ("n3",):
                break
        assert state.lag_bytes > 1024 * 1024
        assert _reader_hosts(proxy, 12) == {n3.host}
    finally:
        n2.sql("SELECT pg_wal_replay_resume()")
    for _ in wait_until("the replica to catch up and be included again", 15):
        if "n2" in proxy.topology.readers and _reader_hosts(proxy) == {n2.host, n3.host}:
            break


def _sqlstate_of(dsn: str) -> str:
    """The SQLSTATE a client gets when connecting (asyncpg exposes it for connection errors)."""

    async def attempt():
        conn = await asyncpg.connect(
            dsn.replace(" ", "&").replace("host=", "postgresql://?host="), ssl=False, timeout=20
        )
        await conn.close()

    with pytest.raises(asyncpg.PostgresError) as info:
        asyncio.run(attempt())
    return info.value.sqlstate


def test_too_many_clients_get_53300(cluster):
    svc = ServiceThread(service_config(cluster, proxy={"max_client_connections": 2}, failover={"enabled": False}))
    try:
        svc.wait_ready()
        held = [psycopg.connect(svc.dsn("writer")) for _ in range(2)]
        try:
            assert _sqlstate_of(svc.dsn("writer")) == "53300"
            assert held[0].execute("SELECT 1").fetchone() == (1,)
        finally:
            for conn in held:
                conn.close()
    finally:
        svc.stop()


def test_no_primary_known_gets_57p03_after_failover_connect_timeout():
    port, writer, reader, admin = free_ports(4)
    from pgaurora.core import config as config_mod

    cfg = config_mod.build(
        {
            "cluster": "empty",
            "nodes": [{"name": "n1", "host": "127.0.0.1", "port": port}],
            "writer": {"port": writer},
            "reader": {"port": reader, "fallback": "refuse"},
            "admin": {"port": admin},
            "dns": {"enabled": False},
            "proxy": {"failover_connect_timeout": 0.5},
            "monitor": {"probe_interval": 0.1},
        }
    )
    svc = ServiceThread(cfg)
    try:
        started = time.monotonic()
        assert _sqlstate_of(svc.dsn("writer")) == "57P03"
        assert 0.4 < time.monotonic() - started < 5
        assert _sqlstate_of(svc.dsn("reader")) == "57P03"
    finally:
        svc.stop()


def test_unreachable_backend_gets_08006(fresh_cluster, service):
    cluster = fresh_cluster(replicas=0)
    svc = service(service_config(cluster, failover={"enabled": False}, proxy={"failover_connect_timeout": 0.5}))
    cluster.primary.kill()
    error = _sqlstate_of(svc.dsn("writer"))
    assert error == "08006", error


def test_paused_replica_is_excluded_then_returns_after_resume(proxy, cluster):
    n2, n3 = cluster.replicas
    n3.pause()  # a frozen host: TCP still accepts, nothing answers
    try:
        for _ in wait_until("the frozen replica to be marked unreachable", 5):
            if proxy.topology.readers == ("n2",):
                break
        assert proxy.topology.node("n3").health.value == "unreachable"
        assert _reader_hosts(proxy, 6) == {n2.host}
    finally:
        n3.resume()
    for _ in wait_until("the resumed replica to serve reads again", 15):
        if "n3" in proxy.topology.readers and _reader_hosts(proxy) == {n2.host, n3.host}:
            break
