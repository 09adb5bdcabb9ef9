"""Allow-lists per endpoint, the security-group analog: checked at accept, before a byte is read; reloadable."""

from __future__ import annotations

import socket

import psycopg
import pytest

from tests.helpers import admin, service_config

pytestmark = pytest.mark.integration


def _from(source: str, address: tuple[str, int]) -> bytes:
    """Connect from a source address, send a StartupMessage, and return all that comes back before the close."""
    with socket.create_connection(address, timeout=5, source_address=(source, 0)) as s:
        try:
            s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # an SSLRequest: PostgreSQL would answer S or N
            return s.recv(100)
        except ConnectionResetError:
            return b""


def _counts(svc, endpoint: str) -> tuple[float, float]:
    text = admin(svc.admin_url + "/metrics")
    values = {}
    for line in text.splitlines():
        for name in ("pgaurora_allowlist_accepted_total", "pgaurora_allowlist_refused_total"):
            if line.startswith(f'{name}{{endpoint="{endpoint}"}}'):
                values[name] = float(line.split()[-1])
    return values.get("pgaurora_allowlist_accepted_total", 0.0), values.get("pgaurora_allowlist_refused_total", 0.0)


def test_a_client_outside_the_allow_list_is_closed_without_a_byte_and_a_reload_moves_the_list(fresh_cluster, service):
    cluster = fresh_cluster(replicas=1)
    config = service_config(cluster, writer={"allow": ["127.0.0.1/32"]})
    svc = service(config)
    sessions_before = cluster.primary.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
    assert _from("127.0.0.2", svc.writer) == b""  # closed: not even PostgreSQL's one-byte answer
    assert _from("127.0.0.1", svc.writer) in (b"N", b"S")  # inside the list: the endpoint answers
    with psycopg.connect(svc.dsn("writer"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _counts(svc, "writer") == (2.0, 1.0)
    assert _from("127.0.0.2", svc.reader) in (b"N", b"S")  # the reader has no list: every address
    after = cluster.primary.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
    assert int(after) <= int(sessions_before) + 1  # the refused client cost no backend (the check query is one)

    moved = config.model_copy(update={"writer": config.writer.model_copy(update={"allow": ("127.0.0.2/32",)})})
    diff = svc.call(svc.service.apply_config(moved, "allow-list moved"))
    assert diff.live == ("writer.allow",) and not diff.restart
    assert _from("127.0.0.1", svc.writer) == b""
    assert _from("127.0.0.2", svc.writer) in (b"N", b"S")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(svc.dsn("writer", connect_timeout=5))
