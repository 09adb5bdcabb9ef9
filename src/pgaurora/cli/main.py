"""Click commands of pgaurora; each maps errors to one clear message."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import click

from ..core.errors import PgAuroraError
from .adminclient import call as _admin
from .adminclient import follow_events, params

ADMIN_DEFAULT = "http://127.0.0.1:6434"


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PgAuroraError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
@click.version_option(package_name="pgaurora")
def cli() -> None:
    """Aurora-style writer/reader endpoints, failover and DNS for a PostgreSQL cluster."""


reset_state_option = click.option(
    "--reset-state",
    is_flag=True,
    help="Rebuild the monitor's state (writer, epoch, fenced nodes) from what the nodes report, when its "
    "state file is lost or unreadable.",
)


@cli.command()
@click.option("--replicas", type=click.IntRange(0, 15), default=None, help="Streaming replicas (default 2).")
@click.option(
    "--dir",
    "state_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="State directory (default /var/lib/pgaurora/NAME as root).",
)
@click.option(
    "--password",
    default=None,
    envvar="PGAURORA_PASSWORD",
    help="Password of the postgres user (generated and printed if omitted). Prefer $PGAURORA_PASSWORD: an option "
    "shows in the process list. A password given is never printed.",
)
@click.option("--name", default="demo", show_default=True, help="Cluster name; the DNS zone is NAME.pgaurora.internal.")
@click.option(
    "--port", default=5432, show_default=True, type=click.IntRange(1, 65535), help="Port every node listens on."
)
@click.option(
    "--base-address", default="127.0.0.11", show_default=True, help="Loopback address of n1; n2 gets the next."
)
@click.option("--writer-port", default=6432, show_default=True, type=click.IntRange(1, 65535))
@click.option("--reader-port", default=6433, show_default=True, type=click.IntRange(1, 65535))
@click.option("--admin-port", default=6434, show_default=True, type=click.IntRange(1, 65535))
@click.option("--dns-port", default=8053, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--split-port",
    default=6435,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="The splitting endpoint: read-only transactions to replicas that have the session's own writes, the "
    "rest to the writer (pooled per transaction; not with --instances). 0: none.",
)
@click.option("--async", "asynchronous", is_flag=True, help="Asynchronous replication instead of quorum commit.")
@click.option(
    "--sync-acks",
    type=click.IntRange(1, 15),
    default=None,
    help="Commits wait for this many standbys (ANY k): the writer and k-1 replicas can then be lost together "
    "with no commit lost (default 1; kept in the cluster's state for later starts).",
)
@click.option(
    "--backend",
    type=click.Choice(["local", "docker"]),
    default="local",
    show_default=True,
    help="Nodes as local processes, or as Docker containers (host networking, loopback addresses).",
)
@click.option(
    "--instances",
    type=click.IntRange(1, 3),
    default=1,
    show_default=True,
    help="pgaurora instances, each on a loopback address of its own (the first node's address + 30, "
    "+ 31, ...), agreed through a 3-member etcd (+ 40, + 41, + 42): kill one, the others go on.",
)
@click.option("--instance", hidden=True, default=None, help="Serve as this instance of several (internal).")
@click.option("--host", hidden=True, default=None, help="Listen address of this instance (internal).")
@click.option("--etcd", hidden=True, multiple=True, help="etcd endpoint of this instance (internal).")
@click.option(
    "--tls",
    is_flag=True,
    help="Encrypt every leg: make a CA and a certificate, turn on ssl on the nodes, and serve TLS on "
    "the endpoints (a cluster made with --tls keeps it when resumed).",
)
@click.option(
    "--backups",
    is_flag=True,
    help="Archive WAL and take backups with pgBackRest, into <dir>/backups (see `pgaurora backup`).",
)
@click.option(
    "--cipher-pass-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="With --backups: encrypt the repository (aes-256-cbc) with the passphrase in this file (mode 600).",
)
@click.option(
    "--pool",
    type=click.Choice(["passthrough", "session", "transaction"]),
    default="passthrough",
    show_default=True,
    help="How the writer and reader endpoints lend server connections: passthrough (one backend per "
    "client), or pooled per session or per transaction, with authentication at the proxy.",
)
@reset_state_option
@click.option(
    "--attach",
    is_flag=True,
    help="Serve the cluster in --dir as it is: start none of its nodes (a node that is down stays "
    "down, and the monitor fails over from it). Drills use this.",
)
@click.option("-v", "--verbose", is_flag=True)
def up(
    replicas,
    state_dir,
    password,
    name,
    port,
    base_address,
    writer_port,
    reader_port,
    admin_port,
    dns_port,
    split_port,
    asynchronous,
    sync_acks,
    backend,
    instances,
    instance,
    host,
    etcd,
    tls,
    backups,
    cipher_pass_file,
    pool,
    reset_state,
    attach,
    verbose,
) -> None:
    """Start a local cluster (1 primary, 2 replicas), the proxy, the monitor and DNS."""
    if cipher_pass_file and not backups:
        raise click.UsageError("--cipher-pass-file goes with --backups")
    backup = (
        ({"cipher_pass_file": str(Path(cipher_pass_file).absolute())} if cipher_pass_file else {}) if backups else None
    )
    if instances > 1:
        if backups:
            raise click.UsageError("--backups is not available with --instances")
        if pool != "passthrough":
            raise click.UsageError("--pool is not yet available with --instances")
        if attach or instance:
            raise click.UsageError("--instances starts its own instances: it goes with neither --attach nor --instance")
        from .instances import run_instances

        run_instances(
            count=instances,
            replicas=replicas,
            state_dir=state_dir,
            password=password,
            name=name,
            port=port,
            base_address=base_address,
            ports=(writer_port, reader_port, admin_port, dns_port),
            synchronous=not asynchronous,
            sync_acks=sync_acks,
            backend=backend,
            tls=tls,
        )
        return
    if instance and not etcd:
        raise click.UsageError("--instance needs --etcd")
    from .up import run_up

    run_up(
        replicas=replicas,
        state_dir=state_dir,
        password=password,
        name=name,
        port=port,
        base_address=base_address,
        ports=(writer_port, reader_port, admin_port, dns_port),
        split_port=None if instance else (split_port or None),  # not yet one per instance of several
        synchronous=not asynchronous,
        sync_acks=sync_acks,
        reset_state=reset_state,
        verbose=verbose,
        attach=attach,
        backend=backend,
        tls=tls,
        instance=instance,
        etcd=etcd,
        host=host,
        backup=backup,
        pool=pool,
    )


@cli.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="TOML file describing the cluster.",
)
@click.option("--check", is_flag=True, help="Only validate the configuration.")
@reset_state_option
@click.option("-v", "--verbose", is_flag=True)
def proxy(config_path, check, reset_state, verbose) -> None:
    """Front an existing cluster described by a TOML file."""
    from ..core import config as config_mod

    cfg = config_mod.load(config_path)
    if check:
        click.echo(f"{config_path}: valid ({len(cfg.nodes)} nodes, cluster {cfg.cluster!r})")
        return
    from ..core.eventlog import EventLog
    from ..service.app import Service
    from .runtime import serve, setup_logging

    setup_logging(verbose)
    events = EventLog(Path(cfg.state_dir) / "events.jsonl" if cfg.state_dir else None)
    service = Service(cfg, events=events, reset_state=reset_state, config_path=str(config_path))
    serve(
        service,
        lambda: click.echo(
            f"writer {cfg.writer.host}:{cfg.writer.port}  reader "
            f"{cfg.reader.host}:{cfg.reader.port}\npgaurora is ready",
            err=False,
        ),
    )


admin_option = click.option(
    "--admin", "admin_url", default=ADMIN_DEFAULT, show_default=True, help="URL of the admin endpoint."
)


@cli.command()
@admin_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.option("--wide", is_flag=True, help="Also show each node's timeline, upstream and client sessions.")
def status(admin_url, as_json, wide) -> None:
    """Show every node, its role, health and lag, and where the endpoints point."""
    doc = _admin(admin_url, "/status")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    from .display import print_status

    print_status(doc, wide)


@cli.command()
@admin_option
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@click.option("--audit", is_flag=True, help="Only the audit trail: who asked the admin API to change what.")
def events(admin_url, limit, audit) -> None:
    """Print the latest failovers, switchovers, fences and rejoins as JSON lines."""
    for event in _admin(admin_url, f"/events?limit={limit}" + ("&audit=true" if audit else "")):
        click.echo(json.dumps(event))


@cli.command()
@admin_option
@click.argument("node")
def drain(admin_url, node) -> None:
    """Take a replica out of the reader endpoint (and reader DNS) without stopping it; its open sessions go on."""
    _drain(admin_url, node, "drain")


@cli.command()
@admin_option
@click.argument("node")
def undrain(admin_url, node) -> None:
    """Put a drained replica back in the reader endpoint, once it is healthy and within the lag limit."""
    _drain(admin_url, node, "undrain")


@cli.group()
def replicas() -> None:
    """Add and remove replicas of a cluster `pgaurora up` composed, while both endpoints serve."""


@replicas.command("add")
@admin_option
@click.option("--count", type=click.IntRange(1, 15), default=1, show_default=True, help="Replicas to add.")
def replicas_add(admin_url, count) -> None:
    """Clone new replicas from the writer (pg_basebackup and a slot); returns once each serves reads."""
    from ..service.admin import routes

    for added in _admin(admin_url, "/nodes", "POST", 3600, params(routes.AddNodesParams, count=count)):
        click.echo(
            f"{added['node']} added at {added['address']}: cloned in {added['cloned_seconds']:.1f} s, "
            f"serving reads {added['serving_seconds']:.1f} s after the start"
        )


@replicas.command("remove")
@admin_option
@click.argument("node")
@click.option(
    "--drain-timeout",
    type=click.FloatRange(0, 3600),
    default=30,
    show_default=True,
    help="Seconds the node's open sessions get to finish before they are ended (57P01).",
)
def replicas_remove(admin_url, node, drain_timeout) -> None:
    """Drain a replica, wait for its sessions, end the rest, then drop its slot and delete its files."""
    from ..service.admin import routes

    result = _admin(
        admin_url,
        f"/nodes/{urllib.parse.quote(node)}",
        "DELETE",
        drain_timeout + 600,
        params(routes.RemoveNodeParams, node=node, drain_timeout=drain_timeout),
    )
    click.echo(f"{result['node']} removed ({result['sessions_ended']} session(s) ended after the drain timeout)")


@cli.command()
@admin_option
@click.option("--type", "kind", type=click.Choice(["full", "diff", "incr"]), default="full", show_default=True)
def backup(admin_url, kind) -> None:
    """Take a backup now, from a healthy replica when there is one (pgBackRest)."""
    from ..service.admin import routes
    from .display import size as _size

    made = _admin(admin_url, "/backups", "POST", 24 * 3600, params(routes.BackupParams, type=kind))
    click.echo(
        f"{made['type']} backup {made['label']} from {made['node']}: {_size(made['size_bytes'])} "
        f"({_size(made['repository_bytes'])} in the repository) in {made['seconds']:.1f} s"
    )


@cli.command()
@admin_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def backups(admin_url, as_json) -> None:
    """List the backups, their sizes and durations, and the range of times a restore can reach."""
    doc = _admin(admin_url, "/backups")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    from .display import print_backups

    print_backups(doc)


@cli.command()
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="State directory of the cluster whose backups to restore (its repository is <dir>/backups).",
)
@click.option(
    "--to", "target", required=True, help="The moment to recover to, with its zone: '2026-11-28 10:15:00+00'."
)
@click.option("--dir", "new_dir", required=True, type=click.Path(file_okay=False), help="Directory of the new cluster.")
@click.option("--replicas", type=click.IntRange(0, 15), default=0, show_default=True)
@click.option("--base-address", default=None, help="Loopback address of the new n1 (default: the source's + 16).")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port of the new nodes (default: the source's)."
)
@click.option(
    "--repository",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="The pgBackRest repository (default <from>/backups).",
)
@click.option(
    "--cipher-pass-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Passphrase of an encrypted repository (or the environment variable PGAURORA_CIPHER_PASS).",
)
def restore(source, target, new_dir, replicas, base_address, port, repository, cipher_pass_file) -> None:
    """Point-in-time restore into a new cluster (as Aurora restores): serve it with `pgaurora up --dir NEW`."""
    import os

    from ..compose.restore import restore_cluster

    passphrase = (
        Path(cipher_pass_file).read_text().strip() if cipher_pass_file else os.environ.get("PGAURORA_CIPHER_PASS")
    )
    done = restore_cluster(
        Path(source),
        target,
        Path(new_dir),
        replicas,
        base_address,
        port,
        Path(repository) if repository else None,
        passphrase,
    )
    from ..compose.ports import free_ports

    nodes = ", ".join(f"{n.name} {n.host}:{n.port}" for n in done.cluster.nodes)
    ports = " ".join(
        f"--{what}-port {port}"
        for what, port in zip(("writer", "reader", "admin", "dns", "split"), free_ports(5), strict=False)
    )
    click.echo(
        f"restored {done.cluster.name!r} into {done.cluster.root} in {done.seconds:.1f} s\n"
        f"recovered to  {done.recovered_to or 'the end of the archived WAL'} (the last commit at or "
        f"before {target})\nnodes         {nodes}\nits endpoints: pgaurora up --dir {done.cluster.root} "
        f"{ports}"
    )


@cli.command("backtrack")
@admin_option
@click.option("--to", "target", default=None, help="The moment to rewind to, with its zone: '2026-11-28 10:15:00+00'.")
@click.option("--undo", is_flag=True, help="Move the endpoints back to the nodes the last backtrack replaced.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def backtrack_command(admin_url, target, undo, yes) -> None:
    """Rewind the cluster's data in place (Aurora's backtrack): restore TIME into fresh nodes, then move both
    endpoints to them in one step. The old nodes are kept, stopped, for backtrack_keep (default 24 h)."""
    from ..service.admin import routes

    if bool(target) == undo:
        raise click.UsageError("give either --to TIME or --undo")
    what = (
        "move the endpoints back to the nodes the last backtrack replaced"
        if undo
        else f"rewind the data served at the writer and reader endpoints to {target}"
    )
    if not yes:
        click.confirm(f"This will {what}; sessions open now will be ended. Go on?", abort=True)
    path, body = ("/backtrack/undo", None) if undo else ("/backtrack", params(routes.BacktrackParams, to=target))
    done = _admin(admin_url, path, "POST", 24 * 3600, body)
    if undo:
        click.echo(
            f"endpoints back on {', '.join(done['nodes'])} (writer {done['writer']}); "
            f"unavailable {done['unavailable_seconds']:.2f} s"
        )
        return
    click.echo(
        f"rewound to {done['recovered_to']} (the last commit at or before {target}); restored in "
        f"{done['restore_seconds']:.1f} s\nendpoints now on {', '.join(done['nodes'])} "
        f"(writer {done['writer']}); "
        f"unavailable {done['unavailable_seconds']:.2f} s\nthe nodes before ({', '.join(done['previous'])}) are "
        "kept, stopped: `pgaurora backtrack --undo` moves back to them"
    )


@cli.group()
def maintenance() -> None:
    """Zero-downtime maintenance of a cluster `pgaurora up` composed."""


@maintenance.command("restart")
@admin_option
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="NAME=VALUE",
    help="A setting that needs a restart (e.g. shared_buffers=256MB); repeat for more.",
)
@click.option("--bindir", default=None, help="Move the nodes onto these PostgreSQL binaries (same major version).")
@click.option(
    "--drain-timeout",
    type=click.FloatRange(0, 3600),
    default=30,
    show_default=True,
    help="Seconds each node's reader sessions get to finish before they are ended (57P01).",
)
def maintenance_restart(admin_url, settings, bindir, drain_timeout) -> None:
    """Rolling restart: replicas one at a time (drained, restarted, back once caught up), a switchover to a
    restarted replica, then the old primary. Progress is printed as it happens."""
    from ..service.admin import routes

    pairs = {}
    for item in settings:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--set")
        pairs[name.strip()] = value.strip()
    if not pairs and not bindir:
        raise click.UsageError("nothing to apply: give --set NAME=VALUE, --bindir DIR, or both")
    body = params(routes.RestartParams, set=pairs, bindir=bindir, drain_timeout=drain_timeout)
    result = follow_events(admin_url, "/maintenance/restart", body, "maintenance", timeout=24 * 3600)
    applied = [f"{k}={v}" for k, v in pairs.items()] + ([f"binaries from {bindir}"] if bindir else [])
    click.echo(
        f"every node runs with {', '.join(applied)}; writer unavailable "
        f"{result['write_pause_seconds']:.2f} s; {result['seconds']:.1f} s in all"
    )


def _drain(admin_url: str, node: str, action: str) -> None:
    result = _admin(admin_url, f"/{action}/{urllib.parse.quote(node)}", method="POST")
    click.echo(f"{node} {action}ed (drained now: {', '.join(result['drained']) or 'none'})")


@cli.command()
@admin_option
@click.option("--url", "url_only", is_flag=True, help="Print the login URL only (the default prints a line around it).")
def console(admin_url, url_only) -> None:
    """A URL that logs a browser into the live console for 12 hours (a session with the operate scope)."""
    from ..service.admin import routes

    answer = _admin(admin_url, "/console/sessions", "POST", params=params(routes.SessionParams))
    click.echo(answer["url"] if url_only else f"open {answer['url']}  (a console session for 12 hours)")


def _seconds(text: str | None) -> float | None:
    """15m, 900s, 900, 1h: seconds (None stays None); click.BadParameter for anything else."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        return float(number) * unit
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration like 900, 15m or 1h", param_hint="--ttl") from None


@cli.command()
@admin_option
@click.option("--user", "role", required=True, help="The role the token logs in as.")
@click.option("--ttl", default=None, help="How long it lives: 900, 15m, 1h (default: [tokens] default_ttl).")
@click.option("--endpoint", "endpoints", multiple=True, help="An endpoint it is good for (default: every one).")
def token(admin_url, role, ttl, endpoints) -> None:
    """Print a short-lived token that a client sends as its password to a pooled endpoint, over TLS."""
    from ..service.admin import routes

    body = params(routes.TokenParams, user=role, ttl=_seconds(ttl), endpoints=tuple(endpoints))
    click.echo(_admin(admin_url, "/tokens", "POST", params=body)["token"])


@cli.command()
@admin_option
@click.option("--to", "target", default=None, help="Node to promote (default: the most advanced replica).")
def switchover(admin_url, target) -> None:
    """Planned switchover: demote the primary cleanly and promote a replica."""
    from ..service.admin import routes

    body = params(routes.SwitchoverParams, to=target)
    click.echo(json.dumps(_admin(admin_url, "/switchover", "POST", params=body), indent=2))


@cli.command()
@admin_option
@click.option("--to", "target", default=None, help="Node to promote (default: the most advanced replica).")
@click.option(
    "--accept-data-loss",
    is_flag=True,
    help="Promote even when pgaurora cannot prove the node has every acknowledged commit.",
)
def failover(admin_url, target, accept_data_loss) -> None:
    """Fail over from a writer that is down: what the monitor does itself, unless it cannot prove safety."""
    from ..service.admin import routes

    body = params(routes.FailoverParams, to=target, accept_data_loss=accept_data_loss)
    click.echo(json.dumps(_admin(admin_url, "/failover", "POST", params=body), indent=2))


@cli.command()
@admin_option
@click.option(
    "--print",
    "print_only",
    is_flag=True,
    help="Print the commands to run on the node's host (clusters pgaurora did not start).",
)
@click.argument("node")
def rejoin(admin_url, print_only, node) -> None:
    """Rejoin a fenced former primary as a replica (pg_rewind, or a fresh clone)."""
    if print_only:
        click.echo(_admin(admin_url, f"/rejoin/{node}")["script"], nl=False)
        return
    click.echo(json.dumps(_admin(admin_url, f"/rejoin/{node}", method="POST"), indent=2))


@cli.group()
def image() -> None:
    """Images for Docker: PostgreSQL (from this machine's binaries) and pgaurora (no registry needed)."""


@image.command("build")
@click.option("--force", is_flag=True, help="Build again even if the image exists.")
@click.option(
    "--python",
    "with_python",
    is_flag=True,
    help="Also build the pgaurora image ($PGAURORA_IMAGE, by default pgaurora/pgaurora:local) from the "
    "Dockerfile, on a base made from this machine's Python, with wheels this machine's pip fetches.",
)
@click.option(
    "--source",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="The pgaurora checkout that holds the Dockerfile (default: the current directory).",
)
def image_build(force, with_python, source) -> None:
    """Build (or reuse) the image named by $PGAURORA_PG_IMAGE, by default pgaurora/postgres:local."""
    import time

    from ..compose import image as pg_image
    from ..compose import pyimage
    from ..compose.docker import docker_client

    checkout = pyimage.source_dir(source) if with_python else None
    client = docker_client()
    builds = [(pg_image.image_name(), lambda: pg_image.build(client, pg_image.image_name(), force=force))]
    if checkout is not None:
        builds.append((pyimage.image_name(), lambda: pyimage.build(client, checkout, force=force)))
    for name, make in builds:
        existed, began = pg_image.image_exists(client, name), time.monotonic()
        make()
        click.echo(f"{name}: {'reused' if existed and not force else f'built in {time.monotonic() - began:.1f} s'}")


def _add_drill() -> None:
    from .drill import drill

    cli.add_command(drill)


_add_drill()


def main() -> None:
    cli(prog_name="pgaurora")


if __name__ == "__main__":
    main()
