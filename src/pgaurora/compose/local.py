"""LocalCluster: a primary and N streaming replicas as local processes, created, resumed and destroyed."""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..core.errors import ClusterError
from ..core.faultpoints import fail_point
from .binaries import find_bindir
from .certs import CertAuthority
from .node import LocalNode, quote
from .runas import OsUser, server_user

STATE_FILE = "cluster.json"
TLS_DIR = "tls"
MAX_REPLICAS = 15

BASE_CONF = """
include_if_exists = 'node.conf'
wal_level = replica
max_wal_senders = 32
max_replication_slots = 32
wal_keep_size = '256MB'
hot_standby = on
hot_standby_feedback = on
wal_log_hints = on
# An idle walsender pings its standby once half of wal_sender_timeout passed without a reply, so the
# replicas hear from a live primary every second even when neither WAL nor the monitor's heartbeat
# reaches them (the witness check in decide.py); status replies must come less often than that.
wal_sender_timeout = '2s'
wal_receiver_status_interval = '10s'
wal_receiver_timeout = '5s'
max_connections = {max_connections}
max_prepared_transactions = {max_connections}
shared_buffers = '64MB'
password_encryption = 'scram-sha-256'
log_line_prefix = '%m [%p] %q%u@%d '
# WAL archiving is on from the start (changing archive_mode needs a restart); node.conf says where to:
# nowhere ('/bin/true') until backups are set up.
archive_mode = on
# Commit times make point-in-time restores checkable, and say exactly what a restore recovered.
track_commit_timestamp = on
"""

HBA = """
local   all          all                        trust
local   replication  all                        trust
host    replication  {repl_user}  127.0.0.0/8   scram-sha-256
host    all          all          127.0.0.0/8   scram-sha-256
host    all          all          ::1/128       scram-sha-256
"""


AUTH_LOOKUP = """
CREATE ROLE pgaurora_auth LOGIN PASSWORD {password};
CREATE SCHEMA pgaurora;
CREATE FUNCTION pgaurora.user_lookup(role_name text, OUT usename name, OUT passwd text) RETURNS record
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'SELECT rolname, rolpassword FROM pg_authid WHERE rolname = role_name AND rolcanlogin';
REVOKE ALL ON FUNCTION pgaurora.user_lookup(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA pgaurora TO pgaurora_auth;
GRANT EXECUTE ON FUNCTION pgaurora.user_lookup(text) TO pgaurora_auth;
"""
"""pgaurora's auth_query as PgBouncer's: a SECURITY DEFINER function over pg_authid, callable by pgaurora_auth
alone, which can read nothing else; pooled endpoints authenticate clients with the secrets it returns."""


@contextmanager
def _remaking(node: LocalNode) -> Iterator[None]:
    """While a node's files are remade it is stopped on purpose, not a crash for self-healing to see. If
    the remaking fails, the node is down unasked again, so that healing tries once more (held for ever,
    it would never be looked at again)."""
    node.held = True
    try:
        yield
    except BaseException:
        node.held = False
        raise


def read_spec(state_dir: str | Path) -> dict[str, Any]:
    """The cluster.json a cluster's creation wrote in state_dir; ClusterError when there is none."""
    path = Path(state_dir) / STATE_FILE
    try:
        spec: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterError(f"{state_dir} holds no pgaurora cluster (no {STATE_FILE})") from None
    except (json.JSONDecodeError, OSError) as exc:
        raise ClusterError(f"cannot read {path}: {exc}") from None
    return spec


def default_state_dir(name: str) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/pgaurora") / name
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "pgaurora" / name


def node_addresses(base_address: str, count: int) -> list[str]:
    base = ipaddress.IPv4Address(base_address)
    if not base.is_loopback:
        raise ClusterError(f"base address {base_address} is not a loopback address (127.0.0.0/8)")
    addresses = [str(base + i) for i in range(count)]
    if not ipaddress.IPv4Address(addresses[-1]).is_loopback:
        raise ClusterError(f"{count} nodes from {base_address} run past 127.255.255.255")
    return addresses


class LocalCluster:
    """A real PostgreSQL cluster of local processes under one state directory.

    Node n1 starts as the primary; n2..nN are streaming replicas, each with its own
    physical replication slot, data directory, socket directory and loopback address.
    """

    def __init__(
        self,
        state_dir: str | Path,
        *,
        name: str = "demo",
        replicas: int = 2,
        base_address: str = "127.0.0.11",
        port: int = 5432,
        password: str | None = None,
        replication_password: str | None = None,
        synchronous: bool = True,
        sync_acks: int = 1,
        max_connections: int = 300,
        bindir: str | None = None,
        tls: bool = False,
    ) -> None:
        if not 0 <= replicas <= MAX_REPLICAS:
            raise ClusterError(f"replicas must be between 0 and {MAX_REPLICAS}, not {replicas}")
        self.root = Path(state_dir).absolute()
        self.name, self.port, self.synchronous = name, port, synchronous
        self.sync_acks = sync_acks  # k of [failover] sync_acks: pgaurora up serves the cluster with it
        self.password = password or secrets.token_urlsafe(12)
        self.replication_password = replication_password or secrets.token_urlsafe(12)
        self.max_connections = max_connections
        self.tls = tls  # the nodes serve TLS with certificates from the cluster's own CA
        self.bindir = find_bindir(bindir)
        self.user: OsUser = server_user()
        self.base_address = base_address
        self.nodes = [
            self._node(f"n{i + 1}", addr, port) for i, addr in enumerate(node_addresses(base_address, replicas + 1))
        ]
        self._lock_fd: int | None = None
        self._made_root = False
        self._archive = None  # node -> its archive_command, once backups are set up
        self.parked: list[str] = []  # stopped nodes kept aside (those a backtrack replaced): never started or served

    backend = "local"

    def _node(self, name: str, host: str, port: int) -> LocalNode:
        return LocalNode(name, host, port, self.root, self.bindir, self.user)

    def _spec(self) -> dict:
        """What cluster.json records beyond the common fields (a subclass adds its own)."""
        return {}

    # -- opening -------------------------------------------------------------
    @classmethod
    def _reopening(cls, spec: dict[str, Any]) -> dict[str, Any]:
        """What this backend reads back from cluster.json beyond the common fields (a subclass adds its own)."""
        return {}

    @classmethod
    def open(cls, state_dir: str | Path, bindir: str | None = None) -> LocalCluster:
        """A cluster previously created in state_dir by this backend (compose.backends.open_cluster() picks it)."""
        spec = read_spec(state_dir)
        cluster = cls(
            state_dir,
            name=spec["name"],
            replicas=spec["replicas"],
            base_address=spec["base_address"],
            port=spec["port"],
            password=spec["password"],
            replication_password=spec["replication_password"],
            synchronous=spec["synchronous"],
            sync_acks=spec.get("sync_acks", 1),
            max_connections=spec["max_connections"],
            bindir=bindir or spec.get("bindir"),
            tls=spec.get("tls", False),
            **cls._reopening(spec),
        )
        if "nodes" in spec:  # replicas added or removed since creation
            cluster.nodes = [cluster._node(name, host, cluster.port) for name, host in spec["nodes"]]
        cluster.parked = list(spec.get("parked", []))
        return cluster

    @property
    def created(self) -> bool:
        return (self.root / STATE_FILE).exists()

    def node(self, name: str) -> LocalNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ClusterError(f"no node named {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    @property
    def primary(self) -> LocalNode:
        return self.nodes[0]

    @property
    def replicas(self) -> list[LocalNode]:
        return self.nodes[1:]

    # -- lifecycle ------------------------------------------------------------
    def lock(self, shared: bool = False) -> None:
        """Hold the state directory so that no second pgaurora uses it at the same time (shared: the
        instances of one `up --instances`, which hold it together)."""
        self._made_root = self._made_root or not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ClusterError(f"{self.root} is in use by another pgaurora process") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def create(self, primary_from=None) -> None:
        """Make the cluster; if any step fails, remove what was made, so the same call can run again.
        primary_from(node) fills the primary's data directory (a restore) instead of initdb."""
        self._check_empty()
        self._made_root = self._made_root or not self.root.exists()
        try:
            self._create_steps(primary_from)
        except BaseException:
            self._discard()
            raise

    def _create_steps(self, primary_from) -> None:
        fail_point("create:prepare")
        self._prepare_root()
        fail_point("create:primary")
        if primary_from is None:
            self._init_primary()
        else:
            self._restored_primary(self.primary, primary_from, self.replicas)
        for replica in self.replicas:
            fail_point(f"create:clone:{replica.name}")
            self._clone(replica, self.primary)
        fail_point("create:sync")
        if self.synchronous and self.replicas:
            names = ", ".join(r.name for r in self.replicas)
            self.primary.sql(f"ALTER SYSTEM SET synchronous_standby_names = {quote(f'ANY 1 ({names})')}")
            self.primary.sql("SELECT pg_reload_conf()")
        fail_point("create:save")
        self.save()

    def _discard(self) -> None:
        """Undo a failed create: kill the nodes it started (by PID), remove their files, and the directory
        itself if create (or lock) made it."""
        for node in self.nodes:
            if node.running:
                node.kill()
            shutil.rmtree(node.home, ignore_errors=True)
        (self.root / STATE_FILE).unlink(missing_ok=True)
        self.passfile.unlink(missing_ok=True)
        shutil.rmtree(self.root / TLS_DIR, ignore_errors=True)
        if self._made_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def up(self, attach: bool = False) -> str:
        """Create the cluster, or start the one already in the state directory (with attach, start none of
        its nodes: serve them as they are). Returns what it did."""
        if self.created:
            if attach:
                return (
                    f"attached to cluster {self.name!r} in {self.root} ({sum(n.running for n in self.nodes)} "
                    f"of {len(self.nodes)} nodes running)"
                )
            self.start()
            return f"resumed cluster {self.name!r} from {self.root}"
        if attach:
            raise ClusterError(f"{self.root} holds no cluster to attach to (no {STATE_FILE})")
        self.create()
        return f"created cluster {self.name!r} in {self.root}"

    def start(self) -> None:
        if not self.passfile.exists():  # a cluster made before the pgpass file was
            self.write_passfile()
        for node in self.nodes:
            if node.name in self.parked:
                continue
            if not node.exists:
                raise ClusterError(
                    f"node {node.name} has no data directory in {node.datadir}; "
                    f"the state directory {self.root} is incomplete"
                )
            node.start()

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()

    def destroy(self) -> None:
        for node in self.nodes:
            if node.running:
                node.kill()
            node.release_shared_memory()
        self.unlock()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- creation steps ----------------------------------------------------------
    def _check_empty(self) -> None:
        if self.root.exists() and any(p.name != "lock" for p in self.root.iterdir()):
            raise ClusterError(
                f"{self.root} is not empty and holds no pgaurora cluster "
                f"(no {STATE_FILE}); refusing to touch it: choose another --dir"
            )

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        for node in self.nodes:
            for path in (node.home, node.sockdir):
                path.mkdir(mode=0o700, exist_ok=True)
                self.user.chown(str(path))
        probe = self.nodes[0].run_tool(["sh", "-c", 'test -w "$1"', "sh", str(self.nodes[0].home)], check=False)
        if probe.returncode != 0:
            raise ClusterError(
                f"user {self.user.name!r} cannot reach {self.root}: "
                "make every parent directory searchable (chmod o+x) or choose another --dir"
            )
        self.write_passfile()

    @property
    def passfile(self) -> Path:
        """The replication password as a pgpass file (mode 600, the nodes' user's): primary_conninfo names it
        rather than carry the password, which PostgreSQL would write to its log whenever the setting changes."""
        return self.root / "replication.pgpass"

    def write_passfile(self) -> None:
        escaped = self.replication_password.replace("\\", "\\\\").replace(":", "\\:")
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"*:*:*:replicator:{escaped}\n")
        os.chmod(self.passfile, 0o600)
        self.user.chown(str(self.passfile))

    def _init_primary(self) -> None:
        node = self.primary
        pwfile = node.home / "pwfile"
        pwfile.write_text(self.password + "\n")
        self.user.chown(str(pwfile))
        node.datadir.mkdir(mode=0o700, exist_ok=True)
        self.user.chown(str(node.datadir))
        node.run_tool(
            [
                node.bin("initdb"),
                "-D",
                str(node.datadir),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "--no-instructions",
            ],
            timeout=300,
        )
        pwfile.unlink()
        with open(node.datadir / "postgresql.conf", "a") as conf:
            conf.write(BASE_CONF.format(max_connections=self.max_connections))
        (node.datadir / "pg_hba.conf").write_text(HBA.format(repl_user="replicator"))
        self._write_node_conf(node)
        node.start()
        node.sql(f"CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD {quote(self.replication_password)}")
        node.sql(AUTH_LOOKUP.format(password=quote(self.auth_password)))
        for replica in self.replicas:
            node.sql(f"SELECT pg_create_physical_replication_slot({quote(replica.name)})")

    def ensure_auth_lookup(self) -> None:
        """Create pgaurora_auth and its lookup function on the running primary, unless they exist (a cluster
        made before pooling lacks them; one made since has them, so without a running primary this does
        nothing)."""
        primary = next((n for n in self.nodes if n.running and n.sql("SELECT pg_is_in_recovery()") == "f"), None)
        if primary is None:  # a primary down at start (pgaurora fails over): the cluster's own role is there
            return
        if primary.sql("SELECT count(*) FROM pg_roles WHERE rolname = 'pgaurora_auth'") == "0":
            primary.sql(AUTH_LOOKUP.format(password=quote(self.auth_password)))

    @property
    def auth_password(self) -> str:
        """The password of pgaurora_auth, the role pooled endpoints read secrets as (derived, never stored)."""
        return hashlib.sha256(f"pgaurora_auth:{self.password}".encode()).hexdigest()[:32]

    def _restored_primary(self, node: LocalNode, primary_from, replicas: list[LocalNode]) -> None:
        """A primary from a backup: restored, recovered to its target and promoted, with slots for replicas."""
        node.datadir.mkdir(mode=0o700, exist_ok=True)
        self.user.chown(str(node.datadir))
        primary_from(node)
        for stale in ("standby.signal", "postmaster.pid"):
            (node.datadir / stale).unlink(missing_ok=True)
        node.set_auto_conf(synchronous_standby_names=None, primary_conninfo=None, primary_slot_name=None)
        self._write_node_conf(node)
        try:
            self._recover(node)
        except ClusterError:
            if "recovery ended before configured recovery target was reached" not in node.log_tail(50):
                raise ClusterError(
                    f"the restored {node.name} did not recover to the target; its log ends with:\n{node.log_tail()}"
                ) from None
            # The archive ends before any commit past the target: every archived commit is wanted.
            node.stop()  # the postmaster may still be shutting down after its startup process failed
            node.set_auto_conf(recovery_target_time=None)
            self._recover(node)
        for setting in (
            "restore_command",
            "recovery_target_time",
            "recovery_target_action",
            "recovery_target_timeline",
        ):
            node.sql(f"ALTER SYSTEM RESET {setting}")
        node.sql("SELECT pg_reload_conf()")
        for replica in replicas:
            node.sql(f"SELECT pg_create_physical_replication_slot({quote(replica.name)})")

    @staticmethod
    def _recover(node: LocalNode) -> None:
        """Start a node in recovery and wait until it has promoted itself."""
        node.start(timeout=24 * 3600)  # recovery replays the archived WAL up to the target
        while node.sql("SELECT pg_is_in_recovery()") == "t":
            time.sleep(0.1)

    def _clone(self, node: LocalNode, source: LocalNode) -> None:
        self._clone_files(node, source)
        self._write_node_conf(node)
        node.make_standby(self.conninfo(node, source))
        node.start()

    def _clone_files(self, node: LocalNode, source: LocalNode) -> None:
        node.datadir.mkdir(mode=0o700, exist_ok=True)
        self.user.chown(str(node.datadir))
        node.run_tool(
            [
                node.bin("pg_basebackup"),
                "-h",
                str(source.sockdir),
                "-p",
                str(source.port),
                "-U",
                "replicator",
                "-D",
                str(node.datadir),
                "-X",
                "stream",
                "-R",
                "-S",
                node.name,
                "-c",
                "fast",
            ],
            timeout=600,
        )

    def _write_node_conf(self, node: LocalNode) -> None:
        archive = f"archive_command = {quote(self._archive(node) if self._archive else '/bin/true')}\n"
        node.write_node_conf(self.name, self._ssl_conf(node) + archive)

    def archive_with(self, command_for) -> None:
        """Every node archives with command_for(node) from now on (read at once: a reload, no restart).
        ClusterError when a node runs without archive_mode (a cluster made before it was on by default)."""
        self._archive = command_for
        for node in self.nodes:
            if node.running and node.sql("SHOW archive_mode") == "off":
                raise ClusterError(
                    f"{node.name} runs with archive_mode = off: restart it once "
                    "(`pgaurora maintenance restart --set archive_mode=on`) and try again"
                )
        for node in self.nodes:
            self._write_node_conf(node)
            if node.running:
                node.sql("SELECT pg_reload_conf()")

    def _ssl_conf(self, node: LocalNode) -> str:
        """With tls: the node serves the cluster certificate, from a copy its own user owns."""
        if not self.tls:
            return ""
        cert, key = self.certificate()
        directory = node.home / TLS_DIR
        directory.mkdir(mode=0o700, exist_ok=True)
        paths = [directory / cert.name, directory / key.name]
        for source, target in zip((cert, key), paths, strict=False):
            shutil.copyfile(source, target)
            os.chmod(target, 0o600)
        for path in (directory, *paths):
            self.user.chown(str(path))
        return f"ssl = on\nssl_cert_file = {quote(str(paths[0]))}\nssl_key_file = {quote(str(paths[1]))}\n"

    def authority(self) -> CertAuthority:
        """The cluster's CA (in <state dir>/tls, made on first use): its ca.crt is what clients trust."""
        return CertAuthority.open(self.root / TLS_DIR, self.name)

    def certificate(self) -> tuple[Path, Path]:
        """(cert, key) files of the one certificate the nodes and pgaurora's endpoints all present: for
        every node address, 127.0.0.1 and localhost. One certificate, so that SCRAM channel binding
        (tls-server-end-point) holds through the proxy."""
        cert, key = self.root / TLS_DIR / "cluster.crt", self.root / TLS_DIR / "cluster.key"
        if not (cert.exists() and key.exists()):  # every address a node may ever get: replicas add too
            hosts = [*node_addresses(self.base_address, MAX_REPLICAS + 1), "127.0.0.1", "localhost"]
            cert, key = self.authority().issue("cluster", hosts)
        return cert, key

    def conninfo(self, node: LocalNode, upstream: LocalNode) -> str:
        """primary_conninfo for node streaming from upstream."""
        return (
            f"host={upstream.host} port={upstream.port} user=replicator "
            f"passfile={self.passfile} application_name={node.name}"
        )

    def save(self) -> None:
        spec = {
            "name": self.name,
            "replicas": len(self.replicas),
            "base_address": self.base_address,
            "nodes": [[n.name, n.host] for n in self.nodes],
            "port": self.port,
            "password": self.password,
            "replication_password": self.replication_password,
            "synchronous": self.synchronous,
            "sync_acks": self.sync_acks,
            "max_connections": self.max_connections,
            "backend": self.backend,
            "tls": self.tls,
            "bindir": self.bindir,
            "parked": self.parked,
            **self._spec(),
        }
        path = self.root / STATE_FILE
        path.write_text(json.dumps(spec, indent=2) + "\n")
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)

    def node_configs(self) -> list[dict]:
        """The nodes pgaurora serves: every one but the parked."""
        return [{"name": n.name, "host": n.host, "port": n.port} for n in self.nodes if n.name not in self.parked]

    def park(self, names: list[str]) -> None:
        """Keep these (stopped) nodes aside from now on, and only these: start() and node_configs() skip them."""
        self.parked = list(names)
        self.save()

    # -- scaling -------------------------------------------------------------------------------
    def _new_nodes(self, count: int) -> list[LocalNode]:
        """count nodes on the next free names and addresses, their directories made (not yet in self.nodes)."""
        used = {n.host for n in self.nodes}
        free = [a for a in node_addresses(self.base_address, MAX_REPLICAS + 1) if a not in used]
        if count > len(free):
            raise ClusterError(
                f"the cluster has {len(self.nodes)} nodes; {count} more would pass the "
                f"{MAX_REPLICAS + 1} addresses it has"
            )
        taken = {n.name for n in self.nodes}
        names = [f"n{i}" for i in range(1, 4 * MAX_REPLICAS) if f"n{i}" not in taken][:count]
        nodes = [self._node(name, host, self.port) for name, host in zip(names, free, strict=False)]
        for node in nodes:
            for path in (node.home, node.sockdir):
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.user.chown(str(path))
        return nodes

    def add_replica(self, upstream: str) -> LocalNode:
        """A new replica of upstream (the writer): a slot, pg_basebackup, started and saved in cluster.json.
        If any step fails, what it made is removed (slot included)."""
        if len(self.nodes) > MAX_REPLICAS:
            raise ClusterError(f"the cluster has {len(self.replicas)} replicas, the most it can have")
        source = self.node(upstream)
        (node,) = self._new_nodes(1)
        try:
            source.sql(f"SELECT pg_create_physical_replication_slot({quote(node.name)})")
            self._clone(node, source)
        except BaseException:
            self._forget(node, source)
            raise
        self.nodes.append(node)
        self.save()
        return node

    def restore_set(self, primary_from, replicas: int) -> list[LocalNode]:
        """A second set of nodes beside the running ones (a backtrack): a primary that primary_from(node)
        restores, recovered and promoted, and `replicas` clones of it; saved in cluster.json. On failure,
        what it made is removed."""
        made = self._new_nodes(replicas + 1)
        primary, clones = made[0], made[1:]
        try:
            self._restored_primary(primary, primary_from, clones)
            for clone in clones:
                self._clone(clone, primary)
            if self.synchronous and clones:
                names = ", ".join(c.name for c in clones)
                primary.sql(f"ALTER SYSTEM SET synchronous_standby_names = {quote(f'ANY 1 ({names})')}")
                primary.sql("SELECT pg_reload_conf()")
        except BaseException:
            for node in made:
                if node.running:
                    node.kill()
                shutil.rmtree(node.home, ignore_errors=True)
            raise
        self.nodes += made
        self.save()
        return made

    def promote_anew(self, name: str, restore_command) -> None:
        """Start a stopped primary through a recovery of its own line of WAL (restore_command(node) fetches what
        the archive has) that ends in a promotion, so that
        it runs on a timeline newer than any in the archive. After a backtrack is undone, the line that runs
        must be the newest: a later point-in-time restore follows the newest timeline, not the abandoned one."""
        node = self.node(name)
        node.set_auto_conf(restore_command=restore_command(node), recovery_target_timeline="current")
        (node.datadir / "recovery.signal").write_text("")
        self.user.chown(str(node.datadir / "recovery.signal"))
        try:
            self._recover(node)
        except ClusterError:
            raise ClusterError(
                f"{name} did not come back through its recovery; its log ends with:\n{node.log_tail()}"
            ) from None
        for setting in ("restore_command", "recovery_target_timeline"):
            node.sql(f"ALTER SYSTEM RESET {setting}")
        node.sql("SELECT pg_reload_conf()")
        self._fetch_histories(node, restore_command(node))

    def _fetch_histories(self, node: LocalNode, restore_command: str) -> None:
        """The history files of the timelines it skipped, into pg_wal: a standby following it asks for
        every one between its timeline and the new one, and recovery only read them from the archive."""
        newest = int(node.sql("SELECT timeline_id FROM pg_control_checkpoint()"))
        for timeline in range(2, newest):
            name = f"{timeline:08X}.history"
            target = node.datadir / "pg_wal" / name
            if not target.exists():
                node.run_tool(["sh", "-c", restore_command.replace("%f", name).replace("%p", str(target))], check=False)

    def forget_nodes(self, names: list[str]) -> None:
        """Remove stopped nodes' files and entries (the other side of a backtrack, once its time is up)."""
        for name in names:
            node = self.node(name)
            if node.running:
                node.stop()
            shutil.rmtree(node.home, ignore_errors=True)
            self.nodes.remove(node)
        self.parked = [n for n in self.parked if n not in names]
        self.save()

    def remove_replica(self, name: str, upstream: str) -> None:
        """Stop the replica, drop its slot on upstream (the writer), remove its files and its entry."""
        node = self.node(name)
        if node.running:
            node.stop()
        self._forget(node, self.node(upstream))
        self.nodes.remove(node)
        self.save()

    def _forget(self, node: LocalNode, upstream: LocalNode) -> None:
        """Kill the node, drop its slot wherever one is (the writer's; a former writer's too, since an idle
        slot keeps WAL), remove its files."""
        if node.running:
            node.kill()
        for other in (upstream, *(n for n in self.nodes if n not in (upstream, node))):
            if other.running and other.name not in self.parked:
                self._drop_slot(other, node.name)
        shutil.rmtree(node.home, ignore_errors=True)

    @staticmethod
    def _drop_slot(upstream: LocalNode, slot: str, timeout: float = 15) -> None:
        """Drop the slot once its walsender has gone (it outlives a stopped standby by a moment)."""
        deadline = time.monotonic() + timeout
        while upstream.sql(f"SELECT active FROM pg_replication_slots WHERE slot_name = {quote(slot)}") == "t":
            if time.monotonic() > deadline:
                raise ClusterError(f"replication slot {slot} on {upstream.name} is still in use after {timeout:.0f} s")
            time.sleep(0.1)
        upstream.sql(
            f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {quote(slot)}"
        )

    # -- maintenance ---------------------------------------------------------------------------
    def check_restart(self, name: str, settings: dict[str, str], bindir: str | None) -> dict[str, str]:
        """Before touching any node: would node `name` start with these settings and binaries? Returns
        each setting as PostgreSQL reads it (pg_settings.setting); ClusterError naming what is wrong."""
        node = self.node(name)
        target = find_bindir(bindir) if bindir else node.bindir
        if bindir:
            major = (node.datadir / "PG_VERSION").read_text().strip()
            version = node.run_tool([os.path.join(target, "postgres"), "--version"]).stdout.split()[-1]
            if version.split(".")[0] != major:
                raise ClusterError(
                    f"{target} holds PostgreSQL {version}; the nodes run major version {major}: "
                    "a rolling restart moves between minor versions only"
                )
        read = {}
        for setting, value in settings.items():
            done = node.run_tool(
                [os.path.join(target, "postgres"), "-D", str(node.datadir), "-c", f"{setting}={value}", "-C", setting],
                check=False,
            )
            if done.returncode != 0:
                raise ClusterError(f"{setting} = {value!r}: {(done.stderr or done.stdout).strip().splitlines()[-1]}")
            read[setting] = done.stdout.strip()
        return read

    def restart_node(self, name: str, settings: dict[str, str], bindir: str | None) -> None:
        """Restart a node with settings in postgresql.auto.conf and/or other binaries. If it does not come
        back, its old settings and binaries are put back and it is started again; ClusterError says why."""
        node = self.node(name)
        before, old_bindir = node.auto_conf(), node.bindir
        node.stop()
        node.set_auto_conf(**settings)
        node.bindir = find_bindir(bindir) if bindir else node.bindir
        try:
            node.start()
        except ClusterError as exc:
            node.replace_auto_conf(before)
            node.bindir = old_bindir
            node.start()
            raise ClusterError(
                f"{name} did not start with the new settings, and was started again as it was: {exc}"
            ) from None

    def use_bindir(self, bindir: str) -> None:
        """Record that every node now runs from bindir (for the next `pgaurora up`)."""
        self.bindir = find_bindir(bindir)
        self.save()

    # -- control used by the monitor (NodeController) --------------------------------------
    def stop_node(self, name: str) -> int:
        """Stop a node cleanly; returns the LSN of its shutdown checkpoint."""
        node = self.node(name)
        node.stop()
        return node.checkpoint_lsn()

    def start_node(self, name: str) -> None:
        self.node(name).start()

    def rejoin(self, name: str, upstream: str) -> str:
        """Make a former primary a replica of upstream: pg_rewind (after the crash recovery a crash left
        owing), or a fresh clone if rewind fails."""
        node, source = self.node(name), self._slot_for(name, upstream)
        # A freshly promoted primary records its new timeline in pg_control only at its next
        # checkpoint; without one, pg_rewind would see one timeline and decide nothing needs rewinding.
        source.sql("CHECKPOINT")
        if node.running:
            node.stop()
        with _remaking(node):
            method = "pg_rewind"
            try:
                node.finish_crash_recovery()
                node.run_tool(
                    [
                        node.bin("pg_rewind"),
                        "-D",
                        str(node.datadir),
                        "--source-server",
                        f"host={source.sockdir} port={source.port} user=postgres dbname=postgres",
                    ],
                    timeout=600,
                )
            except ClusterError:
                method = "clone"
                self._reclone(node, source)
            self._write_node_conf(node)
            node.make_standby(self.conninfo(node, source))
        node.start()
        return method

    def rebuild(self, name: str, upstream: str) -> None:
        """Replace a node's data directory with a fresh clone of upstream (with its slot), and start it as
        a replica: for a node that cannot start, or whose files are gone."""
        node, source = self.node(name), self._slot_for(name, upstream)
        if node.running:
            node.stop(mode="immediate")
        with _remaking(node):
            self._reclone(node, source)
            self._write_node_conf(node)
            node.make_standby(self.conninfo(node, source))
        node.start()

    def _slot_for(self, name: str, upstream: str) -> LocalNode:
        source = self.node(upstream)
        source.sql(
            f"SELECT pg_create_physical_replication_slot({quote(name)}, true) WHERE NOT EXISTS "
            f"(SELECT 1 FROM pg_replication_slots WHERE slot_name = {quote(name)})"
        )
        return source

    def _reclone(self, node: LocalNode, source: LocalNode) -> None:
        fail_point(f"reclone:{node.name}")  # a clone can fail for real: its source stopped, a full disk
        shutil.rmtree(node.datadir, ignore_errors=True)
        self._clone_files(node, source)

    # -- what self-healing reads (health/heal.py) -------------------------------------------------------
    owns_files = True

    def knows(self, name: str) -> bool:
        return any(n.name == name for n in self.nodes)

    def alive(self, name: str) -> bool | None:
        return self.node(name).running

    def why_down(self, name: str) -> str:
        return self.node(name).exit_reason()

    def held(self, name: str) -> bool:
        """Stopped on purpose by this process (an operation, a switchover, a stop): not a crash."""
        return self.node(name).held

    def usable(self, name: str) -> bool:
        """Has the node a data directory it could start from?"""
        node = self.node(name)
        return node.exists and (node.datadir / "global" / "pg_control").exists()
