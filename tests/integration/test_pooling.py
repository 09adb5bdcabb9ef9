"""Pooling: authentication at the proxy, many clients on few server connections, settings and prepared
statements that follow a client across server connections, and what pins (issue 22)."""

from __future__ import annotations

import asyncio
import subprocess

import asyncpg
import psycopg
import pytest

from tests.helpers import ServiceThread, service_config, wait_until

POOL = 2


@pytest.fixture(scope="module")
def pooled(cluster):
    config = service_config(
        cluster,
        writer={"pool_mode": "transaction"},
        reader={"pool_mode": "transaction"},
        pool={"pool_size": POOL, "auth_user": "pgaurora_auth", "auth_password": cluster.auth_password},
    )
    svc = ServiceThread(config, cluster=cluster)
    svc.wait_ready()
    yield svc
    svc.stop()


def test_psql_logs_in_at_the_proxy_and_queries_through_both_endpoints(pooled):
    for endpoint in ("writer", "reader"):
        out = subprocess.run(
            ["psql", pooled.dsn(endpoint), "-Atc", "SELECT 1 + 1"], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0 and out.stdout.strip() == "2", out.stderr


def test_a_wrong_password_and_an_unknown_role_get_the_same_28P01(pooled):
    messages = []
    for user, password in (("postgres", "wrong"), ("nosuchrole", "wrong")):
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(pooled.dsn("writer", user=user, password=password), connect_timeout=10)
        messages.append(str(caught.value).replace(user, "<role>"))
    assert messages[0] == messages[1], messages
    assert 'password authentication failed for user "<role>"' in messages[0]


def test_asyncpg_prepared_statements_work_across_transactions_from_more_clients_than_connections(pooled, cluster):
    """asyncpg's default statement cache prepares named statements once, then binds them in later
    transactions: on whatever server connection each transaction gets, they must still be there."""
    host, port = pooled.writer

    async def client(number: int) -> list[int]:
        conn = await asyncpg.connect(host=host, port=port, user="postgres", password="test-pw", database="postgres")
        try:
            seen = []
            for i in range(30):
                seen.append(await conn.fetchval("SELECT $1::int * 2 + pg_backend_pid() * 0", number * 100 + i))
                seen.append(await conn.fetchval("SELECT $1::int + 1", i))
            return seen
        finally:
            await conn.close()

    async def run() -> list[list[int]]:
        return await asyncio.gather(*(client(n) for n in range(8)))

    results = asyncio.run(run())
    for number, seen in enumerate(results):
        assert seen == [v for i in range(30) for v in ((number * 100 + i) * 2, i + 1)]
    assert _pooled_backends(cluster) <= POOL


def test_psycopg_prepared_on_every_execute_works_in_transaction_mode(pooled):
    with psycopg.connect(pooled.dsn("writer"), prepare_threshold=0, autocommit=True) as conn:
        for i in range(20):
            assert conn.execute("SELECT %s::int * 3", (i,)).fetchone()[0] == i * 3


def test_a_set_is_carried_to_the_next_transaction_on_another_server_connection(pooled):
    with (
        psycopg.connect(pooled.dsn("writer"), autocommit=True) as first,
        psycopg.connect(pooled.dsn("writer"), autocommit=True) as second,
    ):
        first.execute("SET statement_timeout = '4321ms'")
        pids = set()
        for _ in wait_until("the first client to land on another server connection", 20):
            with second.transaction():  # holds a connection, so the first must take the other one
                second.execute("SELECT 1")
                pid, timeout = first.execute("SELECT pg_backend_pid(), current_setting('statement_timeout')").fetchone()
            pids.add(pid)
            assert timeout == "4321ms"
            if len(pids) > 1:
                break
        assert second.execute("SHOW statement_timeout").fetchone()[0] == "0", "a setting leaked to another client"


def test_an_advisory_lock_pins_the_client_and_the_pin_is_counted(pooled):
    before = pooled.service.proxy_state.pins["advisory_lock"]
    with psycopg.connect(pooled.dsn("writer"), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(42)")
        pids = {conn.execute("SELECT pg_backend_pid()").fetchone()[0] for _ in range(5)}
        assert len(pids) == 1
        assert pooled.service.proxy_state.pins["advisory_lock"] == before + 1
    with psycopg.connect(pooled.dsn("writer"), autocommit=True) as other:
        for _ in wait_until("the lock to be released with the session", 10):
            if other.execute("SELECT pg_try_advisory_lock(42)").fetchone()[0]:
                break
        other.execute("SELECT pg_advisory_unlock(42)")


def _pooled_backends(cluster, node: str = "n1") -> int:
    """Backends of postgres over TCP, but the monitor's: the pools' server connections (tests use no other)."""
    return int(
        cluster.node(node).sql(
            "SELECT count(*) FROM pg_stat_activity WHERE client_addr IS NOT NULL AND usename = 'postgres' "
            "AND application_name <> 'pgaurora-monitor'"
        )
    )
