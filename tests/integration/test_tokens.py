"""Short-lived tokens instead of passwords, and pg_hba-style rules, on pooled endpoints (issue 24)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import asyncpg
import psycopg
import pytest
import trustme

from tests.helpers import PGAURORA, ServiceThread, admin, refused, service_config, wait_until

pytestmark = pytest.mark.integration

JAR = Path("/usr/share/java/postgresql.jar")
PROBE = Path(__file__).parent / "clients" / "JdbcProbe.java"
APP_PASSWORD = "app-password-1"


def _secret_file(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def tokened(cluster, tmp_path_factory):
    """A pooled writer and reader with TLS from clients; role app logs in by token, everyone else by SCRAM."""
    directory = tmp_path_factory.mktemp("tokens")
    cluster.primary.sql(f"DROP ROLE IF EXISTS app; CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'")
    trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(directory / "proxy.pem"))
    pem = str(directory / "proxy.pem")
    keys = {
        "k1": _secret_file(directory / "k1.key", "one-" * 12),
        "k2": _secret_file(directory / "k2.key", "two-" * 12),
    }
    logins = _secret_file(directory / "logins", f'"app" "{APP_PASSWORD}"\n')
    config = service_config(
        cluster,
        writer={"pool_mode": "transaction"},
        reader={"pool_mode": "transaction"},
        pool={"auth_user": "pgaurora_auth", "auth_password": cluster.auth_password},
        tls={"cert_file": pem, "key_file": pem},
        tokens={"keys": [{"id": "k1", "file": keys["k1"]}], "login_file": logins, "max_ttl": 600, "default_ttl": 300},
        rules=[
            {"users": ["app"], "method": "token"},
            {"databases": ["forbidden"], "method": "reject"},
            {"addresses": ["127.0.0.1/32"], "method": "scram"},
        ],
    )
    svc = ServiceThread(config, cluster=cluster)
    svc.wait_ready()
    yield svc, config, keys
    svc.stop()
    cluster.primary.sql("DROP ROLE IF EXISTS app")


def _issue(svc, **body) -> str:
    return admin(svc.admin_url + "/tokens", "POST", {"user": "app", **body})["token"]


def _dsn(svc, token: str, endpoint: str = "writer", sslmode: str = "require") -> str:
    return svc.dsn(endpoint, user="app", password=token, sslmode=sslmode)


def _refusal(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(dsn, connect_timeout=10)
    return str(caught.value)


def test_a_token_logs_in_with_psql_psycopg_asyncpg_and_jdbc_over_tls(tokened):
    svc, _, _ = tokened
    token = _issue(svc, ttl=300)
    for endpoint in ("writer", "reader"):
        with psycopg.connect(_dsn(svc, token, endpoint)) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("app",)
    out = subprocess.run(["psql", _dsn(svc, token), "-Atc", "SELECT current_user"], capture_output=True, text=True,
                         timeout=30)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "app", out.stderr

    async def with_asyncpg() -> str:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        host, port = svc.writer
        conn = await asyncpg.connect(host=host, port=port, user="app", password=token, database="postgres",
                                     ssl=context)  # fmt: skip
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    assert asyncio.run(with_asyncpg()) == "app"
    if shutil.which("java") is None or not JAR.exists():
        pytest.skip("java and libpostgresql-jdbc-java are installed by .ci/run")
    host, port = svc.writer
    jdbc = subprocess.run(
        ["java", "-cp", str(JAR), str(PROBE), f"jdbc:postgresql://{host}:{port}/postgres?sslmode=require"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PGUSER": "app", "PGPASSWORD": token},
    )  # fmt: skip
    assert jdbc.returncode == 0, jdbc.stderr
    assert jdbc.stdout.split()[0] == "false"  # on the writer


def test_pgaurora_token_prints_a_token_that_logs_in(tokened):
    svc, _, _ = tokened
    out = subprocess.run([*PGAURORA, "token", "--admin", svc.admin_url, "--user", "app", "--ttl", "5m",
                          "--endpoint", "writer"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    with psycopg.connect(_dsn(svc, token)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "not for the reader endpoint" in _refusal(_dsn(svc, token, "reader"))
    audit = admin(svc.admin_url + "/events?audit=true")
    assert any(e.get("request") == "POST /tokens" for e in audit)
    assert token not in str(admin(svc.admin_url + "/events")) + admin(svc.admin_url + "/metrics")


def test_expired_foreign_tampered_and_plaintext_tokens_are_refused_with_28P01(tokened):
    svc, _, _ = tokened
    short = _issue(svc, ttl=1)
    with psycopg.connect(_dsn(svc, short)):
        pass
    for _ in wait_until("the one-second token to expire", 10):
        try:
            psycopg.connect(_dsn(svc, short), connect_timeout=10).close()
        except psycopg.OperationalError as exc:
            message = str(exc)
            break
    assert 'token authentication failed for user "app": the token has expired' in message
    other = admin(svc.admin_url + "/tokens", "POST", {"user": "postgres", "ttl": 60})["token"]
    assert 'the token is for another role, not "app"' in _refusal(_dsn(svc, other))
    good = _issue(svc, ttl=60)
    head, body, signature = good.split(".")
    tampered = f"{head}.{body}.{signature[:-4]}{'AAAA' if not signature.endswith('AAAA') else 'BBBB'}"
    assert "signature does not verify" in _refusal(_dsn(svc, tampered))
    assert "a token is only accepted over TLS" in _refusal(_dsn(svc, good, sslmode="disable"))
    assert "password authentication failed" not in _refusal(_dsn(svc, "not-a-token"))
    metrics = admin(svc.admin_url + "/metrics")
    assert 'pgaurora_rule_logins_total{endpoint="writer",outcome="refused",rule="1"}' in metrics


def test_a_rotated_key_keeps_old_tokens_valid_and_new_tokens_use_the_new_key(tokened):
    svc, config, keys = tokened
    old = _issue(svc, ttl=300)
    rotated = config.tokens.model_copy(update={"keys": (type(config.tokens.keys[0])(id="k2", file=keys["k2"]),)})
    try:
        svc.call(svc.service.apply_config(config.model_copy(update={"tokens": rotated}), "rotate the token key"))
        issued = admin(svc.admin_url + "/tokens", "POST", {"user": "app", "ttl": 60})
        assert issued["key"] == "k2"
        for token in (old, issued["token"]):
            with psycopg.connect(_dsn(svc, token)) as conn:
                assert conn.execute("SELECT current_user").fetchone() == ("app",)
    finally:
        svc.call(svc.service.apply_config(config, "the first key again"))


def test_rules_reject_a_database_and_refuse_what_no_rule_matches_with_28000(tokened, cluster):
    svc, _, _ = tokened
    message = _refusal(svc.dsn("writer", dbname="forbidden", sslmode="disable"))
    assert "pgaurora rule 2 rejects this client" in message
    with psycopg.connect(svc.dsn("writer", sslmode="disable")) as conn:  # postgres from 127.0.0.1: rule 3, SCRAM
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    with socket.create_connection(svc.writer, timeout=10, source_address=("127.0.0.2", 0)) as sock:
        body = b"\x00\x03\x00\x00user\x00postgres\x00database\x00postgres\x00\x00"
        sock.sendall((len(body) + 4).to_bytes(4, "big") + body)
        answer = sock.recv(1000)
    assert answer[:1] == b"E" and b"C28000" in answer, answer
    assert b'no pgaurora rule for host "127.0.0.2", user "postgres", database "postgres", no encryption' in answer
    assert 'rule="none"' in admin(svc.admin_url + "/metrics")
    _, config, _ = tokened
    opened = config.model_copy(update={"rules": (*config.rules[:1], *config.rules[2:])})  # rule 2 removed
    try:
        svc.call(svc.service.apply_config(opened, "no more rejecting the forbidden database"))
        message = _refusal(svc.dsn("writer", dbname="forbidden", sslmode="disable"))
        assert 'database "forbidden" does not exist' in message, message  # let in: the node itself answers
    finally:
        svc.call(svc.service.apply_config(config, "the rules again"))


def test_tokens_cannot_be_issued_without_the_operate_scope_or_keys(tokened, tmp_path):
    svc, _, _ = tokened
    status, message = refused(svc.admin_url + "/tokens", "POST", {"user": "app", "ttl": 100000})
    assert status == 400 and "ttl" in message
    status, message = refused(svc.admin_url + "/tokens", "POST", {"user": "app", "endpoints": ["nowhere"]})
    assert status == 409 and "no such endpoint: nowhere" in message
