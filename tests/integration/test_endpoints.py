"""Both endpoints with real clients: psql, asyncpg, psycopg and pgbench."""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess

import asyncpg
import psycopg
import pytest

from tests.helpers import PGAURORA, admin, wait_until


def _psql(proxy, endpoint: str, sql: str) -> str:
    host, port = getattr(proxy, endpoint)
    env = {**os.environ, "PGPASSWORD": proxy.config.monitor.password, "PGCONNECT_TIMEOUT": "10"}
    out = subprocess.run(
        [
            "psql",
            "-h",
            host,
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_psql_writer_reaches_primary_and_writes_persist(proxy, cluster):
    assert _psql(proxy, "writer", "SELECT pg_is_in_recovery()") == "f"
    _psql(
        proxy,
        "writer",
        "CREATE TABLE IF NOT EXISTS persist_psql (v text); INSERT INTO persist_psql VALUES ('via-writer')",
    )
    assert "via-writer" in cluster.primary.sql("SELECT string_agg(v, ',') FROM persist_psql")


def test_psql_reader_reaches_a_replica(proxy):
    assert _psql(proxy, "reader", "SELECT pg_is_in_recovery()") == "t"


def test_psycopg_through_both_endpoints(proxy, cluster):
    with psycopg.connect(proxy.dsn("writer"), autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        conn.execute("CREATE TABLE IF NOT EXISTS persist_psycopg (v int)")
        conn.execute("INSERT INTO persist_psycopg VALUES (%s)", (42,))
    for _attempt in wait_until("the insert to reach a replica", 10):
        with psycopg.connect(proxy.dsn("reader")) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
            if (
                conn.execute("SELECT to_regclass('persist_psycopg') IS NOT NULL").fetchone()[0]
                and conn.execute("SELECT count(*) FROM persist_psycopg WHERE v = 42").fetchone()[0]
            ):
                break


async def test_asyncpg_through_both_endpoints(proxy, cluster):
    host, port = proxy.writer
    conn = await asyncpg.connect(host=host, port=port, user="postgres", password="test-pw", ssl=False)
    try:
        assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
        await conn.execute("CREATE TABLE IF NOT EXISTS persist_asyncpg (v int)")
        await conn.execute("INSERT INTO persist_asyncpg VALUES ($1)", 7)
        assert await conn.fetchval("SELECT sum(v) FROM persist_asyncpg") >= 7
    finally:
        await conn.close()
    host, port = proxy.reader
    conn = await asyncpg.connect(host=host, port=port, user="postgres", password="test-pw", ssl=False)
    try:
        assert await conn.fetchval("SELECT pg_is_in_recovery()") is True
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("CREATE TABLE must_fail (v int)")
    finally:
        await conn.close()


def test_reader_spreads_30_connections_over_all_replicas(proxy, cluster):
    seen = collections.Counter()
    conns = [psycopg.connect(proxy.dsn("reader")) for _ in range(30)]
    try:
        for conn in conns:
            seen[conn.execute("SELECT inet_server_addr()::text").fetchone()[0]] += 1
    finally:
        for conn in conns:
            conn.close()
    replicas = {f"{r.host}/32" for r in cluster.replicas}
    assert set(seen) == replicas, seen
    fair = 30 / len(replicas)
    assert all(count >= fair / 3 for count in seen.values()), seen


def test_pgbench_through_writer_and_reader(proxy):
    env = {**os.environ, "PGPASSWORD": "test-pw"}
    whost, wport = proxy.writer
    rhost, rport = proxy.reader
    init = subprocess.run(
        ["pgbench", "-i", "-s", "1", "-q", "-h", whost, "-p", str(wport), "-U", "postgres", "postgres"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert init.returncode == 0, init.stderr
    for host, port, args in ((whost, wport, []), (rhost, rport, ["-S"])):
        for _attempt in wait_until("pgbench tables on the replicas", 10):
            run = subprocess.run(
                [
                    "pgbench",
                    *args,
                    "-c",
                    "4",
                    "-t",
                    "50",
                    "-n",
                    "-h",
                    host,
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "postgres",
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            if run.returncode == 0:
                break
        assert "number of failed transactions: 0" in run.stdout, run.stdout + run.stderr
        assert "number of transactions actually processed: 200/200" in run.stdout, run.stdout


async def test_200_clients_each_run_50_transactions_through_writer(proxy):
    host, port = proxy.writer
    setup = await asyncpg.connect(host=host, port=port, user="postgres", password="test-pw", ssl=False)
    await setup.execute("DROP TABLE IF EXISTS load200; CREATE TABLE load200 (client int, n int)")
    await setup.close()

    async def client(i: int) -> int:
        conn = await asyncpg.connect(host=host, port=port, user="postgres", password="test-pw", ssl=False, timeout=60)
        try:
            for n in range(50):
                async with conn.transaction():
                    await conn.execute("INSERT INTO load200 VALUES ($1, $2)", i, n)
            return 50
        finally:
            await conn.close()

    done = await asyncio.gather(*(client(i) for i in range(200)))
    assert sum(done) == 10_000
    check = await asyncpg.connect(host=host, port=port, user="postgres", password="test-pw", ssl=False)
    assert await check.fetchval("SELECT count(*) FROM load200") == 10_000
    await check.close()


def test_status_reports_every_node_and_endpoint_targets(proxy, cluster):
    doc = admin(proxy.admin_url + "/status")
    assert doc["writer"]["node"] == "n1"
    assert sorted(doc["reader"]["nodes"]) == ["n2", "n3"]
    assert {n["name"]: n["role"] for n in doc["nodes"]} == {"n1": "primary", "n2": "replica", "n3": "replica"}
    assert all(n["health"] == "healthy" and n["lag_bytes"] is not None for n in doc["nodes"])
    assert doc["zone"] == "demo.pgaurora.internal" and doc["epoch"] >= 1
    assert doc["pid"] == os.getpid()  # the fixture's service runs in this process
    table = subprocess.run(
        [*PGAURORA, "status", "--admin", proxy.admin_url],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert table.returncode == 0, table.stderr
    assert "primary" in table.stdout and "replica" in table.stdout and "n3" in table.stdout
