"""TLS on both legs, with real clients: psql, psycopg (direct TLS too), asyncpg, JDBC and pgbench."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import asyncpg
import psycopg
import pytest
import trustme

from pgaurora.core.config import BackendTls, PoolConfig
from pgaurora.core.errors import NodeTlsFailed
from pgaurora.core.topology import Health, NodeState, Role
from pgaurora.proxy.pool import Pool, PoolKey, ServerLink
from pgaurora.proxy.scram import Secret, client_key_of
from pgaurora.wire import SSLRequest, StartupMessage, encode
from tests.helpers import (
    Command,
    ServiceThread,
    admin,
    error_of,
    exchange,
    make_cluster,
    refused,
    service_config,
    wait_until,
    write_config,
)

JAR = Path("/usr/share/java/postgresql.jar")
PROBE = Path(__file__).parent / "clients" / "JdbcProbe.java"


@pytest.fixture(scope="module")
def tls_cluster():
    cluster = make_cluster(replicas=1, tls=True)
    yield cluster
    cluster.destroy()
    shutil.rmtree(cluster.root.parent, ignore_errors=True)


def tls_settings(cluster, **extra) -> dict:
    """[tls] as `pgaurora up --tls` writes it: the cluster certificate on both legs, nodes verified."""
    cert, key = cluster.certificate()
    return {
        "cert_file": str(cert),
        "key_file": str(key),
        "backend_tls": "verify-full",
        "backend_ca_file": str(cluster.authority().cert_file),
        **extra,
    }


@pytest.fixture(scope="module")
def tls_proxy(tls_cluster):
    svc = ServiceThread(
        service_config(tls_cluster, tls=tls_settings(tls_cluster), proxy={"startup_timeout": 3.0}),
        cluster=tls_cluster,
    )
    svc.wait_ready()
    yield svc
    svc.stop()


def _ca(cluster) -> str:
    return str(cluster.authority().cert_file)


def _psql(svc, endpoint: str, sql: str, **params) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["psql", svc.dsn(endpoint, **params), "-AtXc", sql], capture_output=True, text=True, timeout=30
    )


SSL_OF_BACKEND = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@pytest.mark.parametrize("sslmode", ["require", "verify-full"])
@pytest.mark.parametrize("endpoint", ["writer", "reader"])
def test_psql_over_tls_reaches_each_endpoint_and_the_node_leg_is_encrypted(tls_proxy, tls_cluster, endpoint, sslmode):
    out = _psql(
        tls_proxy,
        endpoint,
        f"SELECT pg_is_in_recovery(); {SSL_OF_BACKEND}",
        sslmode=sslmode,
        sslrootcert=_ca(tls_cluster),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["f" if endpoint == "writer" else "t", "t"]


def test_verify_full_refuses_a_proxy_certificate_from_another_ca(tls_proxy, tmp_path):
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    out = _psql(tls_proxy, "writer", "SELECT 1", sslmode="verify-full", sslrootcert=other)
    assert out.returncode != 0 and "certificate verify failed" in out.stderr


@pytest.mark.parametrize("endpoint", ["writer", "reader"])
def test_psycopg_direct_tls_handshake_with_alpn(tls_proxy, tls_cluster, endpoint):
    with psycopg.connect(
        tls_proxy.dsn(endpoint, sslmode="verify-full", sslrootcert=_ca(tls_cluster), sslnegotiation="direct")
    ) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT count(*) FROM generate_series(1, 1000)").fetchone() == (1000,)


def test_direct_tls_without_alpn_gets_08p01(tls_proxy):
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection(tls_proxy.writer, timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    error = error_of(received)
    assert error.sqlstate == "08P01" and "without ALPN" in error.message


def test_a_client_that_never_completes_the_handshake_is_closed_at_the_startup_deadline(tls_proxy):
    started = time.monotonic()
    with socket.create_connection(tls_proxy.writer, timeout=10) as sock:
        sock.sendall(encode(SSLRequest()))
        assert sock.recv(1) == b"S"
        while sock.recv(65536):  # a TLS alert or nothing, then the end of the stream
            pass
    assert time.monotonic() - started < tls_proxy.config.proxy.startup_timeout + 2


def test_plaintext_after_ssl_request_is_refused_as_protocol_violation(tls_proxy):
    """CVE-2021-23214: bytes sent with the SSLRequest, before the handshake, must not be taken as the
    encrypted session's first message."""
    startup = encode(StartupMessage((("user", "postgres"), ("database", "postgres"))))
    received, _ = exchange(tls_proxy.writer, encode(SSLRequest()) + startup)
    error = error_of(received)
    assert error.sqlstate == "08P01" and error.message == "received unencrypted data after SSL request"


def test_client_tls_require_refuses_plaintext_startup_with_28000(tls_cluster, service):
    svc = service(service_config(tls_cluster, tls=tls_settings(tls_cluster, client_tls="require")))
    startup = encode(StartupMessage((("user", "postgres"), ("database", "postgres"))))
    received, _ = exchange(svc.writer, startup)
    error = error_of(received)
    assert error.sqlstate == "28000" and "requires TLS" in error.message
    out = _psql(svc, "writer", "SELECT 1", sslmode="disable")
    assert out.returncode != 0 and "requires TLS" in out.stderr
    assert _psql(svc, "writer", "SELECT 1", sslmode="require").stdout.strip() == "1"


def test_asyncpg_verify_full_through_both_endpoints(tls_proxy, tls_cluster):
    async def run():
        context = ssl.create_default_context(cafile=_ca(tls_cluster))
        for endpoint, want in (("writer", False), ("reader", True)):
            host, port = getattr(tls_proxy, endpoint)
            conn = await asyncpg.connect(
                host=host, port=port, user="postgres", password=tls_cluster.password, database="postgres", ssl=context
            )
            try:
                assert await conn.fetchval("SELECT pg_is_in_recovery()") is want
                assert await conn.fetchval(SSL_OF_BACKEND) is True
            finally:
                await conn.close()

    asyncio.run(run())


@pytest.mark.skipif(
    shutil.which("java") is None or not JAR.exists(), reason="java and libpostgresql-jdbc-java are installed by .ci/run"
)
def test_jdbc_verify_full_through_both_endpoints(tls_proxy, tls_cluster):
    for endpoint, want in (("writer", "false"), ("reader", "true")):
        host, port = getattr(tls_proxy, endpoint)
        url = f"jdbc:postgresql://{host}:{port}/postgres?ssl=true&sslmode=verify-full&sslrootcert={_ca(tls_cluster)}"
        out = subprocess.run(
            ["java", "-cp", str(JAR), str(PROBE), url],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PGPASSWORD": tls_cluster.password},
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[0] == want


def test_pgbench_over_tls_completes_every_transaction(tls_proxy, tls_cluster):
    host, port = tls_proxy.writer
    env = {
        **os.environ,
        "PGPASSWORD": tls_cluster.password,
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": _ca(tls_cluster),
    }
    bench = tls_cluster.primary.bin("pgbench")
    common = ["-h", host, "-p", str(port), "-U", "postgres"]
    init = subprocess.run(
        [bench, "-i", "-s", "1", "-q", *common, "postgres"], capture_output=True, text=True, env=env, timeout=120
    )
    assert init.returncode == 0, init.stderr
    run = subprocess.run(
        [bench, "-S", "-c", "4", "-t", "500", *common, "postgres"], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "number of transactions actually processed: 2000/2000" in run.stdout


def test_tls_sessions_are_carried_by_the_relay_threads(tls_proxy, tls_cluster):
    state = tls_proxy.service.proxy_state
    assert state.native is not None and state.native.tls, "the extension was built without OpenSSL"
    with psycopg.connect(tls_proxy.dsn("writer", sslmode="verify-full", sslrootcert=_ca(tls_cluster))) as conn:
        pid = conn.info.backend_pid
        assert conn.execute("SELECT count(*) FROM generate_series(1, 100000)").fetchone() == (100000,)
        sessions = [s for node in list(state.sessions_by_node.values()) for s in list(node)]
        (mine,) = [s for s in sessions if s.cancel_key and s.cancel_key[0] == pid]
        assert mine.native_id is not None


@pytest.mark.parametrize("binding", ["prefer", "require"])
def test_channel_binding_holds_end_to_end_when_both_legs_share_the_certificate(tls_proxy, binding):
    with psycopg.connect(tls_proxy.dsn("writer", sslmode="require", channel_binding=binding)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.fixture(scope="module")
def own_certificate(tmp_path_factory):
    """A proxy certificate of its own (trustme), unlike the nodes' one."""
    directory = tmp_path_factory.mktemp("proxy-cert")
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(directory / "proxy.pem"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return directory


def test_channel_binding_prefer_succeeds_and_require_is_refused_clearly_without_node_tls(
    tls_cluster, own_certificate, service
):
    pem = str(own_certificate / "proxy.pem")
    svc = service(service_config(tls_cluster, tls={"cert_file": pem, "key_file": pem}))
    with psycopg.connect(svc.dsn("writer", sslmode="require", channel_binding="prefer")) as conn:
        assert conn.execute(SSL_OF_BACKEND).fetchone() == (False,)
    with pytest.raises(psycopg.OperationalError, match="channel binding is required, but server did not offer"):
        psycopg.connect(svc.dsn("writer", sslmode="require", channel_binding="require"))


def test_channel_binding_across_different_certificates_is_refused_with_the_reason(
    tls_cluster, own_certificate, service
):
    pem = str(own_certificate / "proxy.pem")
    svc = service(service_config(tls_cluster, tls={**tls_settings(tls_cluster), "cert_file": pem, "key_file": pem}))
    with pytest.raises(psycopg.OperationalError, match="channel binding cannot pass through pgaurora"):
        psycopg.connect(svc.dsn("writer", sslmode="require", channel_binding="prefer"))
    with psycopg.connect(svc.dsn("writer", sslmode="require", channel_binding="disable")) as conn:
        assert conn.execute(SSL_OF_BACKEND).fetchone() == (True,)


def _pooled_tls(cluster, **tls) -> dict:
    pool = {"pool_size": 2, "auth_user": "pgaurora_auth", "auth_password": cluster.auth_password}
    modes = {"writer": {"pool_mode": "transaction"}, "reader": {"pool_mode": "session"}}
    return service_config(cluster, tls=tls_settings(cluster, **tls), pool=pool, **modes)


def test_pooled_endpoints_reach_the_nodes_over_verified_tls_with_prepared_statements(tls_cluster, service):
    """Six asyncpg clients over TLS, with their statement caches, share a transaction pool of 2 whose own
    connections to the node are TLS, verified against the cluster's CA; no TCP backend on either node is
    plaintext."""
    svc = service(_pooled_tls(tls_cluster))
    context = ssl.create_default_context(cafile=_ca(tls_cluster))

    async def client(endpoint: str, i: int) -> set[bool]:
        host, port = svc.writer if endpoint == "writer" else svc.reader
        conn = await asyncpg.connect(
            host=host, port=port, user="postgres", password=tls_cluster.password, database="postgres", ssl=context
        )
        try:
            seen = set()
            for n in range(20):  # prepared once per client, run on whichever server connection is lent
                assert await conn.fetchval("SELECT $1::int + 1", n + i) == n + i + 1
                seen.add(await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
            return seen
        finally:
            await conn.close()

    async def run() -> list[set[bool]]:
        return await asyncio.gather(*[client("writer", i) for i in range(6)], client("reader", 6))

    assert all(seen == {True} for seen in asyncio.run(run()))
    for node in tls_cluster.nodes:
        plain = node.sql(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.client_addr IS NOT NULL AND a.backend_type = 'client backend' AND NOT s.ssl"
        )
        assert plain == "0", f"{node.name} has {plain} plaintext connections"


def test_a_pool_whose_node_certificate_does_not_verify_fails_with_08001_and_the_reason(tls_cluster, tmp_path):
    """A pool's server connection verifies the node as backend_tls says (here against another CA): the
    borrower gets NodeTlsFailed, 08001, which a pooled client receives as its ErrorResponse. (Through a whole
    service this cannot be shown alone: the monitor would fail the same check and see no writer.)"""
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    n1 = tls_cluster.primary
    secret = Secret.parse(n1.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'"))
    assert secret is not None
    key = client_key_of(tls_cluster.password, secret)
    assert key is not None
    node = NodeState(n1.name, n1.host, n1.port, Role.PRIMARY, Health.HEALTHY)

    async def borrow(context: ssl.SSLContext) -> ServerLink:
        pool = Pool(PoolKey(n1.name, "postgres", "postgres"), node, PoolConfig(), 10, (BackendTls.VERIFY_FULL, context))
        try:
            return await pool.acquire(key, secret)
        finally:
            pool.close(abort=True)
            for link in list(pool.links):
                link.close()

    with pytest.raises(NodeTlsFailed) as refused_tls:
        asyncio.run(borrow(ssl.create_default_context(cafile=str(other))))
    assert refused_tls.value.sqlstate == "08001"
    assert "TLS handshake with node n1 failed" in refused_tls.value.message
    assert "certificate verify failed" in refused_tls.value.message
    link = asyncio.run(borrow(ssl.create_default_context(cafile=_ca(tls_cluster))))  # the right CA: it logs in
    assert link.params["server_version"].startswith("15")


def test_cancel_on_a_tls_session_reaches_its_backend(tls_proxy, tls_cluster):
    with psycopg.connect(tls_proxy.dsn("writer", sslmode="verify-full", sslrootcert=_ca(tls_cluster))) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        timer.join()
        assert time.monotonic() - started < 10


def _issue(directory: Path, name: str) -> trustme.CA:
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(directory / "proxy.pem"))
    ca.cert_pem.write_to_path(str(directory / f"{name}.pem"))
    return ca


def test_reload_serves_the_new_certificate_to_new_sessions_and_keeps_live_ones(tls_cluster, service, tmp_path):
    _issue(tmp_path, "old-ca")
    pem = str(tmp_path / "proxy.pem")
    svc = service(service_config(tls_cluster, tls={"cert_file": pem, "key_file": pem}))

    def dsn(ca):
        return svc.dsn("writer", sslmode="verify-full", sslrootcert=tmp_path / ca)

    with psycopg.connect(dsn("old-ca.pem"), autocommit=True) as live:
        _issue(tmp_path, "new-ca")  # the files change on disk: nothing changes until the reload
        with psycopg.connect(dsn("old-ca.pem")) as before:
            assert before.execute("SELECT 1").fetchone() == (1,)
        assert admin(f"{svc.admin_url}/reload", "POST")["tls_reloaded"] is True
        with psycopg.connect(dsn("new-ca.pem")) as after:
            assert after.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            psycopg.connect(dsn("old-ca.pem"))
        assert live.execute("SELECT 2").fetchone() == (2,)


def test_sighup_reloads_the_certificate_of_a_running_pgaurora(tls_cluster, tmp_path):
    os.chmod(tmp_path, 0o755)
    _issue(tmp_path, "old-ca")
    pem = str(tmp_path / "proxy.pem")
    config = service_config(tls_cluster, tls={"cert_file": pem, "key_file": pem}, state_dir=None)
    proxy = Command("proxy", "-c", str(write_config(config, tmp_path / "pgaurora.toml")))

    def dsn(ca):
        return (
            f"host=127.0.0.1 port={config.writer.port} user=postgres password={tls_cluster.password} "
            f"dbname=postgres sslmode=verify-full sslrootcert={tmp_path / ca}"
        )

    try:
        proxy.wait_for_line("pgaurora is ready", 60)
        with psycopg.connect(dsn("old-ca.pem")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        _issue(tmp_path, "new-ca")
        proxy.proc.send_signal(signal.SIGHUP)
        for _ in wait_until("new sessions to get the new certificate", 10):
            try:
                with psycopg.connect(dsn("new-ca.pem")) as conn:
                    break
            except psycopg.OperationalError:
                continue
    finally:
        assert proxy.stop() == 0, "\n".join(proxy.lines)
    assert any("tls_reloaded" in line for line in proxy.lines)


def test_reload_with_a_broken_key_keeps_the_old_certificate(tls_cluster, service, tmp_path):
    _issue(tmp_path, "ca")
    pem = tmp_path / "proxy.pem"
    svc = service(service_config(tls_cluster, tls={"cert_file": str(pem), "key_file": str(pem)}))
    pem.write_text("not a certificate\n")
    code, message = refused(f"{svc.admin_url}/reload")
    assert code == 409 and "cannot load" in message
    with psycopg.connect(svc.dsn("writer", sslmode="verify-full", sslrootcert=tmp_path / "ca.pem")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_tls_session_on_a_dead_primary_gets_a_clear_error_and_new_sessions_reach_the_new_one(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2, tls=True)
    svc = service(service_config(cluster, tls=tls_settings(cluster)), cluster=cluster)
    tls = {"sslmode": "verify-full", "sslrootcert": _ca(cluster)}
    old = cluster.primary
    with psycopg.connect(svc.dsn("writer", **tls), autocommit=True) as before:
        assert before.execute("SELECT host(inet_server_addr())").fetchone() == (old.host,)
        old.kill()
        with pytest.raises(psycopg.OperationalError) as lost:
            for _ in wait_until("the TLS session to hear that its primary died", 15):
                before.execute("SELECT 1")
        assert lost.value.sqlstate in ("08006", "57P01"), lost.value
    for _ in wait_until("a new TLS session to reach the new primary", 20):
        try:
            with psycopg.connect(svc.dsn("writer", connect_timeout=10, **tls)) as after:
                host, in_recovery, encrypted = after.execute(
                    f"SELECT host(inet_server_addr()), pg_is_in_recovery(), ({SSL_OF_BACKEND})"
                ).fetchone()
        except psycopg.OperationalError:
            continue
        if host != old.host:
            break
    assert not in_recovery and encrypted
    for _ in wait_until("the failover to be recorded, once the replicas are re-pointed", 20):
        if any(e["kind"] == "failover" for e in svc.events.recent()):
            break


SOAK_SESSIONS = int(os.environ.get("PGAURORA_SOAK_SESSIONS", "200"))  # 2000 and more outside CI
TEN_MB = "SELECT repeat('x', 1024) FROM generate_series(1, 10240)"  # 10 MiB of rows


async def _soak_session(i: int, host: str, port: int, password: str, context: ssl.SSLContext) -> str:
    """One TLS session reading 10 MB: in full, cancelled mid-way (a TLS cancel request), or dropped by
    the client mid-result. Returns what happened."""
    conn = await asyncpg.connect(
        host=host, port=port, user="postgres", password=password, database="postgres", ssl=context, timeout=20
    )
    try:
        kind = ("read", "read", "read", "cancel", "drop")[i % 5]
        if kind == "read":
            rows = await conn.fetch(TEN_MB)
            assert len(rows) == 10240 and len(rows[-1][0]) == 1024
        elif kind == "cancel":  # asyncpg cancels the query when the timeout expires
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetch(
                    "SELECT repeat('x', 1024), pg_sleep(0.0005) FROM generate_series(1, 10240)", timeout=0.05
                )
            assert await conn.fetchval("SELECT 1") == 1  # the session survives its cancel
        else:
            task = asyncio.ensure_future(conn.fetch(TEN_MB.replace("10240", "204800")))  # 200 MB: still flowing
            await asyncio.sleep(0.005 + (i % 7) * 0.005)  # fault injection: land somewhere in the result
            conn.terminate()
            with pytest.raises(
                (asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError, ConnectionError, asyncio.CancelledError)
            ):
                await task
        return kind
    finally:
        if not conn.is_closed():
            await conn.close(timeout=10)


def test_tls_soak_every_session_completes_or_fails_clearly_and_none_is_left_open(tls_proxy, tls_cluster):
    """The stall that ended the start_tls attempt: a session the proxy had ended while the client still
    waited. Every session here is bounded, and the proxy ends with no client connection left."""
    host, port = tls_proxy.writer
    context = ssl.create_default_context(cafile=_ca(tls_cluster))
    state = tls_proxy.service.proxy_state

    async def run() -> list[str]:
        done = []
        for i in range(SOAK_SESSIONS):
            done.append(await asyncio.wait_for(_soak_session(i, host, port, tls_cluster.password, context), 60))
        return done

    started = time.monotonic()
    outcomes = asyncio.run(run())
    elapsed = time.monotonic() - started
    assert len(outcomes) == SOAK_SESSIONS
    assert outcomes.count("read") == sum(1 for i in range(SOAK_SESSIONS) if i % 5 < 3)
    for _ in wait_until("the proxy to hold no client connection", 10):
        if state.clients == 0:
            break
    print(f"{SOAK_SESSIONS} TLS sessions in {elapsed:.1f} s; proxy TLS handshakes {state.tls_total}")


@pytest.mark.parametrize("relay", ["native", "python"])
def test_pgbench_reading_10_mb_results_over_tls_never_waits_forever(tls_cluster, service, tmp_path, relay):
    """The stall that made an earlier TLS attempt unusable: pgbench waiting on a session that had sent
    everything. Records of at most 8 kB (as PostgreSQL's) keep libpq's poll() honest, on both paths:
    the relay threads and the Python fallback."""
    svc = service(service_config(tls_cluster, tls=tls_settings(tls_cluster), proxy={"relay": relay}))
    script = tmp_path / "bandwidth.sql"
    script.write_text("SELECT repeat('x', 8000) FROM generate_series(1, 1250);\n")
    os.chmod(tmp_path, 0o755)
    host, port = svc.writer
    env = {**os.environ, "PGPASSWORD": tls_cluster.password, "PGSSLMODE": "require"}
    for _ in range(2):  # the record sizes themselves are checked in tests/component/test_tls_transport.py
        run = subprocess.run(
            [
                tls_cluster.primary.bin("pgbench"),
                "-n",
                "-f",
                str(script),
                "-c",
                "4",
                "-j",
                "2",
                "-t",
                "12",
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
            timeout=90,
        )
        assert run.returncode == 0, run.stderr
        assert "number of transactions actually processed: 48/48" in run.stdout
