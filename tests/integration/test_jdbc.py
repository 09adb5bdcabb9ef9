"""JDBC (pgjdbc from Debian's libpostgresql-jdbc-java) through both endpoints."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

JAR = pathlib.Path("/usr/share/java/postgresql.jar")
PROBE = pathlib.Path(__file__).parent / "clients" / "JdbcProbe.java"

pytestmark = pytest.mark.skipif(
    shutil.which("java") is None or not JAR.exists(), reason="java and libpostgresql-jdbc-java are installed by .ci/run"
)


def _jdbc(proxy, endpoint: str, *sql: str) -> tuple[str, str]:
    host, port = getattr(proxy, endpoint)
    out = subprocess.run(
        ["java", "-cp", str(JAR), str(PROBE), f"jdbc:postgresql://{host}:{port}/postgres", *sql],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PGPASSWORD": "test-pw"},
    )
    assert out.returncode == 0, out.stderr
    in_recovery, address = out.stdout.split()
    return in_recovery, address


def test_jdbc_writer_writes_to_primary_and_reader_reads_a_replica(proxy, cluster):
    assert _jdbc(proxy, "writer", "CREATE TABLE IF NOT EXISTS via_jdbc AS SELECT 1 AS v") == (
        "false",
        cluster.primary.host,
    )
    assert cluster.primary.sql("SELECT count(*) FROM via_jdbc") == "1"
    in_recovery, address = _jdbc(proxy, "reader")
    assert in_recovery == "true" and address in {r.host for r in cluster.replicas}
