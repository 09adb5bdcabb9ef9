"""Monitoring against the real thing (issue 26): a real Prometheus scrapes pgaurora with a read token, sees the
writer, and fires the failover alert of docs/monitoring/alerts.yml after a kill; the Grafana dashboard and the
rules use only metrics that pgaurora exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import admin, admin_tokens, free_port, service_config, wait_until

pytestmark = pytest.mark.integration

MONITORING = Path(__file__).resolve().parents[2] / "docs" / "monitoring"


def _names_in(text: str) -> set[str]:
    return set(re.findall(r"\bpgaurora_[a-z_]+\b", text))


def _exported(metrics: str) -> set[str]:
    return {line.split()[2] for line in metrics.splitlines() if line.startswith("# TYPE ")} | {
        line.split("{")[0].split()[0] for line in metrics.splitlines() if line and not line.startswith("#")
    }


def test_the_dashboard_and_the_alert_rules_use_only_metrics_pgaurora_exports(fresh_cluster, service):
    cluster = fresh_cluster(replicas=1)
    pool = {"auth_user": "pgaurora_auth", "auth_password": cluster.auth_password}
    svc = service(service_config(cluster, backup={}, writer={"pool_mode": "transaction"}, pool=pool), cluster)
    exported = _exported(admin(svc.admin_url + "/metrics"))
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    queries = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    rules = (MONITORING / "alerts.yml").read_text()
    assert len(_names_in(queries)) >= 15
    assert not _names_in(queries) - exported, sorted(_names_in(queries) - exported)
    assert not _names_in(rules) - exported, sorted(_names_in(rules) - exported)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_a_real_prometheus_scrapes_pgaurora_sees_the_writer_and_fires_the_failover_alert(
    fresh_cluster, service, tmp_path
):
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus package is installed by .ci/run")
    cluster = fresh_cluster(replicas=2)
    tokens, values = admin_tokens(tmp_path, prometheus="read")  # tmp_path/prometheus.token, mode 600
    svc = service(service_config(cluster, admin={"tokens": tokens}), cluster)
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{MONITORING / 'alerts.yml'}]\n"
        "scrape_configs:\n"
        "  - job_name: pgaurora\n"
        f"    authorization: {{credentials_file: {tmp_path / 'prometheus.token'}}}\n"
        f"    static_configs: [{{targets: ['{svc.admin_url.split('//')[1]}']}}]\n"
    )
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"),
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        for _ in wait_until("Prometheus to scrape pgaurora", 30, interval=0.2):
            try:
                targets = _get(api + "/targets")["data"]["activeTargets"]
            except OSError:
                continue
            if targets and targets[0]["health"] == "up":
                break
        query = urllib.parse.quote("pgaurora_writer == 1")
        for _ in wait_until("the writer in Prometheus", 15, interval=0.2):
            result = _get(f"{api}/query?query={query}")["data"]["result"]
            if result:
                break
        assert [r["metric"]["node"] for r in result] == [svc.topology.writer] == ["n1"]
        alerts = _get(api + "/alerts")["data"]["alerts"]
        assert not [a for a in alerts if a["labels"]["alertname"] == "PgauroraFailover"], alerts
        cluster.primary.kill()
        for _ in wait_until("the failover alert to fire", 45, interval=0.5):
            firing = [a for a in _get(api + "/alerts")["data"]["alerts"]
                      if a["labels"]["alertname"] == "PgauroraFailover" and a["state"] == "firing"]  # fmt: skip
            if firing:
                break
        assert svc.topology.writer != "n1"
    finally:
        prometheus.terminate()
        prometheus.wait(30)
    assert values["prometheus"] not in (tmp_path / "prometheus.log").read_text()
