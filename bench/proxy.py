"""Benchmark the data path: pgbench through pgaurora, PgBouncer (session) and HAProxy (TCP), against direct.

    python bench/proxy.py [--rounds 3] [--duration 10] [--workloads select-c1,tpcb-c16] [--json out.json]
    python bench/proxy.py --config pgaurora.toml   # a running cluster instead of a local one

With --config, the benchmark logs in with the config's monitor user, keeps pgbench's tables in a
database of its own (pgaurora_bench, dropped at the end), and measures the pgaurora already serving
that config, or starts one with it.

Targets run interleaved inside each round, in alternating order (A B C D, D C B A, ...), so drift in
machine speed hits them alike. For every target and workload it reports median TPS, average and p99
latency, the proxy's CPU time per transaction (from /proc, µs/tx), the whole machine's busy CPU per
transaction (kernel threads included: the kernel relay works in kworkers), and ratios to direct, HAProxy
and PgBouncer in the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _cluster import DATABASE, BenchCluster, bench_database, given_cluster, local_cluster
from _targets import (
    Target,
    ensure_baselines,
    free_port,
    given_pgaurora,
    machine_cpu_seconds,
    rss_bytes,
    start_haproxy,
    start_pgaurora,
    start_pgbouncer,
    tls_certificate,
)

BANDWIDTH_SQL = "SELECT repeat('x', 8000) FROM generate_series(1, 1250);\n"  # ~10 MB per transaction
BANDWIDTH_BYTES = 8000 * 1250

WORKLOADS = {
    "select-c1": ["-S", "-c", "1", "-j", "1"],
    "select-c16": ["-S", "-c", "16", "-j", "2"],
    "select-c64": ["-S", "-c", "64", "-j", "2"],
    "tpcb-c16": ["-c", "16", "-j", "2"],
    "connect-c16": ["-C", "-S", "-c", "16", "-j", "2"],
    "bandwidth-c4": ["-c", "4", "-j", "2"],  # plus -f with BANDWIDTH_SQL
}
READER_WORKLOADS = {"select-c16"}


@dataclass
class Run:
    round: int
    workload: str
    target: str
    tps: float
    latency_avg_ms: float
    latency_p99_ms: float
    cpu_us_per_tx: float | None
    machine_us_per_tx: float
    transactions: int
    mb_per_s: float | None = None


def _pgbench(target: Target, workload: str, duration: float, work: Path, bc: BenchCluster) -> Run:
    args = list(WORKLOADS[workload])
    if workload.startswith("bandwidth"):
        script = work / "bandwidth.sql"
        script.write_text(BANDWIDTH_SQL)
        args += ["-f", str(script)]
    logdir = Path(tempfile.mkdtemp(dir=work))
    cpu_before = target.cpu() if target.pids else None
    machine_before = machine_cpu_seconds()
    out = subprocess.run(
        [
            "pgbench",
            "-n",
            "-T",
            str(int(duration)),
            *args,
            "-l",
            "--log-prefix",
            str(logdir / "tx"),
            "-h",
            target.host,
            "-p",
            str(target.port),
        ],
        capture_output=True,
        text=True,
        timeout=duration + 120,
        env={**bc.env(), **({"PGSSLMODE": target.sslmode} if target.sslmode else {})},
    )
    cpu = (target.cpu() - cpu_before) if cpu_before is not None else None
    machine = machine_cpu_seconds() - machine_before
    if out.returncode != 0:
        raise RuntimeError(f"pgbench {workload} via {target.name} failed: {out.stderr[-500:]}")
    txs = int(re.search(r"number of transactions actually processed: (\d+)", out.stdout).group(1))
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))
    latencies = sorted(int(line.split()[2]) for f in logdir.iterdir() for line in f.read_text().splitlines())
    shutil.rmtree(logdir)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] / 1000 if latencies else float("nan")
    avg = statistics.fmean(latencies) / 1000 if latencies else float("nan")
    return Run(
        0,
        workload,
        target.name,
        tps,
        avg,
        p99,
        cpu * 1e6 / txs if cpu is not None and txs else None,
        machine * 1e6 / txs if txs else float("nan"),
        txs,
        tps * BANDWIDTH_BYTES / 1e6 if workload.startswith("bandwidth") else None,
    )


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _baselines(target: str) -> dict[str, str]:
    return {
        "direct": "direct-replica" if target.endswith("-reader") else "direct",
        "haproxy": "haproxy",
        "pgbouncer": "pgbouncer",
    }


def _per_round(runs: list[Run], workload: str, target: str, base: str) -> list[float]:
    """TPS(target) / TPS(base) in each round that measured both."""
    out = []
    for r in sorted({run.round for run in runs}):
        mine = [x for x in runs if (x.round, x.workload, x.target) == (r, workload, target)]
        theirs = [x for x in runs if (x.round, x.workload, x.target) == (r, workload, base)]
        if mine and theirs and theirs[0].tps:
            out.append(mine[0].tps / theirs[0].tps)
    return out


def _ratios(runs: list[Run], workload: str, target: str) -> dict[str, float | None]:
    """Median over rounds of TPS(target) / TPS(baseline) measured in the same round."""
    return {label: _median(_per_round(runs, workload, target, base)) for label, base in _baselines(target).items()}


def _spread(runs: list[Run], workload: str, target: str) -> dict[str, dict]:
    """Per baseline: the lowest and highest same-round ratio, and in how many rounds it was at least 1.0,
    so that a median can be told apart from the machine's noise."""
    out = {}
    for label, base in _baselines(target).items():
        ratios = _per_round(runs, workload, target, base)
        if ratios:
            out[label] = {
                "min": min(ratios),
                "max": max(ratios),
                "rounds": len(ratios),
                "at_least_1": sum(r >= 1.0 for r in ratios),
            }
    return out


def summarize(runs: list[Run]) -> list[dict]:
    rows = []
    for workload in dict.fromkeys(r.workload for r in runs):
        for target in dict.fromkeys(r.target for r in runs if r.workload == workload):
            mine = [r for r in runs if (r.workload, r.target) == (workload, target)]
            rows.append(
                {
                    "workload": workload,
                    "target": target,
                    "tps": _median([r.tps for r in mine]),
                    "lat_avg_ms": _median([r.latency_avg_ms for r in mine]),
                    "lat_p99_ms": _median([r.latency_p99_ms for r in mine]),
                    "cpu_us_per_tx": _median([r.cpu_us_per_tx for r in mine]),
                    "machine_us_per_tx": _median([r.machine_us_per_tx for r in mine]),
                    "mb_per_s": _median([r.mb_per_s for r in mine]),
                    "ratio": _ratios(runs, workload, target),
                    "spread": _spread(runs, workload, target),
                }
            )
    return rows


def _fmt(value, spec: str) -> str:
    width = int(spec.split(".")[0] or 0)
    return "-".rjust(width) if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'workload':<14}{'target':<17}{'tps':>10}{'MB/s':>8}{'avg ms':>9}{'p99 ms':>9}{'proxy µs':>10}"
        f"{'all µs':>9}"
        f"{'/direct':>9}{'/haproxy':>10}{'/pgbouncer':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = r["ratio"]
        print(
            f"{r['workload']:<14}{r['target']:<17}{_fmt(r['tps'], '10.0f')}{_fmt(r['mb_per_s'], '8.0f')}"
            f"{_fmt(r['lat_avg_ms'], '9.3f')}{_fmt(r['lat_p99_ms'], '9.3f')}{_fmt(r['cpu_us_per_tx'], '10.1f')}"
            f"{_fmt(r['machine_us_per_tx'], '9.1f')}"
            f"{_fmt(ratio['direct'], '9.2f')}{_fmt(ratio['haproxy'], '10.2f')}{_fmt(ratio['pgbouncer'], '11.2f')}"
        )


def print_spread(rows: list[dict]) -> None:
    """pgaurora's same-round ratios to HAProxy and PgBouncer: their range, and the rounds at or above 1.0."""
    print("\npgaurora round by round (lowest-highest ratio; rounds at or above 1.0):")
    for r in rows:
        if not r["target"].startswith("pgaurora"):
            continue
        parts = [
            f"/{label} {s['min']:.2f}-{s['max']:.2f} ({s['at_least_1']} of {s['rounds']})"
            for label, s in r["spread"].items()
            if label != "direct"
        ]
        print(f"{r['workload']:<14}{r['target']:<24}" + "   ".join(parts))


async def _open_sessions(host: str, port: int, bc: BenchCluster, count: int, sslmode: str | None = None) -> list:
    """`count` open sessions, or (having closed those that opened) the first failure."""
    import asyncpg

    sem = asyncio.Semaphore(100)

    async def one():
        async with sem:
            return await asyncpg.connect(
                host=host,
                port=port,
                user=bc.user,
                password=bc.password,
                database=DATABASE,
                ssl=sslmode or False,
                timeout=60,
            )

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await asyncio.gather(*(r.close() for r in results if not isinstance(r, BaseException)))
        raise failures[0]
    return results


def rss_per_session(target: Target, bc: BenchCluster, sessions: int) -> dict:
    """Proxy RSS before and while `sessions` clients are connected through it; on failure, why."""

    async def measure():
        before = rss_bytes(target.pids[0])
        conns = await _open_sessions(target.host, target.port, bc, sessions, target.sslmode)
        during = rss_bytes(target.pids[0])
        await asyncio.gather(*(c.close() for c in conns))
        return before, during

    try:
        before, during = asyncio.run(measure())
    except Exception as exc:  # the throughput rounds already ran: report this one failure with them
        return {"sessions": sessions, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "sessions": sessions,
        "rss_before_mb": before / 2**20,
        "rss_during_mb": during / 2**20,
        "growth_mb": (during - before) / 2**20,
        "kb_per_session": (during - before) / 1024 / sessions,
    }


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        help="benchmark the cluster this pgaurora config names (logging in with its "
        "monitor user) instead of starting a local one",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of interleaved runs (at least 3)")
    parser.add_argument("--duration", type=float, default=10, help="seconds of each pgbench run")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale factor")
    parser.add_argument("--sessions", type=int, default=0, help="also measure RSS with this many sessions (e.g. 2000)")
    parser.add_argument(
        "--relays",
        help="comma-separated pgaurora relays to run on the local cluster: native "
        "(the default), hybrid, python, kernel",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="clients connect with TLS (sslmode=require): pgaurora "
        "against PgBouncer with client_tls_sslmode = require, both with plaintext to the node "
        "(HAProxy cannot answer PostgreSQL's SSLRequest, and is left out)",
    )
    parser.add_argument(
        "--targets",
        default="direct,pgaurora,pgbouncer,haproxy",
        help="comma-separated subset of direct, pgaurora, pgbouncer, haproxy (direct always runs: "
        "every ratio is taken against it)",
    )
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))} (choose from {', '.join(WORKLOADS)})")
    if args.rounds < 3:
        parser.error("--rounds must be at least 3: a median of fewer rounds does not cancel the machine's drift")
    if args.duration < 1:
        parser.error("--duration must be at least 1 second")
    if args.config and args.relays:
        parser.error(
            "--relays applies to the local cluster; with --config the pgaurora serving it is measured "
            "with the relay its [proxy] section sets"
        )
    if args.config and args.tls:
        parser.error("--tls applies to the local cluster; with --config, set [tls] in that config")
    args.targets = set(args.targets.split(",")) | {"direct"}
    unknown_targets = args.targets - {"direct", "pgaurora", "pgbouncer", "haproxy"}
    if unknown_targets:
        parser.error(f"unknown targets: {', '.join(sorted(unknown_targets))}")
    args.relays = (args.relays or "native").split(",")
    bad = set(args.relays) - {"native", "hybrid", "python", "kernel"}
    if bad:
        parser.error(f"unknown relays: {', '.join(sorted(bad))} (choose from native, hybrid, python, kernel)")
    return args


def _start_targets(
    bc: BenchCluster, work: Path, args: argparse.Namespace, targets: list[Target], replica_targets: list[Target]
) -> None:
    """Fill the two lists one target at a time, so that the caller's `finally` stops whatever started."""
    tls = tls_certificate(work) if args.tls else None
    targets.append(Target("direct", *bc.primary))  # plaintext: the floor TLS adds its cost to
    if bc.replica is not None:
        replica_targets.append(Target("direct-replica", *bc.replica))
    ours = (
        [given_pgaurora(bc, work)]
        if bc.config
        else (start_pgaurora(bc, work, relay, f"pgaurora-{relay}", tls) for relay in args.relays)
    )
    for writer, reader in ours if "pgaurora" in args.targets else []:
        targets.append(writer)  # the reader shares the writer's process: stopped with it
        if bc.replica is not None:
            replica_targets.append(reader)
    if "pgbouncer" in args.targets:
        targets.append(start_pgbouncer(bc, work, tls))
    if "haproxy" in args.targets and not args.tls:
        targets.append(start_haproxy(bc, work))


def _run_rounds(
    args: argparse.Namespace, bc: BenchCluster, work: Path, targets: list[Target], replica_targets: list[Target]
) -> list[Run]:
    runs = []
    for rnd in range(args.rounds):
        for workload in args.workloads:
            order = targets + (replica_targets if workload in READER_WORKLOADS else [])
            if rnd % 2:  # A B C D, then D C B A: a steady drift in machine speed cancels out
                order = order[::-1]
            for target in order:
                run = _pgbench(target, workload, args.duration, work, bc)
                run.round = rnd
                runs.append(run)
                print(
                    f"round {rnd + 1} {workload:<13} {target.name:<16} {run.tps:10.0f} tps "
                    f"{_fmt(run.cpu_us_per_tx, '8.1f')} µs/tx",
                    file=sys.stderr,
                    flush=True,
                )
    return runs


def _bench(args: argparse.Namespace, bc: BenchCluster, work: Path) -> tuple[list[Run], dict]:
    targets: list[Target] = []
    replica_targets: list[Target] = []
    try:
        with bench_database(bc, args.scale):
            _start_targets(bc, work, args, targets, replica_targets)
            runs = _run_rounds(args, bc, work, targets, replica_targets)
            rss = {t.name: rss_per_session(t, bc, args.sessions) for t in targets if t.pids} if args.sessions else {}
            return runs, rss
    finally:
        for target in targets:
            target.stop()


def _report(args: argparse.Namespace, runs: list[Run], rss: dict, where: str) -> None:
    rows = summarize(runs)
    print(
        f"\npgaurora proxy benchmark, {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores, "
        f"{where}, {args.rounds} rounds x {args.duration:.0f} s, pgbench scale {args.scale}"
        f"{', clients on TLS (direct: plaintext)' if args.tls else ''}\n"
    )
    print_table(rows)
    print_spread(rows)
    for name, r in rss.items():
        if "error" in r:
            hint = "; the server's max_connections must allow them" if "TooManyConnections" in r["error"] else ""
            print(f"RSS {name}: could not hold {r['sessions']} sessions ({r['error']}){hint}")
            continue
        print(
            f"RSS {name}: {r['rss_before_mb']:.1f} MB -> {r['rss_during_mb']:.1f} MB with {r['sessions']} "
            f"sessions ({r['kb_per_session']:.1f} kB/session)"
        )
    if args.json_path:
        Path(args.json_path).write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d"),
                    "cluster": where,
                    "rows": rows,
                    "runs": [r.__dict__ for r in runs],
                    "rss": rss,
                },
                indent=2,
            )
        )


def main() -> int:
    args = _arguments()
    ensure_baselines()
    work = Path(tempfile.mkdtemp(prefix="pgaurora-bench-"))
    os.chmod(work, 0o755)
    try:
        if args.config:
            bc = given_cluster(args.config)
            runs, rss = _bench(args, bc, work)
            where = f"cluster of {args.config}"
        else:
            with local_cluster(work, free_port(), max(400, args.sessions + 100)) as bc:
                runs, rss = _bench(args, bc, work)
            where = "local cluster"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _report(args, runs, rss, where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
