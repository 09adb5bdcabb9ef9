"""Misbehaving clients get a clear ErrorResponse or are closed at the startup deadline; others never notice."""

from __future__ import annotations

import struct
import threading

import psycopg
import pytest

from tests.helpers import error_of as _error
from tests.helpers import exchange as _exchange
from tests.helpers import wait_until


@pytest.fixture
def bystander(proxy):
    """A healthy session that keeps querying while the bad clients misbehave."""
    stop, results = threading.Event(), []

    def loop():
        with psycopg.connect(proxy.dsn("writer"), autocommit=True) as conn:
            while not stop.is_set():
                results.append(conn.execute("SELECT 1").fetchone()[0])

    thread = threading.Thread(target=loop)
    thread.start()
    for _ in wait_until("the bystander session to run", 10):
        if results:
            break
    yield results
    seen = len(results)
    for _ in wait_until("the bystander session to keep working", 10):
        if len(results) > seen + 10:
            break
    stop.set()
    thread.join(10)
    assert all(r == 1 for r in results)


CASES = {
    "garbage": (b"GET / HTTP/1.1\r\nHost: pgaurora\r\n\r\n", "08P01"),
    "one_mib_length": (struct.pack("!II", 1 << 20, 196608), "08P01"),
    "negative_length": (struct.pack("!iI", -8, 196608), "08P01"),
    "unknown_protocol": (struct.pack("!II", 8 + 8, 2 << 16) + b"user\0x\0\0", "0A000"),
    "no_user": (struct.pack("!II", 8 + 1, 196608) + b"\0", "28000"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("endpoint", ["writer", "reader"])
def test_bad_startup_gets_error_response(proxy, bystander, case, endpoint):
    payload, sqlstate = CASES[case]
    data, elapsed = _exchange(getattr(proxy, endpoint), payload)
    error = _error(data)
    assert error.sqlstate == sqlstate and error.severity == "FATAL"
    assert elapsed < 1.5


@pytest.mark.parametrize("payload", [b"", struct.pack("!I", 40) + b"\0\3\0\0user"], ids=["silent", "truncated"])
def test_stalled_client_is_closed_at_startup_deadline(proxy, bystander, payload):
    data, elapsed = _exchange(proxy.writer, payload)
    deadline = proxy.config.proxy.startup_timeout
    assert deadline - 0.1 <= elapsed < deadline + 1.5
    assert _error(data).sqlstate == "08P01"


def test_ssl_and_gssenc_requests_are_declined_then_startup_proceeds(proxy):
    with psycopg.connect(proxy.dsn("writer", sslmode="prefer", gssencmode="prefer")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="SSL"):
        psycopg.connect(proxy.dsn("writer", sslmode="require"), connect_timeout=5)
