"""Benchmark pooling: pgaurora in transaction and session mode against PgBouncer in transaction mode
(SCRAM secret in its auth_file, the same pool size) and against direct connections.

    python bench/pooling.py [--rounds 5] [--duration 10] [--pool-size 20] [--idle 10000] [--json out.json]
                             [--workloads connect-c16 select-c250 prepared-c16]

Workloads (pgbench on a local cluster, scale 1):
- connect-c16: -C -S -c16, a new connection per transaction (the case pooling exists for);
- select-c250: -S -c250 on a pool of --pool-size (direct gets 250 backends);
- prepared-c16: -S -c16 -M prepared, in transaction mode and in session mode (PgBouncer 1.18 cannot run
  it in transaction mode: reported, not counted).
Targets run interleaved in alternating order in each round; the report gives median TPS, the same-round
ratios to direct and to PgBouncer, and the proxy's CPU per transaction. Then --idle clients log in and
stay idle: the server connections they hold, the proxy's memory per idle client, and the TPS 16 active
clients keep beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import proxy as P  # bench/proxy.py: its pgbench runner
from _cluster import BenchCluster, bench_database, local_cluster
from _targets import Target, ensure_baselines, free_port, rss_bytes, start_pgaurora, start_pgbouncer

WORKLOADS = {
    "connect-c16": ["-C", "-S", "-c", "16", "-j", "2"],
    "select-c250": ["-S", "-c", "250", "-j", "2"],
    "prepared-c16": ["-S", "-M", "prepared", "-c", "16", "-j", "2"],
}
P.WORKLOADS.update(WORKLOADS)
TARGETS = {
    "connect-c16": ["direct", "pgbouncer-tx", "pgaurora-tx"],
    "select-c250": ["direct", "pgbouncer-tx", "pgaurora-tx"],
    "prepared-c16": ["pgaurora-session", "pgaurora-tx", "pgbouncer-tx"],
}


def _secret(bc: BenchCluster) -> str:
    out = subprocess.run(
        ["psql", "-h", bc.primary[0], "-p", str(bc.primary[1]), "-Atc", "SELECT rolpassword FROM pg_authid "
         f"WHERE rolname = '{bc.user}'", "postgres"],
        capture_output=True, text=True, env=bc.env(), check=True,
    )  # fmt: skip
    return out.stdout.strip()


def _rounds(args, bc: BenchCluster, work: Path, targets: dict[str, Target]) -> tuple[list, dict[str, str]]:
    runs, failures = [], {}
    for rnd in range(args.rounds):
        for workload, names in TARGETS.items():
            if args.workloads and workload not in args.workloads:
                continue
            order = names if rnd % 2 == 0 else list(reversed(names))
            for name in order:
                try:
                    run = P._pgbench(targets[name], workload, args.duration, work, bc)
                except RuntimeError as exc:
                    failures[f"{workload} via {name}"] = str(exc).splitlines()[-1][:200]
                    continue
                run.round = rnd
                runs.append(run)
    return runs, failures


def _ratio(runs, workload: str, target: str, base: str) -> float | None:
    per = []
    for rnd in {r.round for r in runs}:
        a = [r.tps for r in runs if (r.round, r.workload, r.target) == (rnd, workload, target)]
        b = [r.tps for r in runs if (r.round, r.workload, r.target) == (rnd, workload, base)]
        if a and b and b[0]:
            per.append(a[0] / b[0])
    return statistics.median(per) if per else None


def _report(runs, failures) -> list[dict]:
    rows = []
    print(f"\n{'workload':<14}{'target':<18}{'TPS':>9}{'/direct':>9}{'/pgbouncer':>11}{'/session':>10}{'µs/tx':>8}")
    for workload, names in TARGETS.items():
        for name in names:
            mine = [r for r in runs if (r.workload, r.target) == (workload, name)]
            if not mine:
                continue
            cpu = [r.cpu_us_per_tx for r in mine if r.cpu_us_per_tx is not None]
            row = {
                "workload": workload,
                "target": name,
                "tps": statistics.median(r.tps for r in mine),
                "vs_direct": _ratio(runs, workload, name, "direct"),
                "vs_pgbouncer": _ratio(runs, workload, name, "pgbouncer-tx"),
                "vs_session": _ratio(runs, workload, name, "pgaurora-session"),
                "cpu_us_per_tx": statistics.median(cpu) if cpu else None,
            }
            rows.append(row)
            fmt = lambda v, w: f"{v:>{w}.2f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
            print(
                f"{workload:<14}{name:<18}{row['tps']:>9.0f}{fmt(row['vs_direct'], 9)}{fmt(row['vs_pgbouncer'], 11)}"
                f"{fmt(row['vs_session'], 10)}{fmt(row['cpu_us_per_tx'], 8)}"
            )
    for what, why in failures.items():
        print(f"failed: {what}: {why}")
    return rows


# -- 10,000 idle clients -------------------------------------------------------------------------------
def _salted(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)


async def _idle_client(host: str, port: int, user: str, password: str, cache: dict) -> asyncio.StreamWriter:
    """A client that logs in (SCRAM, the salted password computed once for all) and stays idle."""
    reader, writer = await asyncio.open_connection(host, port)
    params = b"user\0" + user.encode() + b"\0database\0postgres\0\0"
    writer.write((len(params) + 8).to_bytes(4, "big") + (3 << 16).to_bytes(4, "big") + params)
    nonce = base64.b64encode(os.urandom(18)).decode()
    bare = f"n=,r={nonce}"
    await _expect(reader, 10)
    first = f"n,,{bare}".encode()
    body = b"SCRAM-SHA-256\0" + len(first).to_bytes(4, "big") + first
    writer.write(b"p" + (len(body) + 4).to_bytes(4, "big") + body)
    server_first = (await _expect(reader, 11)).decode()
    fields = dict(part.split("=", 1) for part in server_first.split(","))
    salt, iterations = base64.b64decode(fields["s"]), int(fields["i"])
    key = (fields["s"], iterations)
    if key not in cache:
        cache[key] = _salted(password, salt, iterations)
    client_key = hmac.digest(cache[key], b"Client Key", "sha256")
    without = f"c=biws,r={fields['r']}"
    auth = f"{bare},{server_first},{without}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth, "sha256")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
    final = f"{without},p={proof}".encode()
    writer.write(b"p" + (len(final) + 4).to_bytes(4, "big") + final)
    while True:
        kind = await reader.readexactly(1)
        size = int.from_bytes(await reader.readexactly(4), "big")
        payload = await reader.readexactly(size - 4)
        if kind == b"E":
            raise RuntimeError(payload.decode(errors="replace"))
        if kind == b"Z":
            return writer


async def _expect(reader: asyncio.StreamReader, code: int) -> bytes:
    kind = await reader.readexactly(1)
    size = int.from_bytes(await reader.readexactly(4), "big")
    payload = await reader.readexactly(size - 4)
    if kind != b"R" or int.from_bytes(payload[:4], "big") != code:
        raise RuntimeError(f"expected authentication {code}, got {kind!r} {payload[:80]!r}")
    return payload[4:]


def _server_connections(bc: BenchCluster) -> int:
    out = subprocess.run(
        ["psql", "-h", bc.primary[0], "-p", str(bc.primary[1]), "-Atc",
         "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND client_addr IS NOT NULL",
         "postgres"],
        capture_output=True, text=True, env=bc.env(), check=True,
    )  # fmt: skip
    return int(out.stdout.strip()) - 1  # this psql


def _idle(args, bc: BenchCluster, work: Path, target: Target) -> dict:
    """--idle clients logged in and idle: server connections held, proxy memory per client, and the TPS of
    16 active clients beside them against the same run alone (the other proxies are stopped by then)."""
    deadline = time.monotonic() + 10
    while _server_connections(bc) > args.pool_size and time.monotonic() < deadline:  # the others' backends exit
        time.sleep(0.1)
    alone = P._pgbench(target, "prepared-c16", args.duration, work, bc).tps
    rss_before = rss_bytes(target.pids[0])

    async def hold() -> dict:
        cache: dict = {}
        writers = []
        started = time.monotonic()
        for start in range(0, args.idle, 500):
            batch = [_idle_client(target.host, target.port, bc.user, bc.password or "", cache) for _ in range(500)]
            writers += await asyncio.gather(*batch[: args.idle - start])
        login = time.monotonic() - started
        held = _server_connections(bc)
        rss = rss_bytes(target.pids[0])
        beside = await asyncio.to_thread(P._pgbench, target, "prepared-c16", args.duration, work, bc)
        for w in writers:
            w.close()
        return {"clients": len(writers), "login_s": login, "server_connections": held, "rss": rss, "tps": beside.tps}

    found = asyncio.run(hold())
    result = {
        "idle_clients": found["clients"],
        "login_seconds": round(found["login_s"], 1),
        "server_connections_held": found["server_connections"],
        "proxy_bytes_per_idle_client": round((found["rss"] - rss_before) / found["clients"]),
        "tps_alone": round(alone),
        "tps_beside_idle": round(found["tps"]),
        "kept": round(found["tps"] / alone, 3),
    }
    print(
        f"\n{found['clients']} idle clients (logged in over {result['login_seconds']} s): "
        f"{result['server_connections_held']} server connections held; "
        f"{result['proxy_bytes_per_idle_client']} bytes of proxy memory per idle client; "
        f"16 active clients keep {result['kept']:.2f} of their TPS "
        f"({result['tps_beside_idle']} vs {result['tps_alone']})"
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the pgbench workloads (0: only --idle)")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument("--idle", type=int, default=10000, help="idle clients for the last phase (0: skip it)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workloads", nargs="*", choices=sorted(WORKLOADS), help="run only these (default: all)")
    args = parser.parse_args()
    ensure_baselines()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.idle + 1024)), hard))
    work = Path(tempfile.mkdtemp(prefix="pgaurora-bench-pool-"))
    os.chmod(work, 0o755)
    targets: dict[str, Target] = {}
    try:
        with local_cluster(work, free_port(), 400) as bc, bench_database(bc, 1):
            targets["direct"] = Target("direct", *bc.primary)
            targets["pgbouncer-tx"] = start_pgbouncer(
                bc, work, pool_mode="transaction", pool_size=args.pool_size, secret=_secret(bc), name="pgbouncer-tx"
            )
            for mode in ("transaction", "session"):
                name = "pgaurora-tx" if mode == "transaction" else "pgaurora-session"
                targets[name] = start_pgaurora(bc, work, name=name, pool_mode=mode, pool_size=args.pool_size)[0]
            runs, failures = _rounds(args, bc, work, targets)
            rows = _report(runs, failures)
            for name in ("pgbouncer-tx", "pgaurora-session"):  # their server connections would be counted
                targets[name].stop()
            idle = _idle(args, bc, work, targets["pgaurora-tx"]) if args.idle else None
    finally:
        for target in targets.values():
            target.stop()
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "failures": failures, "idle": idle}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
