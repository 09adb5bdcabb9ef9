"""The shell commands that make a fenced former primary a replica of the writer, run on that node's host.

pgaurora cannot run them itself on a cluster it does not compose: pg_rewind and pg_ctl need the node's
data directory and its PostgreSQL OS user, on a host pgaurora only reaches over SQL.
"""

from __future__ import annotations

import shlex

from ..core.config import Config
from ..core.topology import Role, Topology
from .actions import literal, replication_conninfo


def plan(config: Config, topology: Topology, name: str) -> str:
    """A POSIX shell script; ValueError when name is not a node that can rejoin now."""
    nodes = {n.name: n for n in config.nodes}
    if name not in nodes:
        raise ValueError(f"no node named {name!r} (nodes: {', '.join(nodes)})")
    if topology.writer is None:
        raise ValueError("there is no writer to rejoin to yet")
    if name == topology.writer:
        raise ValueError(f"{name} is the writer")
    state = topology.node(name)
    if state is not None and state.role is Role.REPLICA:
        raise ValueError(f"{name} already is a replica")
    writer = nodes[topology.writer]
    source = f"host={writer.host} port={writer.port} user={config.monitor.user} dbname={config.monitor.database}"
    slot = literal(name)
    conninfo = replication_conninfo(config, writer, name)
    return "\n".join(
        [
            f"# Make {name} a replica of writer {writer.name} ({writer.host}:{writer.port}, epoch {topology.epoch}).",
            f"# Run on {name}'s host as the OS user that runs PostgreSQL, with PGDATA set to {name}'s data",
            f"# directory and PGPASSWORD to the password of {config.monitor.user!r} (pg_rewind reads the writer).",
            "set -eu",
            f': "${{PGDATA:?set PGDATA to the data directory of {name}}}"',
            f"# 1. Stop {name} if it runs (pg_rewind finishes crash recovery itself if it was killed).",
            'if pg_ctl -D "$PGDATA" status >/dev/null 2>&1; then pg_ctl -D "$PGDATA" -m fast -w stop; fi',
            f"# 2. A slot for {name} on the writer, and a checkpoint there so that pg_rewind sees its timeline.",
            f"psql {shlex.quote(source)} -Xq -v ON_ERROR_STOP=1 -c "
            + shlex.quote(
                f"SELECT pg_create_physical_replication_slot({slot}, true) WHERE NOT EXISTS "
                f"(SELECT 1 FROM pg_replication_slots WHERE slot_name = {slot})"
            )
            + " -c CHECKPOINT",
            f"# 3. Rewind {name} onto the writer's history. pg_rewind copies the writer's configuration files",
            f"#    too (its listen address among them), so {name}'s own are kept aside and put back.",
            'keep=$(mktemp -d) && cp -p "$PGDATA"/*.conf "$keep"/',
            f'pg_rewind -D "$PGDATA" --source-server={shlex.quote(source)}',
            'cp -p "$keep"/*.conf "$PGDATA"/ && rm -r "$keep"',
            "# 4. Follow the writer through the slot, as a standby.",
            "cat >> \"$PGDATA/postgresql.auto.conf\" <<'EOF'",
            f"primary_conninfo = {literal(conninfo)}",
            f"primary_slot_name = {slot}",
            "EOF",
            'touch "$PGDATA/standby.signal"',
            f"# 5. Start it (or start it as this host usually does); pgaurora unfences {name} once it streams.",
            "#    Without PGPASSWORD: libpq would prefer it to the pgpass file primary_conninfo may name.",
            'env -u PGPASSWORD pg_ctl -D "$PGDATA" -l "${PGLOG:-$PGDATA/../pgaurora-rejoin.log}" -w start',
            "",
        ]
    )
