"""`pgaurora drain` / `undrain`: a replica leaves and rejoins the reader endpoint without being stopped."""

from __future__ import annotations

import subprocess

import dns.resolver
import psycopg

from tests.helpers import PGAURORA, hosts_through, refused, service_config, wait_until


def _reader_hosts(svc, count: int = 12) -> set[str]:
    return hosts_through(svc.dsn("reader", connect_timeout=10), count)


def _reader_dns(svc) -> list[str]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = [svc.config.dns.host], svc.config.dns.port
    return sorted(r.address for r in resolver.resolve(f"reader.{svc.config.zone}", "A"))


def _cli(svc, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PGAURORA, *args, "--admin", svc.admin_url], capture_output=True, text=True, timeout=60)


def test_drained_replica_gets_no_new_reader_sessions_keeps_its_open_ones_and_comes_back(fresh_cluster, service):
    cluster = fresh_cluster(replicas=2)
    svc = service(service_config(cluster), cluster=cluster)
    n2, n3 = cluster.replicas
    for _ in wait_until("both replicas to serve reads", 15):
        if _reader_hosts(svc, 6) == {n2.host, n3.host}:
            break
    on_n2 = None
    for _ in wait_until("a reader session on n2", 15):
        if on_n2 is not None:
            on_n2.close()
        on_n2 = psycopg.connect(svc.dsn("reader", connect_timeout=10), autocommit=True)
        if on_n2.execute("SELECT host(inet_server_addr())").fetchone()[0] == n2.host:
            break
    with on_n2:
        out = _cli(svc, "drain", "n2")
        assert out.returncode == 0 and "n2 drained" in out.stdout, out.stderr
        assert _reader_hosts(svc) == {n3.host} and _reader_dns(svc) == [n3.host]
        assert on_n2.execute("SELECT 1").fetchone() == (1,)  # the open session goes on
        status = _cli(svc, "status")
        rows = [line.split()[:3] for line in status.stdout.splitlines()]
        assert ["n2", f"{n2.host}:{n2.port}", "drained"] in rows, status.stdout
        assert n2.sql("SELECT pg_is_in_recovery()") == "t"  # still running, still replicating
    assert [e["node"] for e in svc.events.recent() if e["kind"] == "drain"] == ["n2"]
    out = _cli(svc, "undrain", "n2")
    assert out.returncode == 0 and "n2 undrained" in out.stdout
    for _ in wait_until("n2 to serve reads again", 10):
        if _reader_hosts(svc, 8) == {n2.host, n3.host}:
            break


def test_draining_the_writer_is_refused_with_the_way_out(fresh_cluster, service):
    cluster = fresh_cluster(replicas=1)
    svc = service(service_config(cluster), cluster=cluster)
    code, body = refused(f"{svc.admin_url}/drain/n1")
    assert code == 409 and "switch over first" in body
    out = _cli(svc, "drain", "n9")
    assert out.returncode == 1 and "no node named 'n9'" in out.stderr and "Traceback" not in out.stderr
