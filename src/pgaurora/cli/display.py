"""Render the status document as tables for a terminal (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _lag(node: dict) -> str:
    if node["lag_bytes"] is None and node["lag_seconds"] is None:
        return "-"
    return f"{node['lag_bytes'] or 0} B / {node['lag_seconds'] or 0:.2f} s"


def print_status(doc: dict) -> None:
    console = Console()
    console.print(f"cluster [bold]{doc['cluster']}[/]  zone {doc['zone']}  epoch {doc['epoch']}  "
                  f"sync {doc['sync_mode']} ({doc['sync_standbys'] or 'asynchronous'})")
    console.print(f"writer {doc['writer']['endpoint']} -> {doc['writer']['node'] or 'none'}   "
                  f"reader {doc['reader']['endpoint']} -> {', '.join(doc['reader']['nodes']) or 'none'}")
    table = Table()
    for column in ("node", "address", "role", "health", "lag", "timeline", "upstream", "clients"):
        table.add_column(column)
    for n in doc["nodes"]:
        table.add_row(n["name"], n["address"], n["role"], n["health"], _lag(n), str(n["timeline"] or "-"),
                      n["upstream"] or "-", str(n["connections"]))
    console.print(table)
    voters = ", ".join(doc.get("voters") or []) or "none"
    safe = "[green]safe[/]" if doc.get("failover_safe") else "[yellow]not provably safe[/]"
    console.print(f"voters {voters} (all must answer to promote)   failover now: {safe}")
    if not doc.get("failover_safe") and doc.get("failover_outlook"):
        console.print(f"  {doc['failover_outlook']}")
    if doc.get("fenced_hint"):
        console.print(f"[yellow]{doc['fenced_hint']}[/]")
    bound = doc.get("loss_bound_bytes")
    if bound:
        console.print(f"[yellow]asynchronous: a failover now could lose up to {bound} bytes of acknowledged WAL[/]")
    console.print(f"last decision: {doc['reason']}")
