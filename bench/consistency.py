"""Benchmark the splitting endpoint (issue 25): the checker at full size, and what splitting costs.

    python bench/consistency.py [--pairs 50000] [--rounds 3] [--duration 10] [--json out.json]

On a local cluster (a primary and one replica), one pgaurora serves a transaction-pooled writer endpoint and
a splitting endpoint, `app`.

1. The checker: 16 sessions on `app` each write a row and read it back at once (their writes are the write
   load), --pairs pairs per mode. Each read also asks pg_is_in_recovery(), so the checker sees where it
   ran. Session, global and min_lsn (through the reader endpoint) must show 0 stale reads; eventual shows
   how many a reader without them gets.
2. Speed, interleaved per round, same process: pgbench -S and TPC-B through the writer endpoint and through
   `app`, and a 90% read / 10% update mix through `app` in session mode against eventual mode. Reported:
   median TPS, the same-round ratio, and the proxy's CPU per transaction. The parser's cost is the -S row:
   every statement is parsed once, then its verdict comes from a cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from _cluster import DATABASE, BenchCluster, bench_database, local_cluster
from _targets import Target, ensure_baselines, free_port, start_pgaurora

SESSIONS = 16
MIX = """\\set aid random(1, 100000 * :scale)
\\set r random(1, 10)
\\if :r = 1
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
\\else
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
\\endif
"""
RUNS = {  # name: (target, pgbench arguments, pgaurora.consistency)
    "select/writer": ("writer", ["-S"], None),
    "select/split": ("app", ["-S"], "session"),
    "tpcb/writer": ("writer", [], None),
    "tpcb/split": ("app", [], "session"),
    "mix/session": ("app", ["-f", "{mix}"], "session"),
    "mix/eventual": ("app", ["-f", "{mix}"], "eventual"),
}
RATIOS = {"select": ("select/split", "select/writer"), "tpcb": ("tpcb/split", "tpcb/writer"),
          "mix": ("mix/session", "mix/eventual")}  # fmt: skip


# -- the checker ---------------------------------------------------------------------------------------
async def _pairs(bc: BenchCluster, app: Target, reader: Target, mode: str, pairs: int, first: int) -> dict:
    stale, on_replica, done = 0, 0, 0
    per = pairs // SESSIONS
    login = {"user": bc.user, "password": bc.password, "database": DATABASE}

    async def session(number: int) -> None:
        nonlocal stale, on_replica, done
        settings = {} if mode == "min_lsn" else {"pgaurora.consistency": mode}
        target = Target("writer", *bc.primary) if mode == "min_lsn" else app
        conn = await asyncpg.connect(host=target.host, port=target.port, server_settings=settings, **login)
        try:
            for i in range(per):
                row = first + number * per + i
                await conn.execute("INSERT INTO checker (id) VALUES ($1)", row)
                if mode == "min_lsn":
                    lsn = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
                    read = await asyncpg.connect(
                        host=reader.host, port=reader.port, server_settings={"pgaurora.min_lsn": lsn}, **login
                    )
                else:
                    read = conn
                try:
                    found, replica = await read.fetchrow(
                        "SELECT count(*), pg_is_in_recovery() FROM checker WHERE id = $1", row
                    )
                finally:
                    if read is not conn:
                        await read.close()
                stale += found != 1
                on_replica += replica
                done += 1
        finally:
            await conn.close()

    began = time.monotonic()
    await asyncio.gather(*(session(n) for n in range(SESSIONS)))
    took = time.monotonic() - began
    return {"mode": mode, "pairs": done, "stale": stale, "on_replicas": round(on_replica / max(1, done), 3),
            "pairs_per_second": round(done / took)}  # fmt: skip


def _checker(args, bc: BenchCluster, app: Target, reader: Target) -> list[dict]:
    async def run() -> list[dict]:
        host, port = bc.primary
        login = {"user": bc.user, "password": bc.password, "database": DATABASE}
        conn = await asyncpg.connect(host=host, port=port, **login)
        try:
            await conn.execute("DROP TABLE IF EXISTS checker; CREATE TABLE checker (id bigint PRIMARY KEY)")
        finally:
            await conn.close()
        results = []
        for n, mode in enumerate(("session", "global", "eventual", "min_lsn")):
            pairs = args.pairs if mode != "min_lsn" else min(args.pairs, 5000)  # a connection per read
            results.append(await _pairs(bc, app, reader, mode, pairs, first=n * 10_000_000))
            r = results[-1]
            print(f"{mode:<9} {r['pairs']:>7} pairs  {r['stale']:>6} stale  {r['on_replicas']:>6.0%} of reads on "
                  f"the replica  {r['pairs_per_second']:>6} pairs/s")  # fmt: skip
        return results

    return asyncio.run(run())


# -- speed ---------------------------------------------------------------------------------------------
def _pgbench(bc: BenchCluster, target: Target, args: list[str], mode: str | None, duration: float) -> dict:
    env = {**bc.env(), **({"PGOPTIONS": f"-c pgaurora.consistency={mode}"} if mode else {})}
    cpu_before = target.cpu()
    out = subprocess.run(
        ["pgbench", "-n", "-T", str(int(duration)), "-c", "16", "-j", "2", *args, "-h", target.host,
         "-p", str(target.port)],
        capture_output=True, text=True, timeout=duration + 120, env=env,
    )  # fmt: skip
    cpu = target.cpu() - cpu_before
    if out.returncode != 0:
        raise RuntimeError(f"pgbench {args} via {target.name} failed: {out.stderr[-500:]}")
    txs = int(re.search(r"number of transactions actually processed: (\d+)", out.stdout).group(1))
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))
    return {"tps": tps, "cpu_us_per_tx": cpu / max(1, txs) * 1e6}


def _parser_cost() -> float:
    """µs the splitting endpoint spends to judge one pgbench -S statement (each with its own aid)."""
    from pgaurora.proxy.split import verdict

    statements = [f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};".encode() for aid in range(1, 20001)]
    began = time.perf_counter()
    for sql in statements:
        verdict(sql)
    return (time.perf_counter() - began) / len(statements) * 1e6


def _speed(args, bc: BenchCluster, targets: dict[str, Target], work: Path) -> dict:
    mix = work / "mix.sql"
    mix.write_text(MIX)
    runs: dict[str, list[dict]] = {name: [] for name in RUNS}
    for rnd in range(args.rounds):
        order = list(RUNS) if rnd % 2 == 0 else list(reversed(RUNS))
        for name in order:
            target, pgargs, mode = RUNS[name]
            pgargs = [a.format(mix=mix) for a in pgargs]
            runs[name].append(_pgbench(bc, targets[target], pgargs, mode, args.duration))
    report = {}
    print(f"\n{'run':<15}{'TPS':>9}{'µs/tx':>8}")
    for name, results in runs.items():
        tps = statistics.median(r["tps"] for r in results)
        cpu = statistics.median(r["cpu_us_per_tx"] for r in results)
        report[name] = {"tps": round(tps), "cpu_us_per_tx": round(cpu, 1)}
        print(f"{name:<15}{tps:>9.0f}{cpu:>8.1f}")
    parser = _parser_cost()
    report["parser_us_per_statement"] = round(parser, 2)
    share = parser / report["select/writer"]["cpu_us_per_tx"]
    print(f"parser: {parser:.2f} µs per -S statement (literals blanked, verdict cached) = {share:.1%} of the "
          "writer endpoint's CPU per -S transaction")  # fmt: skip
    for what, (a, b) in RATIOS.items():
        ratios = [x["tps"] / y["tps"] for x, y in zip(runs[a], runs[b], strict=True) if y["tps"]]
        report[f"{what}_ratio"] = round(statistics.median(ratios), 3)
        print(f"{what}: {a} / {b} = {report[f'{what}_ratio']:.2f} (median of same-round ratios)")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=50_000, help="write-then-read pairs per mode (0: skip)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the speed runs (0: skip)")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ensure_baselines()
    work = Path(tempfile.mkdtemp(prefix="pgaurora-bench-consistency-"))
    os.chmod(work, 0o755)
    targets: dict[str, Target] = {}
    doc: dict = {}
    try:
        with local_cluster(work, free_port(), 200) as bc, bench_database(bc, 1):
            app_port = free_port()
            split = f'[[endpoints]]\nname = "app"\nport = {app_port}\nrole = "split"\n'
            writer, reader = start_pgaurora(bc, work, name="pgaurora", pool_mode="transaction", extra_toml=split)
            targets = {"writer": writer, "reader": reader, "app": Target("app", "127.0.0.1", app_port, writer.proc)}
            if args.pairs:
                doc["checker"] = _checker(args, bc, targets["app"], reader)
            if args.rounds:
                doc["speed"] = _speed(args, bc, targets, work)
    finally:
        for target in targets.values():
            target.stop()
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
