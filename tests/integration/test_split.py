"""A splitting endpoint (issue 25): read-only transactions to replicas, the rest to the writer, and reads that
see what their consistency mode promises, checked by a Jepsen-style checker of write-then-read pairs."""

from __future__ import annotations

import asyncio
import itertools
import os
import pathlib
import shutil
import subprocess
import time

import asyncpg
import psycopg
import pytest

from tests.helpers import ServiceThread, admin, free_ports, make_cluster, service_config
from tests.integration.test_metrics import _scrape

pytestmark = pytest.mark.integration

SESSIONS = 16
JAR = pathlib.Path("/usr/share/java/postgresql.jar")
CLIENTS = pathlib.Path(__file__).parent / "clients"


@pytest.fixture(scope="module")
def split():
    """Its own cluster (the checker writes a lot), behind a splitting endpoint `app` (session consistency)."""
    cluster = make_cluster(replicas=2)
    (port,) = free_ports(1)
    pool = {"pool_size": 20, "auth_user": "pgaurora_auth", "auth_password": cluster.auth_password}
    endpoints = [{"name": "app", "port": port, "role": "split", "consistency_wait": 0.2}]
    svc = ServiceThread(service_config(cluster, pool=pool, endpoints=endpoints), cluster=cluster)
    svc.wait_ready()
    svc.app = (svc.config.writer.host, port)
    svc.split_cluster = cluster
    cluster.primary.sql("CREATE TABLE pairs (id bigint PRIMARY KEY, session int, at timestamptz DEFAULT now())")
    yield svc
    svc.stop()
    cluster.destroy()


def _dsn(svc, **extra) -> str:
    host, port = svc.app
    more = "".join(f" {k}={v}" for k, v in extra.items())
    return f"host={host} port={port} user=postgres password={svc.config.monitor.password} dbname=postgres{more}"


def _routed(svc, mode: str | None = None, endpoint: str = "app") -> dict[tuple[str, str], int]:
    """Transactions an endpoint routed (of sessions in mode), by (where, why)."""
    found: dict[tuple[str, str], int] = {}
    for (name, consistency, where, why), n in svc.service.proxy_state.split_total.items():
        if name == endpoint and mode in (None, consistency):
            found[(where, why)] = found.get((where, why), 0) + n
    return found


def test_reads_go_to_replicas_and_everything_else_to_the_writer(split):
    with psycopg.connect(_dsn(split), autocommit=True) as conn:
        seen = {conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] for _ in range(6)}
        assert seen == {True}
        assert conn.execute("SELECT pg_is_in_recovery() FROM pg_class LIMIT 1 FOR UPDATE").fetchone()[0] is False
        conn.execute("CREATE SEQUENCE IF NOT EXISTS split_numbers")
        assert conn.execute("SELECT nextval('split_numbers')").fetchone()[0] >= 1  # a function it cannot vouch for
        with conn.transaction():
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False  # BEGIN: the writer
        conn.execute("BEGIN READ ONLY")
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        conn.execute("COMMIT")
        conn.execute("SET default_transaction_read_only = on")
        with conn.transaction():
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        conn.execute("RESET default_transaction_read_only")
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        with conn.transaction():
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
    with psycopg.connect(_dsn(split), autocommit=True) as conn:  # pinned (an advisory lock): the writer for good
        conn.execute("SELECT pg_advisory_lock(7)")
        assert [conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] for _ in range(3)] == [False] * 3
        conn.execute("SELECT pg_advisory_unlock(7)")
    with psycopg.connect(_dsn(split)) as conn:  # not autocommit: psycopg sends BEGIN on its own first
        conn.execute("SET TRANSACTION READ ONLY")
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        conn.commit()
        conn.execute("CREATE TABLE IF NOT EXISTS opened (x int)")
        conn.execute("INSERT INTO opened VALUES (1)")
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False  # the same transaction
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'opened'").fetchone()[0] == 0
        conn.rollback()


def test_psql_and_asyncpg_prepared_statements_work_on_both_sides(split):
    out = subprocess.run(
        ["psql", _dsn(split), "-Atc", "SELECT pg_is_in_recovery()"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and out.stdout.strip() == "t", out.stderr

    async def run() -> list:
        host, port = split.app
        conn = await asyncpg.connect(host=host, port=port, user="postgres", password=split.config.monitor.password)
        try:
            answers = []
            for i in range(20):  # the statement cache: prepared once, bound on whichever node each read gets
                await conn.execute("INSERT INTO pairs (id, session) VALUES ($1, -1)", 10_000_000 + i)
                answers.append(await conn.fetchval("SELECT count(*) FROM pairs WHERE id = $1", 10_000_000 + i))
            return answers
        finally:
            await conn.close()

    assert asyncio.run(run()) == [1] * 20


class Checker:
    """SESSIONS sessions, each writing a row and reading it back at once: a read that misses its own row is
    stale. The writes themselves are the write load."""

    def __init__(self, svc, consistency: str, pairs: int, first_id: int) -> None:
        self.svc, self.consistency, self.per_session = svc, consistency, pairs // SESSIONS
        self.first_id, self.stale, self.done = first_id, 0, 0

    async def session(self, number: int) -> None:
        host, port = self.svc.app
        conn = await asyncpg.connect(
            host=host,
            port=port,
            user="postgres",
            password=self.svc.config.monitor.password,
            server_settings={"pgaurora.consistency": self.consistency},
        )
        try:
            for i in range(self.per_session):
                row = self.first_id + number * self.per_session + i
                await conn.execute("INSERT INTO pairs (id, session) VALUES ($1, $2)", row, number)
                if await conn.fetchval("SELECT count(*) FROM pairs WHERE id = $1", row) != 1:
                    self.stale += 1
                self.done += 1
        finally:
            await conn.close()

    def run(self) -> None:
        async def all_sessions() -> None:
            await asyncio.gather(*(self.session(n) for n in range(SESSIONS)))

        asyncio.run(all_sessions())


def test_session_mode_reads_see_their_own_writes_and_mostly_from_replicas(split):
    before = _routed(split)
    checker = Checker(split, "session", 4000, first_id=1_000_000)
    checker.run()
    after = _routed(split)
    reads = {k: after.get(k, 0) - before.get(k, 0) for k in after if k[1] != "write"}
    on_replicas = reads.get(("replica", "replica"), 0) / max(1, sum(reads.values()))
    print(f"session mode: {checker.done} pairs, {checker.stale} stale, {on_replicas:.0%} of reads on replicas {reads}")
    assert checker.done == 4000 - 4000 % SESSIONS
    assert checker.stale == 0
    assert on_replicas >= 0.7, reads
    status = admin(split.admin_url + "/status")
    (app,) = [e for e in status["endpoints"] if e["name"] == "app"]
    assert (app["role"], app["consistency"], app["pool_mode"]) == ("split", "session", "transaction")
    session = status["split"]["app"]["session"]
    assert session["replica"] >= reads.get(("replica", "replica"), 0) and session["writer"]["write"] >= 4000
    _, metrics = _scrape(split)
    labels = (("consistency", "session"), ("endpoint", "app"), ("reason", "replica"), ("target", "replica"))
    assert metrics[("pgaurora_split_transactions_total", labels)] == session["replica"]
    waits = metrics.get(("pgaurora_split_waits_total", (("consistency", "session"), ("endpoint", "app"))), 0)
    assert waits == session.get("waits", 0) and waits > 0  # reads right after a write wait for replay


def test_eventual_mode_lets_the_checker_see_stale_reads(split):
    """The checker can fail: without waiting for replay, some reads miss the row just written."""
    load = subprocess.Popen(
        ["pgbench", "-n", "-c", "4", "-T", "30", "-f", "/dev/stdin", split.dsn("writer")],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    load.stdin.write("INSERT INTO pairs (id, session) SELECT 5000000000 + (random() * 1e12)::bigint, -2;\n")
    load.stdin.close()
    try:
        checker = Checker(split, "eventual", 4000, first_id=2_000_000)
        checker.run()
    finally:
        load.kill()
        load.wait()
    print(f"eventual mode: {checker.done} pairs, {checker.stale} stale")
    assert checker.stale > 0


def test_global_mode_a_read_sees_a_commit_acknowledged_to_another_session(split):
    """Session A commits; the moment it is acknowledged, A tells B (in-process), and B reads it."""
    told: asyncio.Queue | None = None
    stale = 0

    async def run() -> None:
        nonlocal told, stale
        told = asyncio.Queue()
        host, port = split.app
        params = {"host": host, "port": port, "user": "postgres", "password": split.config.monitor.password}
        a = await asyncpg.connect(**params, server_settings={"pgaurora.consistency": "eventual"})
        b = await asyncpg.connect(**params, server_settings={"pgaurora.consistency": "global"})
        try:
            for i in range(1000):
                await a.execute("INSERT INTO pairs (id, session) VALUES ($1, -3)", 3_000_000 + i)
                if await b.fetchval("SELECT count(*) FROM pairs WHERE id = $1", 3_000_000 + i) != 1:
                    stale += 1
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())
    assert stale == 0


def test_the_mode_can_be_set_with_options_and_with_set_and_a_bad_value_is_22023(split):
    with psycopg.connect(_dsn(split, options="'-c pgaurora.consistency=global'"), autocommit=True) as conn:
        assert conn.execute("SHOW pgaurora.consistency").fetchone()[0] == "global"
        before = _routed(split, "global").get(("replica", "replica"), 0)
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        assert _routed(split, "global").get(("replica", "replica"), 0) == before + 1  # counted as global
        conn.execute("SET pgaurora.consistency = 'eventual'")
        assert conn.execute("SHOW pgaurora.consistency").fetchone()[0] == "eventual"
        with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
            conn.execute("SET pgaurora.consistency = 'sesion'")
        assert 'invalid value for parameter "pgaurora.consistency": "sesion"' in str(caught.value)
        assert caught.value.diag.message_hint == "Available values: eventual, session, global."
        assert conn.execute("SHOW pgaurora.consistency").fetchone()[0] == "eventual"  # unchanged


def test_jdbc_set_read_only_reaches_a_replica_and_read_write_the_writer(split):
    if shutil.which("java") is None or not JAR.exists():
        pytest.skip("java and libpostgresql-jdbc-java are installed by .ci/run")
    host, port = split.app
    out = subprocess.run(
        ["java", "-cp", str(JAR), str(CLIENTS / "JdbcReadOnly.java"), f"jdbc:postgresql://{host}:{port}/postgres"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PGPASSWORD": split.config.monitor.password},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["replica", "writer"]


def test_a_read_that_writes_after_all_runs_again_on_the_writer(split):
    """A view over a function that writes: the parser sees a plain SELECT, the replica answers 25006, and the
    writer runs it again before the client hears anything."""
    split.split_cluster.primary.sql(
        "CREATE TABLE IF NOT EXISTS bumps (n serial);"
        "CREATE OR REPLACE FUNCTION bump() RETURNS int LANGUAGE sql"
        " AS $$ INSERT INTO bumps DEFAULT VALUES RETURNING n $$;"
        "CREATE OR REPLACE VIEW bumped AS SELECT bump() AS n"
    )
    before = _routed(split).get(("writer", "retried_on_writer"), 0)
    with psycopg.connect(_dsn(split), autocommit=True) as conn:
        numbers = [conn.execute("SELECT n FROM bumped").fetchone()[0] for _ in range(3)]
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True  # the next read: a replica again
    assert numbers == sorted(numbers) and len(set(numbers)) == 3
    assert _routed(split).get(("writer", "retried_on_writer"), 0) - before == 3

    async def extended() -> int:
        host, port = split.app
        conn = await asyncpg.connect(host=host, port=port, user="postgres", password=split.config.monitor.password)
        try:
            return await conn.fetchval("SELECT n FROM bumped")
        finally:
            await conn.close()

    assert asyncio.run(extended()) > numbers[-1]  # prepared on the replica, bound and run again on the writer


def test_the_reader_endpoint_honours_min_lsn_handed_over_from_a_write(split):
    """Separate write and read pools: the application takes the LSN after its commit and opens its read with
    pgaurora.min_lsn in the startup packet (passthrough reader): 0 stale reads."""
    stale = 0

    async def session(number: int) -> None:
        nonlocal stale
        params = {"user": "postgres", "password": split.config.monitor.password}
        writer = await asyncpg.connect(host=split.writer[0], port=split.writer[1], **params)
        try:
            for i in range(40):
                row = 4_000_000 + number * 40 + i
                await writer.execute("INSERT INTO pairs (id, session) VALUES ($1, -4)", row)
                lsn = await writer.fetchval("SELECT pg_current_wal_lsn()::text")
                reader = await asyncpg.connect(
                    host=split.reader[0], port=split.reader[1], server_settings={"pgaurora.min_lsn": lsn}, **params
                )
                try:
                    if await reader.fetchval("SELECT count(*) FROM pairs WHERE id = $1", row) != 1:
                        stale += 1
                finally:
                    await reader.close()
        finally:
            await writer.close()

    async def run() -> None:
        await asyncio.gather(*(session(n) for n in range(8)))

    before = _routed(split, "min_lsn", "reader")
    asyncio.run(run())
    after = _routed(split, "min_lsn", "reader")
    assert stale == 0
    on_replicas = after.get(("replica", "replica"), 0) - before.get(("replica", "replica"), 0)
    print(f"min_lsn: 320 pairs, {on_replicas} reads on replicas")
    assert on_replicas > 0


def _refused_at_startup(address: tuple[str, int], name: str, value: str) -> str:
    """The message of the error a startup packet naming name=value gets (asyncpg raises 22023 as its class)."""

    async def connect() -> None:
        host, port = address
        await asyncpg.connect(host=host, port=port, user="postgres", password="x", server_settings={name: value})

    with pytest.raises(asyncpg.InvalidParameterValueError) as caught:
        asyncio.run(connect())
    return str(caught.value)


def test_an_unknown_consistency_at_startup_is_refused_with_22023(split):
    message = _refused_at_startup(split.app, "pgaurora.consistency", "strong")
    assert 'invalid value for parameter "pgaurora.consistency": "strong"' in message


def test_a_malformed_min_lsn_is_refused_with_22023(split):
    message = _refused_at_startup(split.reader, "pgaurora.min_lsn", "yesterday")
    assert 'invalid value for parameter "pgaurora.min_lsn": "yesterday"' in message


def test_a_primary_kill_leaves_no_session_reading_past_its_own_writes(fresh_cluster, service):
    """Sessions write and read back through the splitting endpoint while the primary is SIGKILLed. Only what
    was in flight fails; every acknowledged write is read back, before and after the failover."""
    cluster = fresh_cluster(replicas=2)
    (port,) = free_ports(1)
    pool = {"pool_size": 20, "auth_user": "pgaurora_auth", "auth_password": cluster.auth_password}
    endpoints = [{"name": "app", "port": port, "role": "split"}]
    svc = service(service_config(cluster, pool=pool, endpoints=endpoints), cluster=cluster)
    cluster.primary.sql("CREATE TABLE pairs (id bigint PRIMARY KEY, session int)")
    old = svc.topology.writer
    stop, results = asyncio.Event(), {"stale": 0, "acked": [], "failed": 0}

    async def session(number: int) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", password=cluster.password)
        try:
            for i in itertools.count():
                if stop.is_set():
                    return
                row = number * 1_000_000 + i
                try:
                    await conn.execute("INSERT INTO pairs (id, session) VALUES ($1, $2)", row, number)
                except asyncpg.PostgresError:
                    results["failed"] += 1  # in flight at the kill: its fate is unknown, and not checked
                    continue
                results["acked"].append(row)
                try:
                    found = await conn.fetchval("SELECT count(*) FROM pairs WHERE id = $1", row)
                except asyncpg.PostgresError:
                    results["failed"] += 1  # a read in flight on the writer at the kill
                    continue
                results["stale"] += found != 1
        finally:
            await conn.close()

    async def until(what: str, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
            await asyncio.sleep(0.05)

    async def run() -> float:
        sessions = [asyncio.ensure_future(session(n)) for n in range(8)]
        await until("500 pairs before the kill", lambda: len(results["acked"]) >= 500, 30)
        cluster.node(old).kill()
        await until("a failover", lambda: svc.topology.writer not in (None, old), 30)
        promoted = len(results["acked"])
        await until("500 pairs through the new writer", lambda: len(results["acked"]) >= promoted + 500, 30)
        stop.set()
        await asyncio.gather(*sessions)
        return promoted

    promoted = asyncio.run(run())
    after = results["acked"][promoted:]  # acknowledged once the new writer was published
    print(f"{len(results['acked'])} acknowledged pairs ({len(after)} after the failover), {results['failed']} failed")
    assert svc.topology.writer not in (None, old)
    assert results["stale"] == 0
    assert after, "no session wrote through the new writer"
    assert results["failed"] <= 8  # at most what each session had in flight
