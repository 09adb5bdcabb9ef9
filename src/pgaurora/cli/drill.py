"""`pgaurora drill`: compose a cluster, run a workload through it, inject faults, report what it cost."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..core.errors import ClusterError
from ..drill import faults as fault_catalog

if TYPE_CHECKING:  # `pgaurora --help` loads this module: the drill itself loads when it runs
    from ..drill.faults import Fault
    from ..drill.report import Report, RoundResult
    from ..drill.target import ComposedTarget, ConfiguredTarget
    from ..drill.workload import Log

HELP = f"""Drill failovers: compose a cluster, write and read through pgaurora, inject faults, measure.

\b
Faults (--faults, each repeated --rounds times; the cluster heals between them):
{fault_catalog.describe()}

\b
Measures, for every fault and round (seconds from the fault):
write down / read down  from the last acknowledged write (read) before the fault to the first after it
detected, promoted, dns  when the monitor saw the writer down, promoted a replica, changed DNS
writes back             the first write acknowledged by the new writer
lost                    acknowledged writes missing on the writer: must be 0
errors                  client errors by SQLSTATE (57P01: session ended by the failover, ...)

\b
At the end, every acknowledged row must be on every node, and no write may have been acknowledged on
an older timeline after one on a newer (two writers at once: split brain). The exit status is 1 when a
write was lost, a split-brain write was found, or a downtime exceeded --max-downtime.
"""


HOST_FREE = ("switchover", "isolate-primary")  # the faults possible on a cluster the drill does not control


def check_faults(
    faults: list[fault_catalog.Fault], backend: str, configured: bool, sync_acks: int = 1, replicas: int = 2
) -> None:
    """Refuse, before anything starts, a fault that cannot work here."""
    if any(f.name == "kill-primary-and-replica" for f in faults) and not configured:
        if sync_acks < 2 or replicas < 3:
            raise ClusterError(
                "kill-primary-and-replica fails over on its own only when commits wait for 2 standbys or more "
                "(with ANY 1 the failover rightly waits for a person): give --sync-acks 2 and --replicas 3 or more"
            )
    if configured:
        refused = [f.name for f in faults if f.name not in HOST_FREE]
        if refused:
            raise ClusterError(
                f"with --config the drill controls no host, so it cannot inject {', '.join(refused)}; "
                f"possible there: {', '.join(HOST_FREE)}"
            )
    elif backend == "docker":
        from ..compose.docker import docker_client

        docker_client()  # one clear message when no engine answers
    if any(f.name.startswith("isolate-") for f in faults):
        from ..compose.runas import server_user
        from ..drill.target import Partition

        problem = Partition.problem(None if configured else server_user().uid)
        if problem:
            raise ClusterError(problem)


@click.command(help=HELP)
@click.option(
    "--backend",
    type=click.Choice(["local", "docker"]),
    default="local",
    show_default=True,
    help="Where the drill's cluster runs: local processes, or Docker containers.",
)
@click.option("--replicas", type=click.IntRange(1, 15), default=2, show_default=True)
@click.option(
    "--sync-acks",
    type=click.IntRange(1, 15),
    default=1,
    show_default=True,
    help="Commits wait for this many standbys (ANY k), in the cluster the drill composes.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Drill an existing cluster that a running pgaurora fronts, as this config file describes "
    "(only switchover and isolate-primary; the drill's table pgaurora_drill is dropped at the end).",
)
@click.option(
    "--faults",
    "fault_names",
    default=fault_catalog.DEFAULT,
    show_default=True,
    help="Comma-separated faults, from the list above.",
)
@click.option("--rounds", type=click.IntRange(1, 100), default=2, show_default=True)
@click.option(
    "--writers",
    type=click.IntRange(0, 64),
    default=4,
    show_default=True,
    help="Sessions inserting numbered rows through the writer endpoint.",
)
@click.option(
    "--readers",
    type=click.IntRange(0, 64),
    default=4,
    show_default=True,
    help="Sessions querying through the reader endpoint.",
)
@click.option("--base-address", default="127.0.3.11", show_default=True, help="Loopback address of n1.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every round and the summary here.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the timeline (throughput, errors, faults and phases) as a PNG here.",
)
@click.option(
    "--pool",
    type=click.Choice(["passthrough", "session", "transaction"]),
    default="passthrough",
    show_default=True,
    help="The endpoints' pool_mode in the cluster the drill composes: transaction shows what a change of "
    "writer costs pooled clients (idle ones keep their connections).",
)
@click.option(
    "--max-downtime",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds of write or read downtime beyond which the drill fails.",
)
def drill(
    backend,
    replicas,
    sync_acks,
    config_path,
    fault_names,
    rounds,
    writers,
    readers,
    base_address,
    json_path,
    plot_path,
    pool,
    max_downtime,
) -> None:
    from rich.console import Console

    from ..core import config as config_mod
    from ..drill.report import error_lines, round_table, summary_table
    from ..drill.target import ComposedTarget, ConfiguredTarget

    try:
        faults = fault_catalog.parse(fault_names)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--faults") from None
    check_faults(faults, backend, config_path is not None, sync_acks, replicas)
    if config_path is not None and pool != "passthrough":
        raise click.BadParameter("the config file says how its endpoints pool; drop --pool", param_hint="--pool")
    if config_path is not None:
        target: ConfiguredTarget | ComposedTarget = ConfiguredTarget(config_mod.load(config_path))
    else:
        workdir = Path(tempfile.mkdtemp(prefix="pgaurora-drill-"))
        os.chmod(workdir, 0o755)  # the PostgreSQL user must reach the cluster inside
        target = ComposedTarget(workdir, replicas, base_address, backend, sync_acks, pool)
    report, log = _run(target, faults, rounds, writers, readers)
    console = Console()
    console.print(round_table(report.rounds))
    console.print(summary_table(report))
    console.print("client errors by SQLSTATE (as the client library reports them):")
    for line in error_lines(report):
        console.print(f"  {line}")
    c = report.consistency
    console.print(
        f"acknowledged writes: {c.acknowledged}; lost: {c.lost}; missing per node: {c.missing}; "
        f"duplicates: {c.duplicates}; split-brain writes: {c.split_brain}; final writer {c.final_writer}; "
        f"wall time {report.wall_seconds:.0f} s"
    )
    if json_path:
        json_path.write_text(json.dumps(report.as_json(), indent=2))
    if plot_path:
        from ..drill.plot import draw

        draw(report, log, plot_path)
    failed = report.failed(max_downtime)
    if failed:
        raise click.ClickException("drill failed: " + "; ".join(failed))


def _run(
    target: ConfiguredTarget | ComposedTarget, faults: list[Fault], rounds: int, writers: int, readers: int
) -> tuple[Report, Log]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..compose.reaper import become_subreaper, start_reaper
    from ..drill.engine import Drill
    from ..drill.target import ComposedTarget, ConfiguredTarget

    become_subreaper()  # the servers of a pgaurora the drill kills become ours to reap
    reaper = start_reaper()
    try:
        target.start()
        click.echo(
            "pgaurora heals this cluster itself: the drill waits for it after each fault"
            if target.heals
            else "pgaurora runs no node of this cluster: after each fault the drill ends what it can itself "
            "(a crashed node needs its host's supervisor, or [heal] commands)"
        )
        with Progress(
            TextColumn("[bold]drill"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
        ) as progress:
            task = progress.add_task("", total=len(faults) * rounds)

            def on_round(result: RoundResult) -> None:
                progress.console.print(_line(result))
                progress.advance(task)

            engine = Drill(target, faults, rounds, writers, readers, on_round)
            report = engine.run()
            if isinstance(target, ConfiguredTarget):
                engine.workload.drop_table()
            return report, engine.log
    finally:
        target.stop()
        if isinstance(target, ComposedTarget):
            shutil.rmtree(target.workdir, ignore_errors=True)
        reaper.set()


def _line(r: RoundResult) -> str:
    down = "-" if r.write_downtime is None else f"{r.write_downtime:.2f} s"
    healed = "" if r.redundant_again is None else f"; fully redundant again after {r.redundant_again:.1f} s"
    errors = ", ".join(f"{code} x{n}" for code, n in sorted(r.errors.items())) or "none"
    return (
        f"{r.fault} #{r.round}: {r.outcome}; writes down {down}{healed}; lost {r.lost}; "
        f"connections dropped {r.dropped}; client errors {errors}"
    )
