"""Render the status document as tables for a terminal (rich)."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table


def size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


def _lag(node: dict) -> str:
    if node["lag_bytes"] is None and node["lag_seconds"] is None:
        return "-"
    return f"{size(node['lag_bytes'] or 0)}, {node['lag_seconds'] or 0:.1f} s"


def print_status(doc: dict, wide: bool = False) -> None:
    """One line per node: name, full address, role, health and lag fit in 80 columns; --wide adds the rest."""
    console = Console()
    console.print(
        f"cluster [bold]{doc['cluster']}[/]  zone {doc['zone']}  epoch {doc['epoch']}  "
        f"sync {doc['sync_mode']} ({doc['sync_standbys'] or 'asynchronous'})"
    )
    console.print(
        f"writer {doc['writer']['endpoint']} -> {doc['writer']['node'] or 'none'}   "
        f"reader {doc['reader']['endpoint']} -> {', '.join(doc['reader']['nodes']) or 'none'}"
    )
    for e in doc.get("endpoints") or []:
        console.print(f"custom {e['name']} {e['endpoint']} -> {', '.join(e['nodes']) or 'none'}")
    columns = ["node", "address", "role", "health", "lag"] + (["timeline", "upstream", "clients"] if wide else [])
    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=True)
    for n in doc["nodes"]:
        row = [n["name"], n["address"], "drained" if n.get("drained") else n["role"], n["health"], _lag(n)]
        if wide:
            row += [str(n["timeline"] or "-"), n["upstream"] or "-", str(n["connections"])]
        table.add_row(*row)
    console.print(table)
    voters = doc.get("voters") or []
    quorum = doc.get("promote_quorum", len(voters))
    must = "all" if quorum == len(voters) else f"{quorum} of {len(voters)}"
    safe = "[green]safe[/]" if doc.get("failover_safe") else "[yellow]not provably safe[/]"
    console.print(f"voters {', '.join(voters) or 'none'} ({must} must answer to promote)   failover now: {safe}")
    if doc.get("can_lose"):
        console.print(f"can lose now, with no commit lost: {doc['can_lose']}")
    if not doc.get("failover_safe") and doc.get("failover_outlook"):
        console.print(f"  {doc['failover_outlook']}")
    unsafe = doc.get("last_unsafe_failover")
    if unsafe:
        console.print(
            f"[red]forced failover to {unsafe['candidate']} at {unsafe['time']}: up to "
            f"{unsafe['loss_bound_bytes']} bytes of acknowledged WAL may be lost[/]"
        )
    _print_redundancy(console, doc.get("redundancy"), doc.get("heal"))
    if doc.get("fenced_hint"):
        console.print(f"[yellow]{doc['fenced_hint']}[/]")
    bound = doc.get("loss_bound_bytes")
    if bound:
        console.print(f"[yellow]asynchronous: a failover now could lose up to {bound} bytes of acknowledged WAL[/]")
    if doc.get("dcs"):
        _print_dcs(console, doc["dcs"], wide)
    if doc.get("backup"):
        _print_backup(console, doc["backup"])
    _print_pools(console, doc.get("pools") or [], doc.get("pins") or {})
    _print_split(console, doc.get("split") or {})
    _print_stale_monitor(console, doc.get("monitor"))
    console.print(f"last decision: {doc['reason']}")


def _print_pools(console: Console, pools: list[dict], pins: dict) -> None:
    """A line per pool (pooled endpoints only), and why clients were pinned to a connection."""
    for p in pools:
        console.print(
            f"pool {p['endpoint']} {p['node']} {p['user']}@{p['database']}: {p['server_active']} active, "
            f"{p['server_idle']} idle, {p['clients_waiting']} waiting (longest wait {p['longest_wait_seconds']:.2f} s)",
            soft_wrap=True,  # one line per pool, as grep and the tests read it, whatever the terminal's width
        )
    if pins:
        pinned = ", ".join(f"{reason} {count}" for reason, count in sorted(pins.items()))
        console.print(f"pinned clients: {pinned}", soft_wrap=True)


def _print_split(console: Console, split: dict) -> None:
    """A line per splitting endpoint (and reader min_lsn sessions) and consistency: where reads ran, and why."""
    for endpoint, modes in sorted(split.items()):
        for mode, seen in sorted(modes.items()):
            writer = ", ".join(f"{why} {count}" for why, count in sorted(seen["writer"].items())) or "none"
            waited = (
                f"; {seen['waits']} waited {seen['wait_seconds'] / seen['waits'] * 1000:.1f} ms on average"
                if seen.get("waits")
                else ""
            )
            line = f"{endpoint} {mode}: {seen['replica']} on replicas; on the writer: {writer}{waited}"
            console.print(line, soft_wrap=True)


def _print_stale_monitor(console: Console, monitor: dict | None) -> None:
    """Only when the monitor has not probed for over three intervals: its view, and the routing, are stale."""
    monitor = monitor or {}
    age = monitor.get("last_probe_seconds_ago")
    if age is not None and age > 3 * monitor["probe_interval"]:
        console.print(f"[red]the monitor last probed {age:.1f} s ago: its view of the nodes is stale[/]")


def _print_redundancy(console: Console, red: dict | None, heal: dict | None) -> None:
    """'2 of 2 replicas streaming; commits on 2 copies', how long it has been short, and what is healing."""
    if not red:
        return
    since = red.get("degraded_since")
    short = "" if red["full"] or since is None else f" (short for {datetime.now(UTC).timestamp() - since:.0f} s)"
    console.print(("[green]" if red["full"] else "[yellow]") + f"redundancy: {red['summary']}{short}[/]")
    for name, state in ((heal or {}).get("nodes") or {}).items():
        what = (
            "[red]given up: needs a person[/]"
            if state["given_up"]
            else "healing now"
            if state["healing"]
            else "waiting for its next try"
        )
        console.print(f"  {name}: {state['tries']} tries; {what}")


def _print_dcs(console: Console, dcs: dict, wide: bool) -> None:
    """The instances etcd knows, which one leads, and how this one sees etcd."""
    names = [f"[bold]{n}[/] (leader)" if n == dcs["leader"] else n for n in sorted(dcs["instances"])]
    left = f", lease {dcs['lease_left']:.1f} s left" if dcs.get("lease_left") is not None else ""
    console.print(f"instances {', '.join(names) or 'none'}   this one: {dcs['instance']}, {dcs['role']}{left}")
    health = "[red]unreachable[/]" if dcs["role"] == "cut_off" else "[green]up[/]"
    down = [url for url, state in (dcs.get("endpoint_health") or {}).items() if state != "up"]
    endpoints = ", ".join(dcs["endpoints"]) if wide else dcs["endpoint_in_use"]
    console.print(
        f"etcd {health} ({endpoints})"
        + (f"  [yellow]down: {', '.join(down)}[/]" if down else "")
        + (f"  {dcs['last_error']}" if wide and dcs.get("last_error") else "")
    )


def _when(seconds: float | None) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S+00") if seconds else "never"


def _print_backup(console: Console, backup: dict) -> None:
    """The writer's archiver and the newest backup."""
    a, newest = backup["archive"], backup.get("newest_backup")
    failing = a["failed_count"] and a.get("last_failed_wal")
    state = f"[red]failing ({a['last_failed_wal']})[/]" if failing else "[green]ok[/]"
    console.print(
        f"archive {state}: last {a['last_archived_wal'] or 'none'} at {_when(a['last_archived_time'])}, "
        f"{a['pending_segments']} waiting" + (f"  {a['error']}" if a.get("error") else "")
    )
    newest_text = f"{newest['label']} ({newest['type']}) at {_when(newest['finished'])}" if newest else "none yet"
    console.print(f"backup  {newest_text}{', encrypted' if backup['encrypted'] else ''}")


def print_backups(doc: dict) -> None:
    """One line per backup, and the restorable range."""
    console = Console()
    table = Table(box=None, pad_edge=False)
    for column in ("label", "type", "finished", "took", "size", "stored"):
        table.add_column(column, no_wrap=True)
    for b in doc["backups"]:
        table.add_row(
            b["label"],
            b["type"],
            _when(b["finished"]),
            f"{b['seconds']} s",
            size(b["size_bytes"]),
            size(b["repository_bytes"]),
        )
    console.print(table)
    span = doc.get("restorable")
    console.print(f"restorable from {_when(span['from'])} to {_when(span['to'])}" if span else "nothing restorable yet")
    console.print(f"repository {doc['repository']}" + ("  (encrypted, aes-256-cbc)" if doc["encrypted"] else ""))
