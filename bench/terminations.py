"""How often a session ended with pg_terminate_backend reaches a libpq client as a bare close, not 57P01.

    python bench/terminations.py --sessions 20 --rounds 60

PostgreSQL sends FATAL 57P01 before a terminated backend exits, and pgaurora's reader endpoint passes it on.
libpq (psycopg here) nevertheless reports, now and then, "server closed the connection unexpectedly" with
no SQLSTATE. This measures that rate on the same replica, alternating rounds directly on the server and
through pgaurora's reader endpoint, and prints both and their ratio: the proxy should add nothing.

Each round: `--sessions` psycopg sessions query every 50 ms; every backend on the replica is terminated;
each session's error is counted, and it reconnects.
"""

from __future__ import annotations

import argparse
import collections
import threading

import psycopg

from pgaurora.core.polling import wait_for
from pgaurora.testing import AuroraCluster

TERMINATE = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
)


class Sessions:
    """Sessions on one URL, each counting the SQLSTATE of every error it meets."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.errors: collections.Counter[str | None] = collections.Counter()
        self.connected = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
                    self._count(connected=1)
                conn.execute("SELECT 1").fetchone()
            except psycopg.Error as exc:
                self._count(error=exc.sqlstate, connected=-1 if conn is not None else 0)
                conn = None
            self._stop.wait(0.05)  # the workload's pace
        if conn is not None:
            conn.close()

    def _count(self, connected: int = 0, error: str | bool | None = False) -> None:
        with self._lock:
            self.connected += connected
            if error is not False:
                self.errors[error] += 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _round(admin: psycopg.Connection, url: str, count: int) -> collections.Counter:
    sessions = Sessions(url, count)
    try:
        wait_for("every session connected", lambda: sessions.connected == count, 30)
        admin.execute(TERMINATE)
        wait_for("every session to meet its end", lambda: sum(sessions.errors.values()) >= count, 30)
    finally:
        sessions.stop()
    return sessions.errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=60, help="rounds per path, alternating")
    args = parser.parse_args()
    with AuroraCluster(replicas=1) as cluster:
        replica = next(n for n in cluster.status()["nodes"] if n["role"] == "replica")
        host, port = replica["address"].rsplit(":", 1)
        direct = f"postgresql://postgres:{cluster.password}@{host}:{port}/postgres"
        paths = {"direct": direct, "pgaurora": cluster.reader_url}
        totals = {name: collections.Counter() for name in paths}
        with psycopg.connect(direct, autocommit=True) as admin:
            for _ in range(args.rounds):
                for name, url in paths.items():
                    totals[name] += _round(admin, url, args.sessions)
    rates = {}
    for name, errors in totals.items():
        ended = sum(errors.values())
        rates[name] = errors[None] / ended if ended else 0.0
        print(
            f"{name:9} {ended:6} sessions ended: {errors['57P01']} with 57P01, {errors[None]} bare closes "
            f"({100 * rates[name]:.2f} %), other: {dict((k, v) for k, v in errors.items() if k not in ('57P01', None))}"
        )
    if rates["direct"]:
        print(f"ratio pgaurora/direct of bare closes: {rates['pgaurora'] / rates['direct']:.2f}")
    else:
        print("no bare close directly in this run: run more rounds for a ratio")


if __name__ == "__main__":
    main()
