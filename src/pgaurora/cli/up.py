"""`pgaurora up`: create or resume a local cluster and serve it until interrupted."""

from __future__ import annotations

from pathlib import Path

import click

from .. import config as config_mod
from ..app import Service
from ..compose.local import STATE_FILE, LocalCluster, default_state_dir
from ..errors import ClusterError
from ..eventlog import EventLog
from .runtime import serve, setup_logging


def _open_cluster(state_dir, name, replicas, password, port, base_address, synchronous) -> LocalCluster:
    root = Path(state_dir or default_state_dir(name)).absolute()
    if (root / STATE_FILE).exists():
        cluster = LocalCluster.open(root)
        if replicas is not None and replicas != len(cluster.replicas):
            raise ClusterError(f"{cluster.root} holds cluster {cluster.name!r} with {len(cluster.replicas)} "
                               f"replicas, not {replicas}; drop --replicas to resume it or choose another --dir")
        if password is not None and password != cluster.password:
            raise ClusterError(f"{cluster.root} holds a cluster with another postgres password; "
                               "drop --password to resume it")
        return cluster
    return LocalCluster(root, name=name, replicas=2 if replicas is None else replicas, password=password,
                        port=port, base_address=base_address, synchronous=synchronous)


def build_config(cluster: LocalCluster, ports: tuple[int, int, int, int]) -> config_mod.Config:
    writer, reader, admin, dns = ports
    return config_mod.build({
        "cluster": cluster.name, "state_dir": str(cluster.root), "nodes": cluster.node_configs(),
        "writer": {"port": writer}, "reader": {"port": reader}, "admin": {"port": admin},
        "dns": {"port": dns},
        "monitor": {"user": "postgres", "password": cluster.password},
        "failover": {"replication_password": cluster.replication_password,
                     "sync_mode": "quorum" if cluster.synchronous else "off"},
    }, "pgaurora up settings")


def _ready_text(cluster: LocalCluster, cfg: config_mod.Config) -> str:
    w, r, d = cfg.writer, cfg.reader, cfg.dns
    return "\n".join([
        f"writer endpoint  {w.host}:{w.port}   (the current primary)",
        f"reader endpoint  {r.host}:{r.port}   (replicas, round robin)",
        f"admin endpoint   http://{cfg.admin.host}:{cfg.admin.port}/status",
        f"dns              {d.host}:{d.port}   zone {cfg.zone}",
        f"password         {cluster.password}   (user postgres)",
        "",
        f"  PGPASSWORD={cluster.password} psql -h {w.host} -p {w.port} -U postgres   # read/write",
        f"  PGPASSWORD={cluster.password} psql -h {r.host} -p {r.port} -U postgres   # read-only",
        f"  dig @{d.host} -p {d.port} +short writer.{cfg.zone}",
        "  pgaurora status",
        "",
        "pgaurora is ready",
    ])


def run_up(*, replicas, state_dir, password, name, port, base_address, ports, synchronous, reset_state,
           verbose) -> None:
    setup_logging(verbose)
    cluster = _open_cluster(state_dir, name, replicas, password, port, base_address, synchronous)
    cluster.lock()
    try:
        click.echo(cluster.up())
        cfg = build_config(cluster, ports)
        service = Service(cfg, controller=cluster, events=EventLog(cluster.root / "events.jsonl"),
                          reset_state=reset_state)
        serve(service, lambda: click.echo(_ready_text(cluster, cfg)))
    finally:
        click.echo("stopping the cluster")
        cluster.stop()
        cluster.unlock()
