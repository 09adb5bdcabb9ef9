"""GET /metrics on the admin port, scraped while real clients connect through the proxy."""

from __future__ import annotations

import socket
import struct
import urllib.request

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from pgaurora.service.admin.auth import token_for


def _scrape(proxy) -> tuple[str, dict]:
    request = urllib.request.Request(
        proxy.admin_url + "/metrics", headers={"Authorization": f"Bearer {token_for(proxy.admin_url)}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        kind, text = response.headers["Content-Type"], response.read().decode()
    return kind, {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_follow_sessions_refusals_and_topology(proxy):
    kind, before = _scrape(proxy)
    assert kind.startswith("text/plain")
    writer_sessions = ("pgaurora_sessions_total", (("endpoint", "writer"), ("node", "n1")))
    bad_startups = ("pgaurora_refused_clients_total", (("sqlstate", "08P01"),))
    with psycopg.connect(proxy.dsn("writer")) as conn:
        conn.execute("SELECT 1")
        _, during = _scrape(proxy)
    with socket.create_connection(proxy.writer, timeout=10) as sock:  # a startup packet of length 3
        sock.sendall(struct.pack("!I", 3))
        while sock.recv(4096):
            pass
    _, after = _scrape(proxy)
    assert during[writer_sessions] == before.get(writer_sessions, 0) + 1
    assert during[("pgaurora_server_sessions", (("node", "n1"),))] >= 1
    assert after[bad_startups] == before.get(bad_startups, 0) + 1
    assert after[("pgaurora_node_up", (("node", "n1"),))] == 1
    assert after[("pgaurora_node_role", (("node", "n1"), ("role", "primary")))] == 1
    assert after[("pgaurora_writer_epoch", ())] >= 1
