"""What a configuration reload changes, and which of those changes need a restart (pure, table-tested)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config

# Settings a running pgaurora cannot take: a new listening socket, another relay, another identity.
RESTART_ONLY = (
    "cluster",
    "state_dir",
    "writer",
    "admin",
    "tls",
    "dcs",
    "endpoints",
    "backup",
    "heal",
    "reader.host",
    "reader.port",
    "reader.pool_mode",
    "pool",
    "dns.host",
    "dns.port",
    "dns.enabled",
    "dns.zone",
    "proxy.relay",
    "proxy.relay_threads",
    "monitor.user",
    "monitor.password",
    "monitor.database",
)


@dataclass(frozen=True)
class Changes:
    live: tuple[str, ...]  # dotted settings that change and apply at once
    restart: tuple[str, ...]  # dotted settings that change but need a restart
    added: tuple[str, ...]  # nodes new in the file
    removed: tuple[str, ...]  # nodes gone from the file

    @property
    def any(self) -> bool:
        return bool(self.live or self.restart or self.added or self.removed)


def _flat(data: object, prefix: str = "") -> dict[str, object]:
    if isinstance(data, dict):
        out: dict[str, object] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


LIVE = ("writer.allow", "reader.allow")  # inside a restart-only section, but read at every accept


def _restart_only(setting: str) -> bool:
    if any(setting == live or setting.startswith(live + ".") for live in LIVE):
        return False
    return any(setting == r or setting.startswith(r + ".") for r in RESTART_ONLY)


def changes(old: Config, new: Config) -> Changes:
    before = _flat(old.model_dump(mode="json", exclude={"nodes"}))
    after = _flat(new.model_dump(mode="json", exclude={"nodes"}))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    old_nodes, new_nodes = {n.name: n for n in old.nodes}, {n.name: n for n in new.nodes}
    restart = [k for k in changed if _restart_only(k)]
    live = [k for k in changed if not _restart_only(k)]
    for name in sorted(old_nodes.keys() & new_nodes.keys()):
        a, b = old_nodes[name], new_nodes[name]
        if (a.host, a.port, a.replication_address) != (b.host, b.port, b.replication_address):
            restart.append(f"nodes.{name}.address")
        if a.priority != b.priority:
            live.append(f"nodes.{name}.priority")
    return Changes(
        tuple(live),
        tuple(restart),
        tuple(sorted(new_nodes.keys() - old_nodes.keys())),
        tuple(sorted(old_nodes.keys() - new_nodes.keys())),
    )
