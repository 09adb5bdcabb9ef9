"""`pgaurora up --instances N`: a 3-member etcd and N pgaurora instances, each on a loopback address of its own."""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
import threading
import time

import click

from ..compose.etcd import EtcdCluster
from ..compose.local import LocalCluster
from ..compose.reaper import start_reaper
from ..core.errors import ClusterError
from .preflight import Wanted, conflicts
from .up import open_cluster

INSTANCE_OFFSET, ETCD_OFFSET = 30, 40  # from the first node's address: 127.0.0.41.. and 127.0.0.51..
READY = "pgaurora is ready"


def offset(address: str, by: int) -> str:
    return str(ipaddress.ip_address(address) + by)


class Instance:
    """One `pgaurora up --attach --instance` child; its output goes to <state dir>/<name>.log."""

    def __init__(self, name: str, host: str, cluster: LocalCluster, etcd: EtcdCluster, ports) -> None:
        self.name, self.host, self.log = name, host, cluster.root / f"{name}.log"
        writer, reader, admin, dns = ports
        args = [
            sys.executable,
            "-m",
            "pgaurora",
            "up",
            "--attach",
            "--dir",
            str(cluster.root),
            "--instance",
            name,
            "--host",
            host,
            "--writer-port",
            str(writer),
            "--reader-port",
            str(reader),
            "--admin-port",
            str(admin),
            "--dns-port",
            str(dns),
            *(f"--etcd={url}" for url in etcd.endpoints),
        ]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            tail = "\n".join(f"    {line}" for line in self.log.read_text().splitlines()[-5:])
            raise ClusterError(f"instance {self.name} exited ({self.proc.returncode}); the end of {self.log}:\n{tail}")
        return READY in self.log.read_text()

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after 20 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _check(cluster: LocalCluster, hosts: list[str], etcd: EtcdCluster, ports) -> None:
    listens = [
        Wanted(f"node {n.name}", n.host, n.port, "--base-address or --port") for n in cluster.nodes if not n.running
    ]
    for host in hosts:
        for what, port, flag in zip(
            ("writer endpoint", "reader endpoint", "admin endpoint"),
            ports[:3],
            ("--writer-port", "--reader-port", "--admin-port"),
            strict=False,
        ):
            listens.append(Wanted(what, host, port, flag))
        listens.append(Wanted("DNS server", host, ports[3], "--dns-port", udp=True))
    for member in etcd.members:
        listens += [
            Wanted(f"etcd {member.name}", member.host, member.client_port, "--base-address"),
            Wanted(f"etcd {member.name} (peers)", member.host, member.peer_port, "--base-address"),
        ]
    problems = conflicts(listens, admin=None)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ClusterError(f"cannot start: {len(problems)} address(es) already in use, nothing was started:\n{lines}")


def _summary(cluster: LocalCluster, instances: list[Instance], etcd: EtcdCluster, ports) -> str:
    writer, reader, admin, dns = ports
    hosts = ",".join(i.host for i in instances)
    lines = [f"etcd             {', '.join(etcd.endpoints)}"]
    lines += [
        f"instance {i.name}      writer {i.host}:{writer}  reader {i.host}:{reader}  "
        f"admin http://{i.host}:{admin}/status  (log {i.log})"
        for i in instances
    ]
    lines += [
        "",
        f"password         {cluster.password}   (user postgres)",
        "",
        f'  PGPASSWORD={cluster.password} psql "host={hosts} port={writer} user=postgres '
        'target_session_attrs=read-write"   # any live instance',
        f"  dig @{instances[0].host} -p {dns} +short proxy.{cluster.name}.pgaurora.internal   # every live instance",
        f"  pgaurora status --admin http://{instances[0].host}:{admin}",
        "",
        READY,
    ]
    return "\n".join(lines)


def run_instances(
    *,
    count: int,
    replicas,
    state_dir,
    password,
    name,
    port,
    base_address,
    ports,
    synchronous,
    backend,
    tls,
    sync_acks=None,
) -> None:
    cluster = open_cluster(
        state_dir, name, replicas, password, port, base_address, synchronous, backend, tls, sync_acks
    )
    first = cluster.nodes[0].host
    hosts = [offset(first, INSTANCE_OFFSET + k) for k in range(count)]
    etcd = EtcdCluster(cluster.root / "etcd", 3, offset(first, ETCD_OFFSET))
    _check(cluster, hosts, etcd, ports)
    cluster.lock(shared=True)
    reaper = start_reaper()
    instances: list[Instance] = []
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        click.echo(cluster.up())
        if tls:  # etcd's traffic too, with the CA that up() made
            etcd = EtcdCluster(etcd.root, 3, etcd.members[0].host, authority=cluster.authority())
        etcd.start()
        instances += [Instance(f"i{k + 1}", host, cluster, etcd, ports) for k, host in enumerate(hosts)]
        deadline = time.monotonic() + 120
        while not stop.is_set() and not all(i.ready() for i in instances):
            if time.monotonic() > deadline:
                raise ClusterError("the instances did not all become ready in 120 s; see their logs")
            stop.wait(0.2)
        if not stop.is_set():
            click.echo(_summary(cluster, instances, etcd, ports))
        stop.wait()
    finally:
        click.echo("stopping the instances, etcd and the cluster")
        for instance in instances:
            instance.stop()
        etcd.stop()
        cluster.stop()
        cluster.unlock()
        reaper.set()
