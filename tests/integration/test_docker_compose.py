"""docker/compose.yaml (issue 26): the pgaurora image and three PostgreSQL containers come up with host
networking, serve through both endpoints, fail over, and go away leaving no container, network or volume."""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests.helpers import require_docker, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker" / "compose.yaml"


def _compose_binary() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        if os.environ.get("PGAURORA_REQUIRE_DOCKER") == "1":
            pytest.fail("docker-compose is required here (PGAURORA_REQUIRE_DOCKER=1); .ci/run installs it")
        pytest.skip("no docker-compose (Debian's docker-compose package)")
    return found


class Compose:
    """One project of docker/compose.yaml on its own loopback block, with a password of its own."""

    def __init__(self) -> None:
        self.binary = _compose_binary()
        self.project = f"pgaurora-test-{secrets.token_hex(4)}"
        self.net = f"127.0.{random.randint(100, 250)}"
        self.password = secrets.token_urlsafe(16)
        self.env = {**os.environ, "PGAURORA_NET": self.net, "PGAURORA_PASSWORD": self.password}

    def run(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [self.binary, "-f", str(COMPOSE), "-p", self.project, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"docker-compose {' '.join(args)}: {done.stderr[-3000:]}"
        return done.stdout

    def query(self, port: int, sql: str) -> tuple:
        address = {"host": f"{self.net}.10", "port": port, "dbname": "postgres", "connect_timeout": 3}
        with psycopg.connect(**address, user="postgres", password=self.password) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchone() if cursor.description else ()

    def failover_safe(self) -> bool:
        """Would a failover now keep every acknowledged commit (voters proven)? Asked of pgaurora's admin API
        with the token it keeps in its container."""
        script = "print(open('/tmp/pgaurora/admin.token').read().strip())"
        token = self.run("exec", "-T", "pgaurora", "python3", "-c", script).strip()
        request = urllib.request.Request(
            f"http://{self.net}.10:6434/status", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(json.load(response)["failover_safe"])

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        kinds = {"containers": ["ps", "-aq"], "networks": ["network", "ls", "-q"], "volumes": ["volume", "ls", "-q"]}
        return {
            kind: subprocess.run(["docker", *args, "--filter", label], capture_output=True, text=True).stdout.split()
            for kind, args in kinds.items()
        }


def _answer(compose: Compose, port: int, sql: str, what: str, timeout: float) -> tuple:
    for _ in wait_until(what, timeout, interval=0.5):
        try:
            return compose.query(port, sql)
        except psycopg.Error:
            continue
    raise AssertionError(what)


def test_the_compose_file_serves_both_endpoints_fails_over_and_leaves_nothing_behind():
    require_docker()
    compose = Compose()
    subprocess.run([sys.executable, "-m", "pgaurora", "image", "build", "--python", "--source", str(REPO)], check=True)
    try:
        compose.run("up", "-d", "--no-build")
        where = "SELECT pg_is_in_recovery(), host(inet_server_addr())"
        writer = _answer(compose, 6432, where, "the writer endpoint", 90)
        assert writer == (False, f"{compose.net}.1")
        for _ in wait_until("a replica behind the reader endpoint", 30, interval=0.5):
            reader = _answer(compose, 6433, where, "the reader endpoint", 30)
            if reader[0]:
                break
        assert reader[1] in (f"{compose.net}.2", f"{compose.net}.3")
        compose.query(6432, "CREATE TABLE kept AS SELECT 42 AS answer")
        for _ in wait_until("the voters to prove a failover safe", 60, interval=0.5):
            if compose.failover_safe():  # before that, pgaurora rightly refuses to promote
                break
        compose.run("kill", "n1")  # SIGKILL: the primary's container dies
        try:
            for _ in wait_until("a promoted replica behind the writer endpoint", 30, interval=0.2):
                try:
                    after = compose.query(6432, f"{where}, (SELECT answer FROM kept)")
                except psycopg.Error:
                    continue
                if after[1] != f"{compose.net}.1":
                    break
        except AssertionError as exc:  # what pgaurora said, to tell why
            raise AssertionError(f"{exc}\n{compose.run('logs', '--tail', '40', 'pgaurora')}") from None
        assert after[0] is False and after[2] == 42, after
    finally:
        compose.run("down", "--volumes", "--remove-orphans", "--timeout", "5")
    assert compose.leftovers() == {"containers": [], "networks": [], "volumes": []}
