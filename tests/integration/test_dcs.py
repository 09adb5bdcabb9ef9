"""Several pgaurora instances, one acting, agreed through a real 3-member etcd cluster on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import dns.resolver
import psycopg
import pytest

from pgaurora.compose.certs import CertAuthority
from pgaurora.compose.etcd import EtcdCluster, find_etcd
from pgaurora.core.errors import ClusterError
from pgaurora.testing.background import WriteLoop
from tests.helpers import (
    PGAURORA,
    Command,
    admin,
    cluster_dir,
    free_loopback_base,
    free_ports,
    ids_on,
    observe,
    refused,
    service_config,
    wait_until,
    write_config,
)

try:
    find_etcd()
except ClusterError:
    pytest.skip("etcd is installed by .ci/run (Debian's etcd-server)", allow_module_level=True)

TTL = 3.0


@pytest.fixture
def etcd():
    cluster = EtcdCluster(cluster_dir() / "etcd", 3, free_loopback_base(3))
    cluster.start()
    yield cluster
    cluster.destroy()
    shutil.rmtree(cluster.root.parent, ignore_errors=True)


class Instance:
    """A `pgaurora proxy -c` process with [dcs], and what its admin endpoint says."""

    def __init__(self, name: str, cluster, endpoints: list[str], workdir, env: dict | None = None) -> None:
        self.name = name
        host = free_loopback_base(1)  # each instance on an address of its own, like a host of its own
        self.config = service_config(
            cluster,
            dcs={"etcd": endpoints, "instance": name, "ttl": TTL},
            state_dir=None,
            writer={"host": host},
            reader={"host": host},
            admin={"host": host},
            dns={"host": host},
        )
        path = write_config(self.config, workdir / f"{name}.toml")
        self.command = Command("proxy", "-c", str(path), env=env)

    @property
    def pid(self) -> int:
        return self.command.proc.pid

    @property
    def writer(self) -> tuple[str, int]:
        return self.config.writer.host, self.config.writer.port

    @property
    def admin_url(self) -> str:
        return f"http://{self.config.admin.host}:{self.config.admin.port}"

    def get(self, path: str, timeout: float = 5):
        return admin(self.admin_url + path, timeout=timeout)

    def status(self) -> dict:
        return self.get("/status")

    def events(self, kind: str | None = None) -> list[dict]:
        return [e for e in self.get("/events") if kind is None or e["kind"] == kind]

    def stop(self) -> None:
        if self.command.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
        self.command.stop()


@pytest.fixture
def instances(tmp_path):
    made: list[Instance] = []

    def start(
        cluster, etcd_endpoints, *names: str, endpoints: dict | None = None, env: dict | None = None
    ) -> list[Instance]:
        for name in names:
            made.append(Instance(name, cluster, (endpoints or {}).get(name, etcd_endpoints), tmp_path, env))
        for instance in made[-len(names) :]:
            instance.command.wait_for_line("pgaurora is ready", 60)
        return made[-len(names) :]

    yield start
    for instance in made:
        instance.stop()


def _leader_and_other(a: Instance, b: Instance) -> tuple[Instance, Instance]:
    for _ in wait_until("one instance to lead", 15):
        roles = {i.name: i.status()["dcs"]["role"] for i in (a, b)}
        if sorted(roles.values()) == ["follower", "leader"]:
            break
    return (a, b) if roles[a.name] == "leader" else (b, a)


def test_both_instances_route_alike_show_the_same_leader_follow_its_changes_and_back_each_other_up(
    fresh_cluster, etcd, instances
):
    cluster = fresh_cluster(replicas=2)
    a, b = instances(cluster, etcd.endpoints, "i1", "i2")
    leader, follower = _leader_and_other(a, b)
    for _ in wait_until("each instance to know both, and the same leader", TTL):
        seen = [
            (s["dcs"]["leader"], sorted(s["dcs"]["instances"]), s["writer"]["node"], s["epoch"])
            for s in (a.status(), b.status())
        ]
        if seen[0] == seen[1] == (leader.name, ["i1", "i2"], "n1", seen[0][3]):
            break
    for instance in (a, b):
        host, port = instance.writer
        with psycopg.connect(
            host=host, port=port, user="postgres", password=cluster.password, dbname="postgres"
        ) as conn:
            assert conn.execute("SELECT host(inet_server_addr())").fetchone() == (cluster.primary.host,)
    shown = []
    for instance in (a, b):  # `pgaurora status` against either instance: the same leader and topology
        out = subprocess.run(
            [*PGAURORA, "status", "--admin", instance.admin_url], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert any(f"{leader.name} (leader)" in line for line in lines), out.stdout
        shown.append(
            [
                re.sub(r"127\.\d+\.\d+\.\d+:\d+", "ENDPOINT", line.split("this one:")[0])
                for line in lines
                if line.startswith(("writer", "instances"))
            ]
            + [line.split()[:4] for line in lines if line.startswith(("n1", "n2", "n3"))]
        )
    assert shown[0] == shown[1] and len(shown[0]) == 5, shown
    metrics = admin(f"{leader.admin_url}/metrics")
    assert "pgaurora_dcs_leader 1.0" in metrics and "pgaurora_dcs_up 1.0" in metrics
    assert follower.status()["dcs"]["role"] == "follower"
    code, message = refused(f"{follower.admin_url}/switchover")  # acting is the leader's: the follower says where
    assert code == 409 and leader.admin_url in message
    hosts = sorted(i.config.writer.host for i in (a, b))
    for instance in (a, b):  # proxy.<zone> names every live instance, from either one's DNS server
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port = [instance.config.dns.host], instance.config.dns.port
        for _ in wait_until("proxy.<zone> to list both instances", TTL):
            if sorted(r.address for r in resolver.resolve(f"proxy.{instance.config.zone}", "A")) == hosts:
                break
    _followers_route_the_leaders_changes_within_one_watch_round_trip(leader, follower)
    _a_multi_host_connection_string_survives_the_loss_of_an_instance(cluster, a, b)


def _followers_route_the_leaders_changes_within_one_watch_round_trip(leader: Instance, follower: Instance) -> None:
    lags = []
    for drained in (True, False, True, False):  # polling alone (every ttl/4 + a probe) would take ~0.6 s
        path = "/drain/n2" if drained else "/undrain/n2"
        admin(leader.admin_url + path, "POST", timeout=10)
        at_leader = _drained_at(leader, "n2", drained, 5)
        lags.append(_drained_at(follower, "n2", drained, 5) - at_leader)
    print(f"follower lag behind the leader: {[round(x, 3) for x in lags]} s")
    assert max(lags) < 0.4, lags


def _a_multi_host_connection_string_survives_the_loss_of_an_instance(cluster, a: Instance, b: Instance) -> None:
    dsn = (
        f"host={a.writer[0]},{b.writer[0]} port={a.writer[1]},{b.writer[1]} user=postgres "
        f"password={cluster.password} dbname=postgres target_session_attrs=read-write connect_timeout=5"
    )
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT host(inet_server_addr())").fetchone() == (cluster.primary.host,)
    os.kill(a.pid, signal.SIGKILL)
    with psycopg.connect(dsn) as conn:  # libpq moves on to the next host
        assert conn.execute("SELECT host(inet_server_addr())").fetchone() == (cluster.primary.host,)


def _drained_at(instance: Instance, node: str, drained: bool, deadline: float) -> float:
    for _ in wait_until(f"{instance.name} to show {node} drained={drained}", deadline, interval=0.01):
        if next(n for n in instance.status()["nodes"] if n["name"] == node)["drained"] is drained:
            return time.monotonic()


def test_leader_instance_and_primary_killed_together_survivor_promotes_losing_nothing(fresh_cluster, etcd, instances):
    cluster = fresh_cluster(replicas=2)
    a, b = instances(cluster, etcd.endpoints, "i1", "i2")
    leader, survivor = _leader_and_other(a, b)
    epoch = survivor.status()["epoch"]
    writes = WriteLoop(survivor.writer, "postgres", cluster.password, "numbers")
    try:
        writes.wait_acked(50, 10)
        killed = time.time()
        os.kill(leader.pid, signal.SIGKILL)
        cluster.primary.kill()
        for _ in wait_until("writes to resume through the surviving instance", TTL + 15):
            if writes.resumed_after(killed):
                break
        resumed = writes.resumed_after(killed)
        writes.wait_acked(len(writes.acked) + 20, 10)
    finally:
        writes.stop()
    downtime = resumed - killed
    print(f"write downtime with the leader instance and the primary killed: {downtime:.2f} s")
    assert downtime <= TTL + 3, f"writes resumed {downtime:.2f} s after the kills (ttl {TTL} s)"
    (failover,) = survivor.events("failover")
    assert failover["old_writer"] == "n1" and failover["epoch"] == epoch + 1
    assert survivor.status()["dcs"]["role"] == "leader"
    new = cluster.node(failover["new_writer"])
    acked = {i for i, _ in writes.acked}
    assert acked <= ids_on(new), f"lost acknowledged writes: {sorted(acked - ids_on(new))[:10]}"


def test_a_leader_that_dies_in_the_middle_of_a_failover_is_succeeded_and_the_failover_completed(
    fresh_cluster, etcd, instances
):
    cluster = fresh_cluster(replicas=2)
    (first,) = instances(cluster, etcd.endpoints, "i1", env={"PGAURORA_CRASH_AT": "after_promote"})
    for _ in wait_until("i1 to lead", 15):
        if first.status()["dcs"]["role"] == "leader":
            break
    (second,) = instances(cluster, etcd.endpoints, "i2")
    epoch = second.status()["epoch"]
    cluster.primary.kill()  # i1 promotes a replica, then dies before it records the new epoch
    for _ in wait_until("i1 to crash after promoting", 20):
        if first.command.proc.poll() is not None:
            break
    for _ in wait_until("i2 to take over and complete the failover", TTL + 15):
        done = second.events("failover_completed_after_restart")
        if done:
            break
    for _ in wait_until("i2 to route writes to the promoted node", 5):
        status = second.status()
        if status["writer"]["node"] == done[0]["new_writer"]:
            break
    promoted = [n for n in cluster.replicas if n.sql("SELECT pg_is_in_recovery()") == "f"]
    assert [n.name for n in promoted] == [done[0]["new_writer"]]
    assert status["epoch"] == epoch + 1 and status["dcs"]["role"] == "leader"
    assert not second.events("failover_started"), "the successor promoted a second node"


def test_a_paused_leader_is_deposed_and_on_waking_touches_no_node(fresh_cluster, etcd, instances):
    cluster = fresh_cluster(replicas=2)
    a, b = instances(cluster, etcd.endpoints, "i1", "i2")
    leader, other = _leader_and_other(a, b)
    os.kill(leader.pid, signal.SIGSTOP)
    try:
        for _ in wait_until("the other instance to take the lead", TTL + 10):
            if other.status()["dcs"]["role"] == "leader":
                break
        cluster.primary.kill()  # the new leader acts: a failover, new epoch
        for _ in wait_until("the new leader to fail over", 20):
            if other.events("failover"):
                break
    finally:
        os.kill(leader.pid, signal.SIGCONT)
    for _ in wait_until("the woken instance to know it follows", 10):
        status = leader.status()
        if status["dcs"]["role"] == "follower" and status["epoch"] == other.status()["epoch"]:
            break
    assert leader.events("leader_lost"), "the woken leader never recorded that it lost the lead"
    acted = [
        e
        for e in leader.events()
        if e["kind"] in ("failover_started", "failover", "repoint", "fence", "sync_standbys", "promote")
    ]
    assert acted == [], f"the deposed leader acted: {acted}"
    promoted = [e["epoch"] for i in (leader, other) for e in i.events("failover_started")]
    assert len(promoted) == len(set(promoted)) == 1, promoted


def test_an_instance_cut_off_from_etcd_stops_acting_and_the_other_takes_over(fresh_cluster, etcd, instances):
    cluster = fresh_cluster(replicas=2)
    first, rest = etcd.endpoints[0], etcd.endpoints[1:]
    (cut,) = instances(cluster, etcd.endpoints, "i1", endpoints={"i1": [first]})
    for _ in wait_until("i1 to lead", 15):
        if cut.status()["dcs"]["role"] == "leader":
            break
    (other,) = instances(cluster, etcd.endpoints, "i2", endpoints={"i2": rest})
    etcd.stop_member(etcd.members[0].name)  # i1's only etcd member; the other two keep quorum
    for _ in wait_until("i1 to stop acting and i2 to lead", TTL + 10):
        if cut.status()["dcs"]["role"] == "cut_off" and other.status()["dcs"]["role"] == "leader":
            break
    cluster.primary.kill()
    for _ in wait_until("i2 to fail over", 20):
        if other.events("failover"):
            break
    assert not cut.events("failover_started"), "an instance cut off from etcd promoted a node"
    new = other.events("failover")[0]["new_writer"]
    for _ in wait_until("i1 to route to the new writer once it hears etcd again", 20):
        if _ == 0:
            etcd.start_member(etcd.members[0].name)
        status = cut.status()
        if status["writer"]["node"] == new and status["dcs"]["role"] == "follower":
            break


def test_etcd_quorum_loss_stops_all_acting_but_not_sessions_and_failover_resumes_with_quorum(
    fresh_cluster, etcd, instances
):
    cluster = fresh_cluster(replicas=2)
    a, b = instances(cluster, etcd.endpoints, "i1", "i2")
    leader, _ = _leader_and_other(a, b)
    etcd.stop_member(etcd.members[2].name)  # one member down: nothing happens
    for _ in observe("the leadership to hold with one etcd member down", TTL + 1, interval=0.25):
        assert leader.status()["dcs"]["role"] == "leader" and not leader.events("leader_lost")
    health = leader.status()["dcs"]["endpoint_health"]  # and /status says which endpoint is down
    assert health[etcd.members[2].client_url] != "up" and health[etcd.members[0].client_url] == "up", health
    host, port = leader.writer
    with psycopg.connect(
        host=host, port=port, user="postgres", password=cluster.password, dbname="postgres", autocommit=True
    ) as session:
        etcd.stop_member(etcd.members[1].name)  # quorum lost
        for _ in wait_until("both instances to stop acting", TTL + 10):
            if all(i.status()["dcs"]["role"] == "cut_off" for i in (a, b)):
                break
        assert session.execute("SELECT 1").fetchone() == (1,)  # established sessions keep flowing
        with psycopg.connect(
            host=host, port=port, user="postgres", password=cluster.password, dbname="postgres", connect_timeout=10
        ) as new:  # and new ones reach the writer while it answers
            assert new.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        replica = cluster.replicas[0]
        cluster.primary.kill()
        for _ in observe("no promotion while etcd has no quorum", 2 * TTL, interval=0.25):
            assert not any(i.events("failover_started") for i in (a, b))
    assert replica.sql("SELECT pg_is_in_recovery()") == "t"
    etcd.start_member(etcd.members[1].name)
    try:
        for _ in wait_until("the failover to happen once quorum returns", 30):
            if any(i.events("failover") for i in (a, b)):
                break
    except AssertionError:
        for i in (a, b):
            print("DEBUG", i.name, json.dumps(i.status()["dcs"]), i.status()["reason"])
            print("DEBUG events", [(e["kind"], e["reason"][:100]) for e in i.events()][-8:])
        raise


def test_up_instances_with_tls_serves_through_any_instance_survives_the_leaders_death_and_stops_everything():
    root = cluster_dir()
    base = free_loopback_base(3)
    ports = [str(p) for p in free_ports(4)]
    up = Command(
        "up",
        "--instances",
        "2",
        "--replicas",
        "1",
        "--dir",
        str(root / "c"),
        "--base-address",
        base,
        "--password",
        "pw",
        "--writer-port",
        ports[0],
        "--reader-port",
        ports[1],
        "--admin-port",
        ports[2],
        "--dns-port",
        ports[3],
        "--tls",
    )
    try:
        up.wait_for_line("pgaurora is ready", 120)
        (line,) = [s for s in up.lines if "target_session_attrs=read-write" in s]
        conninfo = line.split('psql "', 1)[1].split('"')[0] + " dbname=postgres password=pw connect_timeout=5"
        admins = [s.split("admin ")[1].split("/status")[0] for s in up.lines if s.startswith("instance ")]

        def status(url):
            return admin(url + "/status", timeout=5)

        for _ in wait_until("one instance to lead", 15):
            roles = {url: status(url)["dcs"]["role"] for url in admins}
            if sorted(roles.values()) == ["follower", "leader"]:
                break
        assert all(url.startswith("https://") for url in status(admins[0])["dcs"]["endpoints"])  # etcd over TLS
        leader = next(url for url, role in roles.items() if role == "leader")
        other = next(url for url in admins if url != leader)
        os.kill(status(leader)["pid"], signal.SIGKILL)
        for _ in wait_until("the other instance to lead", TTL + 10):
            if status(other)["dcs"]["role"] == "leader":
                break
        with psycopg.connect(conninfo + " sslmode=require") as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        node_ports = {
            (n["address"].rsplit(":", 1)[0], int(n["address"].rsplit(":", 1)[1])) for n in status(other)["nodes"]
        }
        etcd_hosts = next(s for s in up.lines if s.startswith("etcd ")).split()[1:]
    finally:
        stopped = up.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert stopped == 0, "\n".join(up.lines)
    listening = []
    for host, port in [*node_ports, *((u.strip(",").split("//")[1].split(":")[0], 2379) for u in etcd_hosts)]:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            listening.append(f"{host}:{port}")
        except OSError:
            pass
    assert listening == [], f"still listening after up stopped: {listening}"


def _enable_auth(endpoint: str, password: str) -> None:
    """etcd with authentication on: a root user (Debian's etcd-server ships no etcdctl; the gRPC API does it)."""
    import asyncio

    import aetcd
    from aetcd import rpc

    async def run():
        host, port = endpoint.removeprefix("http://").split(":")
        client = aetcd.Client(host=host, port=int(port))
        await client.connect()
        auth = rpc.AuthStub(client.channel)
        await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=password))
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"))
        await auth.AuthEnable(rpc.AuthEnableRequest())
        await client.close()

    asyncio.run(run())


@contextlib.contextmanager
def _two_instances(cluster, workdir, endpoints: list[str], settings: list[tuple[str, dict]]):
    """`pgaurora proxy` instances with [dcs] settings of their own; the first must start."""
    made = []
    try:
        for name, extra in settings:
            config = service_config(cluster, state_dir=None, dcs={"etcd": endpoints, "instance": name, **extra})
            made.append(Command("proxy", "-c", str(write_config(config, workdir / f"{name}.toml"))))
            made[-1].admin = f"http://{config.admin.host}:{config.admin.port}"
        made[0].wait_for_line("pgaurora is ready", 60)
        yield made
    finally:
        for command in made:
            command.stop()


def _status_of(command) -> dict:
    return admin(command.admin + "/status", timeout=5)


def _first_leads_second_refused(made, refusal: str, what: str) -> None:
    for _ in wait_until(what, 30):
        try:
            good, bad = _status_of(made[0])["dcs"], _status_of(made[1])["dcs"]
        except OSError:
            continue
        if good["role"] == "leader" and bad["role"] == "cut_off" and refusal in (bad["last_error"] or ""):
            break


def test_etcd_over_tls_with_client_certificates_admits_only_a_certified_instance(fresh_cluster, tmp_path):
    cluster = fresh_cluster(replicas=1)
    authority = CertAuthority.open(tmp_path / "ca", "etcd-test")
    etcd = EtcdCluster(cluster_dir() / "etcd", 3, free_loopback_base(3), authority=authority)
    etcd.start()
    try:
        assert all(url.startswith("https://") for url in etcd.endpoints)
        cert, key = etcd.client_certificate("i1")
        ca = str(authority.cert_file)
        settings = [
            ("certified", {"ca_file": ca, "cert_file": str(cert), "key_file": str(key)}),
            ("uncertified", {"ca_file": ca}),
        ]
        with _two_instances(cluster, tmp_path, etcd.endpoints, settings) as made:
            _first_leads_second_refused(
                made,
                "TLS handshake with etcd failed",
                "the certified instance to lead, the other to be refused at the handshake",
            )
            assert _status_of(made[0])["writer"]["node"] == cluster.primary.name
            assert not any(line.startswith(("E1", "I1")) for line in made[1].lines), "gRPC's own log lines leaked"
    finally:
        etcd.destroy()
        shutil.rmtree(etcd.root.parent, ignore_errors=True)


def test_etcd_with_authentication_admits_only_the_right_password(fresh_cluster, etcd, tmp_path):
    cluster = fresh_cluster(replicas=1)
    _enable_auth(etcd.endpoints[0], "etcd-secret")
    settings = [
        (name, {"username": "root", "password": password})
        for name, password in (("good", "etcd-secret"), ("bad", "wrong"))
    ]
    with _two_instances(cluster, tmp_path, etcd.endpoints, settings) as made:
        _first_leads_second_refused(
            made, "authentication failed", "the instance with the right password to lead, the other to be refused"
        )
