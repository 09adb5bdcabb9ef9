"""Secrets stay secret (issue 24): the whole demo, run with marker secrets, never shows one in an output, a log,
an event, /status, /metrics, an error message or a process title."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pgaurora.compose import LocalCluster
from tests.helpers import PGAURORA, Command, admin, free_ports, wait_until
from tests.integration.test_cli import _up_args, state_dir  # noqa: F401  (state_dir is a fixture)

pytestmark = pytest.mark.integration

MARK = "marker-pw-7f3a9c1e"
WRONG = "marker-wrong-5b2d8e0a"


def _cli(*args: str, password: str | None = None) -> str:
    env = {**os.environ, **({"PGPASSWORD": password} if password else {})}
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    return out.stdout + out.stderr


def _titles(root: int) -> list[str]:
    """The command lines (process titles) of root and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    titles, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            titles.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
        todo += children.get(pid, [])
    return titles


def test_the_demo_shows_no_secret_anywhere(state_dir):  # noqa: F811  (the fixture imported above)
    ports = tuple(free_ports(4))
    writer, reader, admin_port, _ = ports
    up = Command(*_up_args(state_dir, ports), "--pool", "transaction", env={"PGAURORA_PASSWORD": MARK})
    url = f"http://127.0.0.1:{admin_port}"
    outputs: dict[str, str] = {}
    try:
        up.wait_for_line("pgaurora is ready", 90)
        cluster = LocalCluster.open(state_dir)
        token = (state_dir / "admin.token").read_text().strip()
        secrets = {MARK, WRONG, cluster.replication_password, cluster.auth_password, token}
        for port in (writer, reader):
            psql = ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-XAtc"]
            outputs[f"psql {port}"] = _cli(*psql, "SELECT 1", password=MARK)
            outputs[f"psql {port} wrong"] = _cli(*psql, "SELECT 1", password=WRONG)
            assert "password authentication failed" in outputs[f"psql {port} wrong"]
        outputs["psql error"] = _cli(*psql, "SELECT no_such_column", password=MARK)
        for command in (["status"], ["status", "--json"], ["events"], ["events", "--audit"], ["switchover"]):
            outputs[" ".join(command)] = _cli(*PGAURORA, *command, "--admin", url)
        for _ in wait_until("the new writer to serve", 30):
            if _cli("psql", "-h", "127.0.0.1", "-p", str(writer), "-U", "postgres", "-XAtc", "SELECT 1",
                    password=MARK).strip() == "1":  # fmt: skip
                break
        outputs["/status"] = json.dumps(admin(url + "/status"))
        outputs["/metrics"] = admin(url + "/metrics")
        outputs["/events"] = json.dumps(admin(url + "/events"))
        outputs["titles"] = "\n".join(_titles(up.proc.pid))
    finally:
        assert up.stop() == 0, "\n".join(up.lines[-20:])
    outputs["pgaurora up"] = "\n".join(up.lines)
    for path in [*state_dir.glob("*.jsonl"), *state_dir.glob("**/postgres.log")]:
        outputs[str(path)] = path.read_text(errors="replace")
    assert "switchover" in outputs["/events"] and len(outputs) > 15
    found = [
        (where, line.replace(secret, "<SECRET>"))
        for where, text in outputs.items()
        for line in text.splitlines()
        for secret in secrets
        if secret in line
    ]
    assert not found, found
