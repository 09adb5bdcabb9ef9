"""TLS from clients to the proxy: sslmode=require works, the session stays in user space, and a client
that sends plaintext after its SSLRequest (buffer stuffing) is refused."""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess

import asyncpg
import psycopg
import pytest

from tests.helpers import service_config, wait_until

SSL_REQUEST = struct.pack("!II", 8, 80877103)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    path = tmp_path_factory.mktemp("tls")
    cert, key = path / "server.crt", path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_proxy(cluster, certificate):
    from tests.helpers import ServiceThread
    cert, key = certificate
    svc = ServiceThread(service_config(cluster, tls={"cert_file": str(cert), "key_file": str(key)},
                                       failover={"enabled": False}, proxy={"startup_timeout": 1.5}))
    svc.wait_ready()
    yield svc
    svc.stop()


def test_sslmode_require_gets_tls_and_a_python_relayed_session(tls_proxy):
    with psycopg.connect(tls_proxy.dsn("writer") + " sslmode=require") as conn:
        assert conn.pgconn.ssl_in_use
        rows = conn.execute("SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g").fetchall()
        assert len(rows) == 20000 and rows[-1][0] == 20000
        sessions = [s for ss in tls_proxy.service.proxy_state.sessions_by_node.values() for s in ss]
        assert sessions and not any(s.offloaded for s in sessions)  # the C relay cannot see inside TLS


def test_psql_and_asyncpg_connect_over_tls(tls_proxy, cluster):
    host, port = tls_proxy.writer
    out = subprocess.run(["psql", f"host={host} port={port} user=postgres dbname=postgres sslmode=require",
                          "-Atc", "SELECT 40 + 2"], capture_output=True, text=True, timeout=30,
                         env={"PGPASSWORD": cluster.password, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "42", out.stderr

    async def query():
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        conn = await asyncpg.connect(host=host, port=port, user="postgres", password=cluster.password,
                                     ssl=context, direct_tls=False)
        try:
            return await conn.fetchval("SELECT 'tls'")
        finally:
            await conn.close()
    import asyncio
    assert asyncio.run(query()) == "tls"


def test_plaintext_clients_still_connect(tls_proxy):
    with psycopg.connect(tls_proxy.dsn("writer") + " sslmode=disable") as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_plaintext_after_ssl_request_is_refused(tls_proxy):
    with socket.create_connection(tls_proxy.writer, timeout=10) as sock:
        sock.sendall(SSL_REQUEST + struct.pack("!II", 8, 196608))  # a startup header stuffed behind it
        reply = _drained(sock)
    assert reply[:1] == b"E" and b"08P01" in reply


def _drained(sock: socket.socket) -> bytes:
    reply = b""
    while chunk := sock.recv(4096):
        reply += chunk
    return reply


@pytest.mark.parametrize("after_yes", [b"", b"GET / HTTP/1.0\r\n\r\n" * 20], ids=["silent", "not-tls"])
def test_failed_handshakes_are_closed_and_forgotten(tls_proxy, after_yes):
    state = tls_proxy.service.proxy_state
    for attempt in wait_until("no client left from earlier tests", 10):
        if state.clients == 0:
            break
    with socket.create_connection(tls_proxy.writer, timeout=10) as sock:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
        sock.sendall(after_yes)
        assert b"08P01" not in _drained(sock)  # closed (at the deadline, or at once): nothing in plaintext
    for attempt in wait_until("the failed client no longer counted", 10):
        if state.clients == 0:
            break
    with psycopg.connect(tls_proxy.dsn("writer") + " sslmode=require") as conn:  # others never notice
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_status_reports_tls(tls_proxy):
    import json
    import urllib.request
    with urllib.request.urlopen(tls_proxy.admin_url + "/status", timeout=10) as response:
        assert json.loads(response.read())["tls"] is True
