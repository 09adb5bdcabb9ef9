"""Failover drill: kill (or freeze) the primary N times under a write loop; report how long each phase took.

    python bench/failover.py [--rounds 5] [--replicas 2] [--fault kill|pause] [--json out.json]

Prints detection, promotion, writer-available and DNS-updated times (seconds from the kill) as
min/median/max, and the number of acknowledged writes that were lost (must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from pgaurora import config as config_mod
from pgaurora.compose import LocalCluster
from pgaurora.compose.drill import FAULTS, BackgroundService, DrillReport, crash_primary_once, restore
from pgaurora.compose.ports import free_ports


def _config(cluster: LocalCluster, probe_interval: float) -> config_mod.Config:
    writer, reader, admin, dns = free_ports(4)
    return config_mod.build({
        "cluster": cluster.name, "nodes": cluster.node_configs(),
        "writer": {"port": writer}, "reader": {"port": reader}, "admin": {"port": admin},
        "dns": {"port": dns},
        "monitor": {"user": "postgres", "password": cluster.password, "probe_interval": probe_interval},
        "failover": {"replication_password": cluster.replication_password},
    })


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--probe-interval", type=float, default=0.5)
    parser.add_argument("--fault", choices=FAULTS, default="kill",
                        help="kill: SIGKILL the primary; pause: SIGSTOP it (a hung host), resumed after the failover")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="pgaurora-drill-"))
    os.chmod(root, 0o755)
    cluster = LocalCluster(root / "cluster", replicas=args.replicas, port=free_ports(1)[0], base_address="127.0.3.11")
    cluster.lock()
    svc = None
    report = DrillReport()
    try:
        cluster.create()
        svc = BackgroundService(_config(cluster, args.probe_interval), controller=cluster)
        svc.wait_ready()
        for i in range(args.rounds):
            result = crash_primary_once(cluster, svc, f"drill_{i}", args.fault)
            report.rounds.append(result)
            print(f"round {i + 1}: {args.fault} {result.old_writer}, promoted {result.new_writer}: detected "
                  f"{result.detected:.2f} s, promoted {result.promoted:.2f} s, writes back {result.writer_available:.2f} s, "
                  f"DNS {result.dns_updated:.2f} s, lost {result.lost_writes} of {result.acknowledged}", flush=True)
            restore(cluster, svc, result.old_writer)
    finally:
        if svc is not None:
            svc.stop()
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n{'phase (s after kill)':<22}{'min':>8}{'median':>8}{'max':>8}")
    for phase, stats in report.summary().items():
        print(f"{phase:<22}{stats['min']:>8.2f}{stats['median']:>8.2f}{stats['max']:>8.2f}")
    print(f"lost acknowledged writes: {report.lost_writes}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"rounds": [asdict(r) for r in report.rounds],
                                                    "summary": report.summary(),
                                                    "lost_writes": report.lost_writes}, indent=2))
    return 1 if report.lost_writes else 0


if __name__ == "__main__":
    sys.exit(main())
