"""A custom endpoint over one replica, with real clients, DNS and a node that dies."""

from __future__ import annotations

import subprocess

import dns.resolver
import psycopg
import pytest

from pgaurora.wire import StartupMessage, encode
from tests.helpers import PGAURORA, admin, error_of, exchange, free_ports, hosts_through, service_config, wait_until


def _dsn(svc, port: int) -> str:
    return (
        f"host=127.0.0.1 port={port} user=postgres password={svc.config.monitor.password} dbname=postgres "
        "connect_timeout=10"
    )


def _hosts(svc, port: int, count: int = 8) -> set[str]:
    return hosts_through(_dsn(svc, port), count)


def test_a_custom_endpoint_routes_only_to_its_replica_and_refuses_by_name_when_it_dies(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2)
    reports, spill = free_ports(2)
    endpoints = [
        {"name": "reports", "port": reports, "nodes": ["n3"]},
        {"name": "spill", "port": spill, "nodes": ["n3"], "fallback": "writer"},
    ]
    svc = service(service_config(cluster, endpoints=endpoints), cluster=cluster)
    n3 = cluster.node("n3")
    for _ in wait_until("the custom endpoint to serve n3", 10):
        try:
            if _hosts(svc, reports, 2) == {n3.host}:
                break
        except psycopg.OperationalError:
            continue
    assert _hosts(svc, reports) == {n3.host}  # never n2, never the writer
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = [svc.config.dns.host], svc.config.dns.port
    assert [r.address for r in resolver.resolve(f"reports.{svc.config.zone}", "A")] == [n3.host]
    status = subprocess.run([*PGAURORA, "status", "--admin", svc.admin_url], capture_output=True, text=True, timeout=30)
    assert f"custom reports 127.0.0.1:{reports} -> n3" in status.stdout, status.stdout
    n3.kill()
    for _ in wait_until("the monitor to see n3 down", 10):
        if "n3" not in svc.topology.readers:
            break
    with pytest.raises(psycopg.OperationalError, match="custom endpoint reports: none of its nodes is available"):
        psycopg.connect(_dsn(svc, reports))
    startup = encode(StartupMessage((("user", "postgres"), ("database", "postgres"))))
    error = error_of(exchange(("127.0.0.1", reports), startup)[0])
    assert error.sqlstate == "57P03" and "reports" in error.message
    assert _hosts(svc, spill, 2) == {cluster.primary.host}  # this one falls back to the writer
    metrics = admin(f"{svc.admin_url}/metrics")
    assert 'pgaurora_custom_endpoint_nodes{endpoint="reports"} 0.0' in metrics
    assert 'pgaurora_sessions_total{endpoint="reports",node="n3"}' in metrics
