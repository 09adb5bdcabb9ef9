"""Reloading `pgaurora proxy -c FILE`: nodes added, settings changed, open sessions kept; bad files refused."""

from __future__ import annotations

import json
import signal

import psycopg

from pgaurora.service.admin.client import AdminError
from tests.helpers import Command, admin, service_config, wait_until, write_config


def _post(url: str) -> tuple[int, dict]:
    try:
        return 200, admin(url, "POST")
    except AdminError as exc:
        return exc.status, {"error": exc.message, "problems": exc.problems}


def _status(admin_url: str) -> dict:
    return admin(f"{admin_url}/status")


def test_reload_adds_a_node_and_changes_the_policy_keeping_open_sessions(fresh_cluster, tmp_path):
    cluster = fresh_cluster(replicas=2)
    full = service_config(cluster, state_dir=None)
    path = tmp_path / "pgaurora.toml"
    two_nodes = full.model_copy(update={"nodes": full.nodes[:2]})
    write_config(two_nodes, path)
    proxy = Command("proxy", "-c", str(path))
    admin = f"http://{full.admin.host}:{full.admin.port}"

    def dsn(endpoint):
        port = getattr(full, endpoint).port
        return f"host=127.0.0.1 port={port} user=postgres password={cluster.password} dbname=postgres"

    try:
        proxy.wait_for_line("pgaurora is ready", 60)
        assert [n["name"] for n in _status(admin)["nodes"]] == ["n1", "n2"]
        with (
            psycopg.connect(dsn("writer"), autocommit=True) as writer,
            psycopg.connect(dsn("reader"), autocommit=True) as reader,
        ):
            data = json.loads(full.model_dump_json(exclude_none=True))
            data["reader"]["policy"] = "least_connections"
            write_config(type(full).model_validate(data), path)
            code, result = _post(f"{admin}/reload")
            assert code == 200 and result["added"] == ["n3"] and "reader.policy" in result["changed"], result
            for _ in wait_until("n3 to serve reads", 15):
                if "n3" in _status(admin)["reader"]["nodes"]:
                    break
            assert _status(admin)["reader"]["policy"] == "least_connections"
            assert writer.execute("SELECT 1").fetchone() == (1,) and reader.execute("SELECT 2").fetchone() == (2,)

            path.write_text(
                path.read_text().replace("probe_interval = 0.2", "probe_interval = -1") + "\n[bogus]\nx = 1\n"
            )
            code, refused = _post(f"{admin}/reload")
            assert code == 409 and len(refused["problems"]) == 2, refused  # every problem, nothing applied
            assert [n["name"] for n in _status(admin)["nodes"]] == ["n1", "n2", "n3"]

            data["writer"]["port"] += 1
            write_config(type(full).model_validate(data), path)
            proxy.proc.send_signal(signal.SIGHUP)  # SIGHUP: the same reload
            proxy.wait_for_line("writer.port: changed, and needs a restart", 10)
            code, refused = _post(f"{admin}/reload")
            assert code == 409 and refused["problems"] == [
                "writer.port: changed, and needs a restart; nothing was applied"
            ]
            data["writer"]["port"] -= 1
            data["nodes"] = [n for n in data["nodes"] if n["name"] != "n2"]
            write_config(type(full).model_validate(data), path)
            code, refused = _post(f"{admin}/reload")  # n2 votes in quorum commit: it cannot just vanish
            assert code == 409 and "n2 is a voter" in refused["problems"][0], refused
            assert writer.execute("SELECT 3").fetchone() == (3,)
    finally:
        assert proxy.stop() == 0, "\n".join(proxy.lines[-30:])
