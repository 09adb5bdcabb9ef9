"""pgaurora.testing as an application uses it: the README's example, exactly, on both backends."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from pgaurora.testing import AuroraCluster
from tests.helpers import require_docker

STARTUP_LIMIT = {"local": 15.0, "docker": 30.0}


class OrderApp:
    """A tiny application with the retry logic under test: reconnect and retry for up to 30 s."""

    def __init__(self, writer_url: str, reader_url: str) -> None:
        self.writer_url, self.reader_url, self.conn = writer_url, reader_url, None
        with psycopg.connect(writer_url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, request uuid UNIQUE NOT NULL, "
                "placed timestamptz DEFAULT now())"
            )

    def place_order(self) -> None:
        """Retries are idempotent: an INSERT whose acknowledgement was lost may have committed."""
        deadline, request = time.monotonic() + 30, uuid.uuid4()
        while True:
            try:
                self.conn = self.conn or psycopg.connect(self.writer_url, autocommit=True, connect_timeout=10)
                self.conn.execute(
                    "INSERT INTO orders (request) VALUES (%s) ON CONFLICT (request) DO NOTHING", (request,)
                )
                return
            except psycopg.OperationalError:
                self.conn = None
                if time.monotonic() > deadline:
                    raise

    def orders(self) -> int:
        with psycopg.connect(self.writer_url) as conn:
            return conn.execute("SELECT count(*) FROM orders").fetchone()[0]


def make_app(writer_url: str, reader_url: str) -> OrderApp:
    return OrderApp(writer_url, reader_url)


@pytest.mark.parametrize("backend", ["local", "docker"])
def test_checkout_survives_failover(backend):
    if backend == "docker":
        require_docker()
    with AuroraCluster(replicas=2, backend=backend) as cluster:  # or backend="local"
        app = make_app(cluster.writer_url, cluster.reader_url)
        app.place_order()
        cluster.kill_primary()  # also: pause_primary(), isolate_primary(), switchover(), kill_replica()
        phases = cluster.wait_for_failover()  # returns the phases: detected, promoted, dns, writer available
        app.place_order()  # the app's own retry logic is what is being tested
        assert app.orders() == 2
        started_in = cluster.started_in
    assert phases["writer"] != "n1" and 0 < phases["detected"] < phases["promoted"] < 10
    assert started_in <= STARTUP_LIMIT[backend], f"the {backend} cluster took {started_in:.1f} s to start"


def test_the_aurora_cluster_fixture_switches_over(aurora_cluster):
    before = aurora_cluster.primary
    result = aurora_cluster.switchover()
    phases = aurora_cluster.wait_for_failover()
    assert result["old_writer"] == before and phases["writer"] == result["new_writer"] != before
    with psycopg.connect(aurora_cluster.reader_url) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
