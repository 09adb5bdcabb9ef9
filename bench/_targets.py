"""Proxies under benchmark: pgaurora, PgBouncer (session mode) and HAProxy (TCP mode), each its own process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _cluster import BenchCluster, running_pgaurora

from pgaurora.compose.ports import free_port, free_ports

BASELINES = {"pgbouncer": "pgbouncer", "haproxy": "haproxy", "pgbench": "postgresql-contrib"}  # tool: package
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/lib/postgresql/15/bin"])
_POLICY_RC = Path("/usr/sbin/policy-rc.d")


def ensure_baselines() -> None:
    """Install PgBouncer, HAProxy and pgbench from Debian's packages when missing (as root), or stop
    with one message naming what to install. The packaged services are not started: the benchmark
    runs its own, on its own ports."""
    missing = sorted({pkg for tool, pkg in BASELINES.items() if not shutil.which(tool, path=_SBIN_PATH)})
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(f"bench/proxy.py needs {', '.join(missing)}: apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    ours = not _POLICY_RC.exists()
    if ours:  # Debian's way to keep a package's postinst from starting its service
        _POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        _POLICY_RC.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    finally:
        if ours:
            _POLICY_RC.unlink()


def started(proc: subprocess.Popen, host: str, port: int) -> subprocess.Popen:
    """proc, once it listens on host:port; stopped (by its PID) if it never does."""
    try:
        wait_port(host, port)
    except TimeoutError:
        proc.kill()
        proc.wait()
        raise
    return proc


def wait_port(host: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Target:
    name: str
    host: str
    port: int
    proc: subprocess.Popen | None = None  # None: a direct connection, no proxy process
    extra_pids: list[int] = field(default_factory=list)
    sslmode: str | None = None  # clients connect with this PGSSLMODE (TLS runs)

    @property
    def pids(self) -> list[int]:
        return ([self.proc.pid] if self.proc else []) + self.extra_pids

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine (all processes, kernel threads and interrupts), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def tls_certificate(work: Path) -> tuple[Path, Path]:
    """(cert, key) for 127.0.0.1 from a CA of the run's own, which the TLS targets all present."""
    from pgaurora.compose.certs import CertAuthority

    return CertAuthority.open(work / "tls", "bench").issue("proxy", ["127.0.0.1"])


def start_pgaurora(
    bc: BenchCluster,
    work: Path,
    relay: str = "auto",
    name: str = "pgaurora",
    tls: tuple[Path, Path] | None = None,
    pool_mode: str = "passthrough",
    pool_size: int = 20,
    extra_toml: str = "",
) -> tuple[Target, Target]:
    """The benchmark's own pgaurora on free ports, for the local cluster; with tls, clients must use TLS;
    extra_toml: more of its configuration (a custom endpoint)."""
    writer, reader, admin, dns = free_ports(4)
    conf = work / f"{name}.toml"
    tls_toml = f'[tls]\ncert_file = "{tls[0]}"\nkey_file = "{tls[1]}"\nclient_tls = "require"\n' if tls else ""
    mode = f'pool_mode = "{pool_mode}"\n'
    conf.write_text(
        f'cluster = "bench"\n{bc.pgaurora_toml}[writer]\nport = {writer}\n{mode}[reader]\nport = {reader}\n{mode}'
        f"[admin]\nport = {admin}\n[dns]\nport = {dns}\n"
        f'[proxy]\nmax_client_connections = 20000\nrelay = "{relay}"\n{tls_toml}'
        f'[pool]\npool_size = {pool_size}\nauth_user = "pgaurora_auth"\nauth_password = "{bc.auth_password}"\n'
        f"{extra_toml}"
    )
    proc = _spawn_pgaurora(conf, work / f"{name}.log", ("127.0.0.1", writer), ("127.0.0.1", reader))
    sslmode = "require" if tls else None
    return (
        Target(name, "127.0.0.1", writer, proc, sslmode=sslmode),
        Target(f"{name}-reader", "127.0.0.1", reader, proc, sslmode=sslmode),
    )


def given_pgaurora(bc: BenchCluster, work: Path) -> tuple[Target, Target]:
    """The pgaurora that serves the user's config: the running one (measured by its PID when it runs
    here), or one started with that config and stopped afterwards."""
    config = bc.config
    writer, reader = (config.writer.host, config.writer.port), (config.reader.host, config.reader.port)
    status = running_pgaurora(config)
    if status is None:
        proc = _spawn_pgaurora(bc.config_path, work / "pgaurora.log", writer, reader)
        return Target("pgaurora", *writer, proc), Target("pgaurora-reader", *reader, proc)
    pid = status.get("pid")
    pids = [pid] if isinstance(pid, int) and Path(f"/proc/{pid}").exists() else []  # else: on another host
    return Target("pgaurora", *writer, extra_pids=pids), Target("pgaurora-reader", *reader, extra_pids=pids)


def _spawn_pgaurora(conf: Path, log_path: Path, writer: tuple[str, int], reader: tuple[str, int]) -> subprocess.Popen:
    with open(log_path, "w") as log:
        # this interpreter's pgaurora: a virtualenv need not be activated, nor pgaurora be on PATH
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgaurora", "proxy", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
    started(proc, *writer)
    wait_port(*reader)
    return proc


def start_pgbouncer(
    bc: BenchCluster,
    work: Path,
    tls: tuple[Path, Path] | None = None,
    pool_mode: str = "session",
    pool_size: int = 3000,
    secret: str | None = None,
    name: str = "pgbouncer",
) -> Target:
    """PgBouncer on a free port; secret: the role's SCRAM secret in its auth_file (else the plain password)."""
    port = free_port()
    host, server_port = bc.primary
    quoted = ['"' + v.replace('"', '""') + '"' for v in (bc.user, secret or bc.password or "")]  # doubled quotes
    (work / "userlist.txt").write_text(" ".join(quoted) + "\n")
    auth = "scram-sha-256" if bc.password else "trust"
    ini = work / f"{name}.ini"
    ini.write_text(
        f"[databases]\n* = host={host} port={server_port}\n[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = {auth}\nauth_file = {work / 'userlist.txt'}\npool_mode = {pool_mode}\n"
        f"max_client_conn = 20000\ndefault_pool_size = {pool_size}\nmax_db_connections = 0\n"
        "logfile =\nlog_connections = 0\nlog_disconnections = 0\n"
        + (
            f"client_tls_sslmode = require\nclient_tls_cert_file = {tls[0]}\nclient_tls_key_file = {tls[1]}\n"
            if tls
            else ""
        )
    )
    for path in (work, ini, work / "userlist.txt", *(tls or ()), *((tls[0].parent,) if tls else ())):
        bc.runas.chown(str(path))
    os.chmod(work / "userlist.txt", 0o600)
    kwargs = {} if bc.runas.is_self else {"user": bc.runas.uid, "group": bc.runas.gid, "extra_groups": []}
    proc = subprocess.Popen(
        [shutil.which("pgbouncer", path=_SBIN_PATH), str(ini)],
        stdout=subprocess.DEVNULL,
        stderr=open(work / f"{name}.log", "w"),
        **kwargs,
    )
    return Target(name, "127.0.0.1", port, started(proc, "127.0.0.1", port), sslmode="require" if tls else None)


def start_haproxy(bc: BenchCluster, work: Path) -> Target:
    port = free_port()
    host, server_port = bc.primary
    cfg = work / "haproxy.cfg"
    cfg.write_text(
        f"global\n  maxconn 8000\n\ndefaults\n  mode tcp\n  timeout connect 5s\n"
        f"  timeout client 1h\n  timeout server 1h\n\nfrontend pg\n  bind 127.0.0.1:{port}\n"
        f"  default_backend primary\n\nbackend primary\n  server n1 {host}:{server_port}\n"
    )
    proc = subprocess.Popen(
        [shutil.which("haproxy", path=_SBIN_PATH), "-db", "-f", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "haproxy.log", "w"),
    )
    return Target("haproxy", "127.0.0.1", port, started(proc, "127.0.0.1", port))
