"""The price of each failure survived: commit latency and TPC-B throughput with commits on ANY k, k = 1, 2, 3.

    python bench/quorum.py --seconds 10 --rounds 3 --clients 4

Makes a primary and three synchronous replicas on their own loopback addresses, fills pgbench's tables,
then runs pgbench's TPC-B (`pgbench -N` is not used: every transaction commits through the quorum)
with `synchronous_standby_names = 'ANY k (n2, n3, n4)'` for each k in turn, in alternating order round
after round (1 2 3, 3 2 1, ...), so drift in machine speed hits them alike. Prints each k's median TPS
and average latency, and their ratios to k = 1 from the same run.

With ANY k, pgaurora proves a failover loses nothing while all but k-1 voters answer: the writer and k-1
replicas can be lost together (issue 28). This measures what that costs on this machine.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pgaurora.compose import LocalCluster

BASE = "127.0.6.11"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="seconds per pgbench run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running every k once")
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients")
    parser.add_argument("--scale", type=int, default=5, help="pgbench scale factor")
    return parser.parse_args()


def _pgbench(cluster: LocalCluster, *args: str, timeout: float = 600) -> str:
    node = cluster.primary
    argv = [node.bin("pgbench"), "-h", str(node.sockdir), "-p", str(node.port), "-U", "postgres", *args, "postgres"]
    return node.run_tool(argv, timeout=timeout).stdout


def _with_acks(cluster: LocalCluster, k: int) -> None:
    names = ", ".join(r.name for r in cluster.replicas)
    node = cluster.primary
    node.sql(f"ALTER SYSTEM SET synchronous_standby_names = 'ANY {k} ({names})'")
    node.sql("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while node.sql("SHOW synchronous_standby_names") != f"ANY {k} ({names})":
        if time.monotonic() > deadline:
            raise TimeoutError(f"synchronous_standby_names did not become ANY {k}")
        time.sleep(0.05)


def _run(cluster: LocalCluster, k: int, seconds: int, clients: int) -> tuple[float, float]:
    _with_acks(cluster, k)
    out = _pgbench(cluster, "-c", str(clients), "-j", str(clients), "-T", str(seconds), timeout=seconds + 120)
    tps = float(re.search(r"tps = ([0-9.]+)", out).group(1))
    latency = float(re.search(r"latency average = ([0-9.]+) ms", out).group(1))
    return tps, latency


def main() -> None:
    args = _arguments()
    work = Path(tempfile.mkdtemp(prefix="pgaurora-bench-quorum-"))
    work.chmod(0o755)
    cluster = LocalCluster(work / "cluster", replicas=3, base_address=BASE, port=5432, synchronous=True)
    cluster.lock()
    try:
        cluster.create()
        _pgbench(cluster, "-i", "-q", "-s", str(args.scale), timeout=3600)
        results: dict[int, list[tuple[float, float]]] = {1: [], 2: [], 3: []}
        order = [1, 2, 3]
        for _ in range(args.rounds):
            for k in order:
                results[k].append(_run(cluster, k, args.seconds, args.clients))
                print(f"ANY {k}: {results[k][-1][0]:.0f} tps, {results[k][-1][1]:.2f} ms", flush=True)
            order.reverse()
        base_tps = statistics.median(t for t, _ in results[1])
        base_latency = statistics.median(lat for _, lat in results[1])
        print(f"\nTPC-B, {args.clients} clients, {args.rounds} rounds of {args.seconds} s, medians:")
        print("| commits on | survives (with the writer) | TPS | ratio | avg latency | ratio |")
        print("|---|---|---|---|---|---|")
        for k, runs in results.items():
            tps = statistics.median(t for t, _ in runs)
            latency = statistics.median(lat for _, lat in runs)
            survives = "the writer" if k == 1 else f"the writer and {k - 1} replica{'s' * (k > 2)}"
            print(
                f"| ANY {k} | {survives} | {tps:.0f} | {tps / base_tps:.2f} | {latency:.2f} ms | "
                f"{latency / base_latency:.2f} |"
            )
    finally:
        cluster.destroy()
        cluster.unlock()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
