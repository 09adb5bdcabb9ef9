"""`pgaurora up`: create or resume a local cluster and serve it until interrupted."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from ..compose.backends import cluster_class
from ..compose.backends import open_cluster as open_existing
from ..compose.local import STATE_FILE, LocalCluster, default_state_dir
from ..compose.reaper import start_reaper
from ..core import config as config_mod
from ..core.errors import ClusterError
from ..core.eventlog import EventLog
from ..service.admin.auth import local_token_file
from ..service.app import Service
from .preflight import Wanted, conflicts
from .runtime import serve, setup_logging


def open_cluster(
    state_dir, name, replicas, password, port, base_address, synchronous, backend="local", tls=False, sync_acks=None
) -> LocalCluster:
    root = Path(state_dir or default_state_dir(name)).absolute()
    if (root / STATE_FILE).exists():
        cluster = open_existing(root)
        _check_acks(sync_acks, len(cluster.replicas), cluster.synchronous)
        if sync_acks is not None and sync_acks != cluster.sync_acks:
            cluster.sync_acks = sync_acks  # recorded at the next save: a later `up` keeps it
            cluster.save()
        if replicas is not None and replicas != len(cluster.replicas):
            raise ClusterError(
                f"{cluster.root} holds cluster {cluster.name!r} with {len(cluster.replicas)} "
                f"replicas, not {replicas}; drop --replicas to resume it or choose another --dir"
            )
        if password is not None and password != cluster.password:
            raise ClusterError(
                f"{cluster.root} holds a cluster with another postgres password; drop --password to resume it"
            )
        if tls and not cluster.tls:
            raise ClusterError(
                f"{cluster.root} holds cluster {cluster.name!r}, made without --tls; drop --tls "
                "to resume it, or make a new cluster with --tls in another --dir"
            )
        return cluster
    _check_acks(sync_acks, 2 if replicas is None else replicas, synchronous)
    return cluster_class(backend)(
        root,
        name=name,
        replicas=2 if replicas is None else replicas,
        password=password,
        port=port,
        base_address=base_address,
        synchronous=synchronous,
        sync_acks=sync_acks or 1,
        tls=tls,
    )


def _check_acks(sync_acks: int | None, replicas: int, synchronous: bool) -> None:
    if sync_acks is None or sync_acks == 1:
        return
    if not synchronous:
        raise ClusterError(f"--sync-acks {sync_acks} needs synchronous commit; drop --async")
    if sync_acks > replicas:
        raise ClusterError(
            f"--sync-acks {sync_acks} needs at least {sync_acks} replicas, and the cluster has {replicas}"
        )


def tls_settings(cluster: LocalCluster) -> dict:
    """[tls] for a cluster made with --tls: the cluster certificate on the endpoints, nodes verified."""
    if not cluster.tls:
        return {}
    cert, key = cluster.certificate()
    return {
        "cert_file": str(cert),
        "key_file": str(key),
        "backend_tls": "verify-full",
        "backend_ca_file": str(cluster.authority().cert_file),
    }


def build_config(
    cluster: LocalCluster,
    ports: tuple[int, int, int, int],
    with_tls: bool = True,
    host: str | None = None,
    dcs: dict | None = None,
    backup: dict | None = None,
    pool: str = "passthrough",
    split_port: int | None = None,
) -> config_mod.Config:
    """The config `up` serves the cluster with; one of several instances listens on `host` and has [dcs]; a
    splitting endpoint on split_port."""
    writer, reader, admin, dns = ports
    listen = {"host": host} if host else {}
    extra: dict[str, Any] = {**({"dcs": dcs} if dcs else {}), **({"backup": backup} if backup is not None else {})}
    if split_port is not None:
        extra["endpoints"] = [{"name": "split", "port": split_port, "role": "split", **listen}]
    return config_mod.build(
        {
            **extra,
            "cluster": cluster.name,
            "state_dir": str(cluster.root),
            "nodes": cluster.node_configs(),
            "writer": {"port": writer, "pool_mode": pool, **listen},
            "reader": {"port": reader, "pool_mode": pool, **listen},
            "pool": {"auth_user": "pgaurora_auth", "auth_password": cluster.auth_password},
            "admin": {"port": admin, **listen},
            "dns": {"port": dns, **listen},
            "monitor": {"user": "postgres", "password": cluster.password},
            "failover": {
                "replication_password": cluster.replication_password,
                "replication_passfile": str(cluster.passfile),
                "sync_mode": "quorum" if cluster.synchronous else "off",
                "sync_acks": cluster.sync_acks if cluster.synchronous else 1,
            },
            "tls": tls_settings(cluster) if with_tls else {},
        },
        "pgaurora up settings",
    )


def check_addresses(cluster: LocalCluster, cfg: config_mod.Config) -> None:
    """Every address `up` will listen on must be free before anything is made; one error lists each conflict."""
    listens = [
        Wanted(f"node {n.name}", n.host, n.port, "--base-address or --port") for n in cluster.nodes if not n.running
    ]
    listens += [
        Wanted("writer endpoint", cfg.writer.host, cfg.writer.port, "--writer-port"),
        Wanted("reader endpoint", cfg.reader.host, cfg.reader.port, "--reader-port"),
        Wanted("admin endpoint", cfg.admin.host, cfg.admin.port, "--admin-port"),
        Wanted("DNS server", cfg.dns.host, cfg.dns.port, "--dns-port", udp=True),
        *(Wanted(f"{e.name} endpoint", e.host, e.port, "--split-port") for e in cfg.endpoints),
    ]
    problems = conflicts(listens, admin=(cfg.admin.host, cfg.admin.port))
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ClusterError(
            f"cannot start: {len(problems)} address{'es' * (len(problems) > 1)} already in use, "
            f"nothing was created or started:\n{lines}"
        )


def connection_strings(cfg: config_mod.Config, password: str) -> list[str]:
    """Ready-to-copy URLs for applications: libpq/SQLAlchemy style and a JDBC multi-host one."""
    w, r, pw = cfg.writer, cfg.reader, quote(password, safe="")
    return [
        f"  DATABASE_URL=postgresql://postgres:{pw}@{w.host}:{w.port}/postgres   # writes",
        f"  DATABASE_URL=postgresql://postgres:{pw}@{r.host}:{r.port}/postgres   # reads",
        f"  jdbc:postgresql://{w.host}:{w.port},{r.host}:{r.port}/postgres?user=postgres&password={pw}"
        "&targetServerType=primary   # JDBC; preferSecondary for reads",
    ]


def _tls_lines(cluster: LocalCluster, cfg: config_mod.Config, password: str) -> list[str]:
    if not cluster.tls:
        return []
    ca, w = cluster.authority().cert_file, cfg.writer
    return [
        f"  TLS: clients verify the endpoints with the CA {ca}",
        f'  PGPASSWORD={password} psql "host={w.host} port={w.port} user=postgres '
        f'sslmode=verify-full sslrootcert={ca}"',
    ]


def _pooling(mode: str) -> str:
    return "passthrough: one backend per client" if mode == "passthrough" else f"pooled per {mode}"


GIVEN = "PASSWORD"  # what the banner shows for a password the user gave: it is never printed


def _ready_text(cluster: LocalCluster, cfg: config_mod.Config, given: bool) -> str:
    """What to connect to. A password pgaurora generated is shown (it is in cluster.json, mode 600, too); one
    the user gave (--password, PGAURORA_PASSWORD) is not: the lines name it PASSWORD."""
    w, r, d = cfg.writer, cfg.reader, cfg.dns
    pw = GIVEN if given else cluster.password
    shown = "(the one given: not printed)" if given else f"{cluster.password}   (generated; kept in cluster.json)"
    return "\n".join(
        [
            f"writer endpoint  {w.host}:{w.port}   (the current primary; {_pooling(w.pool_mode.value)})",
            f"reader endpoint  {r.host}:{r.port}   (replicas, round robin; {_pooling(r.pool_mode.value)})",
            *(
                f"split endpoint   {e.host}:{e.port}   (reads to replicas that have the session's writes, the "
                "rest to the writer; pooled per transaction)"
                for e in cfg.endpoints
            ),
            f"admin endpoint   http://{cfg.admin.host}:{cfg.admin.port}/status",
            f"admin token      {local_token_file(cfg)}   (mode 600; pgaurora commands on this host read it)",
            f"dns              {d.host}:{d.port}   zone {cfg.zone}",
            f"password         {shown}   (user postgres)",
            "",
            f"  PGPASSWORD={pw} psql -h {w.host} -p {w.port} -U postgres   # read/write",
            f"  PGPASSWORD={pw} psql -h {r.host} -p {r.port} -U postgres   # read-only",
            f"  dig @{d.host} -p {d.port} +short writer.{cfg.zone}",
            *connection_strings(cfg, pw),
            *_tls_lines(cluster, cfg, pw),
            "  pgaurora status",
            "",
            "pgaurora is ready",
        ]
    )


def etcd_tls(cluster: LocalCluster, instance: str, etcd) -> dict:
    """[dcs] TLS settings for an instance of `up --instances --tls`: the cluster's CA, and a client
    certificate of the instance's own, which etcd (started with --client-cert-auth) requires."""
    if not any(url.startswith("https://") for url in etcd):
        return {}
    authority = cluster.authority()
    cert, key = authority.issue(f"etcd-client-{instance}", [instance], cluster.root / "tls", client=True)
    return {"ca_file": str(authority.cert_file), "cert_file": str(cert), "key_file": str(key)}


def run_up(
    *,
    replicas,
    state_dir,
    password,
    name,
    port,
    base_address,
    ports,
    synchronous,
    reset_state,
    verbose,
    sync_acks=None,
    attach=False,
    backend="local",
    tls=False,
    instance=None,
    etcd=(),
    host=None,
    backup: dict | None = None,
    pool: str = "passthrough",
    split_port: int | None = None,
) -> None:
    """Serve a cluster; as `instance` (one of `up --instances`), on `host` with [dcs], nodes left running."""
    setup_logging(verbose)
    cluster = open_cluster(
        state_dir, name, replicas, password, port, base_address, synchronous, backend, tls, sync_acks
    )
    dcs = {"etcd": list(etcd), "instance": instance, **etcd_tls(cluster, instance, etcd)} if instance else None
    check_addresses(cluster, build_config(cluster, ports, with_tls=False, host=host, dcs=dcs, split_port=split_port))
    cluster.lock(shared=instance is not None)
    reaper = start_reaper()
    try:
        click.echo(cluster.up(attach))
        cfg = build_config(cluster, ports, host=host, dcs=dcs, backup=backup, pool=pool, split_port=split_port)
        if pool != "passthrough" or cfg.endpoints:  # after up: certificates exist
            cluster.ensure_auth_lookup()  # a cluster made by an older pgaurora lacks the role and the function
        log_name = f"events-{instance}.jsonl" if instance else "events.jsonl"
        service = Service(cfg, cluster=cluster, events=EventLog(cluster.root / log_name), reset_state=reset_state)
        serve(service, lambda: click.echo(_ready_text(cluster, cfg, given=password is not None)))
    finally:
        if instance is None:  # one instance of several leaves the nodes to the others
            click.echo("stopping the cluster")
            cluster.stop()
        cluster.unlock()
        reaper.set()
