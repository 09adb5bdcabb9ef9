"""Every relay carries real sessions: native C threads, the kernel (eBPF sockmap), hybrid and the Python fallback."""

from __future__ import annotations

import os
import subprocess

import psycopg
import pytest

from pgaurora.proxy import native
from pgaurora.proxy.sockmap import SockMap
from tests.helpers import ServiceThread, admin, service_config

KERNEL = SockMap.open()
if KERNEL is not None:
    KERNEL.close()


@pytest.fixture(params=["native", "python", "kernel", "hybrid"])
def relay_proxy(request, cluster):
    if request.param in ("kernel", "hybrid") and KERNEL is None:
        pytest.skip("this kernel or user cannot load the eBPF relay")
    if request.param == "native" and not native.available():
        pytest.skip("the native relay extension was not built")
    svc = ServiceThread(service_config(cluster, proxy={"relay": request.param}, failover={"enabled": False}))
    svc.wait_ready()
    yield request.param, svc
    svc.stop()


def test_relay_mode_is_reported_and_sessions_use_it(relay_proxy):
    mode, svc = relay_proxy
    status = admin(svc.admin_url + "/status")
    assert status["relay"] == mode
    assert status["relay_threads"] == (native.default_threads() if mode == "native" else None)
    with psycopg.connect(svc.dsn("writer")) as conn:
        rows = conn.execute("SELECT g, repeat('x', 1000) FROM generate_series(1, 5000) g").fetchall()
        assert len(rows) == 5000 and rows[-1][0] == 5000
        (session,) = [s for ss in svc.service.proxy_state.sessions_by_node.values() for s in ss]
        assert session.offloaded is (mode != "python")
        if mode == "kernel":  # the kernel saw the result end with ReadyForQuery
            assert svc.service.proxy_state.sockmap.ended_with_ready_for_query(session.cookies[1]) is True


def test_pgbench_over_each_relay(relay_proxy):
    _mode, svc = relay_proxy
    host, port = svc.writer
    env = {**os.environ, "PGPASSWORD": "test-pw"}
    subprocess.run(
        ["pgbench", "-i", "-q", "-h", host, "-p", str(port), "-U", "postgres", "postgres"],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    run = subprocess.run(
        ["pgbench", "-c", "8", "-t", "100", "-n", "-h", host, "-p", str(port), "-U", "postgres", "postgres"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert "number of transactions actually processed: 800/800" in run.stdout, run.stdout + run.stderr


def test_server_loss_at_ready_for_query_reaches_client_as_08006(relay_proxy, cluster):
    _mode, svc = relay_proxy
    conn = psycopg.connect(svc.dsn("writer"), autocommit=True)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    cluster.primary.sql(f"SELECT pg_terminate_backend({pid})")  # Postgres itself sends 57P01, then closes
    with pytest.raises(psycopg.OperationalError) as info:
        conn.execute("SELECT 1")
    assert "terminating connection due to administrator command" in str(info.value)
    conn.close()


def test_session_on_fenced_writer_is_closed_with_57p01(relay_proxy, cluster):
    _mode, svc = relay_proxy
    conn = psycopg.connect(svc.dsn("writer"), autocommit=True)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    (session,) = [s for ss in svc.service.proxy_state.sessions_by_node.values() for s in ss]

    async def terminate():
        session.terminate("57P01", "terminating connection: node n1 is no longer the writer")

    svc.call(terminate())
    with pytest.raises(psycopg.OperationalError, match="no longer the writer"):
        conn.execute("SELECT 1")
    conn.close()
