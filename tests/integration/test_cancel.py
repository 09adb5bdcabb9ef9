"""Cancel requests reach the backend that issued the key, through either endpoint."""

from __future__ import annotations

import asyncio
import threading
import time

import asyncpg
import psycopg
import pytest

from tests.helpers import wait_until


def _running_sleep(cluster, node_host: str) -> bool:
    node = next(n for n in cluster.nodes if n.host == node_host)
    return node.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'") != "0"


@pytest.mark.parametrize("endpoint", ["writer", "reader"])
def test_psycopg_cancel_ends_with_57014_within_2s(proxy, cluster, endpoint):
    conn = psycopg.connect(proxy.dsn(endpoint))
    host = conn.execute("SELECT host(inet_server_addr())").fetchone()[0]
    outcome = {}

    def run():
        try:
            conn.execute("SELECT pg_sleep(30)")
        except psycopg.Error as exc:
            outcome["sqlstate"], outcome["at"] = exc.sqlstate, time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    for _ in wait_until("pg_sleep to start", 10):
        if _running_sleep(cluster, host):
            break
    sent = time.monotonic()
    conn.cancel_safe(timeout=5)
    thread.join(5)
    conn.close()
    assert outcome.get("sqlstate") == "57014", outcome
    assert outcome["at"] - sent < 2.0


@pytest.mark.parametrize("endpoint", ["writer", "reader"])
async def test_asyncpg_cancel_ends_statement_within_2s(proxy, cluster, endpoint):
    host, port = getattr(proxy, endpoint)
    conn = await asyncpg.connect(host=host, port=port, user="postgres", password="test-pw", ssl=False)
    node_host = await conn.fetchval("SELECT host(inet_server_addr())")
    node = next(n for n in cluster.nodes if n.host == node_host)
    cancels_before = node.log_tail(100000).count("canceling statement due to user request")
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await conn.fetch("SELECT pg_sleep(30)", timeout=0.5)  # asyncpg sends a CancelRequest
    assert await conn.fetchval("SELECT 1") == 1  # the backend is free again: the sleep was cancelled
    assert time.monotonic() - started < 2.5
    assert node.log_tail(100000).count("canceling statement due to user request") > cancels_before
    await conn.close()


def test_cancel_arriving_on_the_other_endpoint_reaches_the_writer_backend(proxy, cluster):
    import socket

    from pgaurora.wire import CancelRequest, encode

    conn = psycopg.connect(proxy.dsn("writer"))
    pid = conn.info.backend_pid
    outcome = {}

    def run():
        try:
            conn.execute("SELECT pg_sleep(30)")
        except psycopg.Error as exc:
            outcome["sqlstate"] = exc.sqlstate

    thread = threading.Thread(target=run)
    thread.start()
    for _ in wait_until("pg_sleep to start", 10):
        if _running_sleep(cluster, cluster.primary.host):
            break
    # The key the writer's backend issued, as the proxy learned it from BackendKeyData.
    (key,) = [k for k in proxy.service.proxy_state.cancel_keys if k[0] == pid]
    with socket.create_connection(proxy.reader, timeout=5) as sock:  # the *reader* endpoint
        sock.sendall(encode(CancelRequest(*key)))
        assert sock.recv(100) == b""  # closed without a reply, as PostgreSQL does
    thread.join(5)
    conn.close()
    assert outcome.get("sqlstate") == "57014"
