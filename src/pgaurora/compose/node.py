"""One local PostgreSQL server: its directories, configuration and process control."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from ..core.errors import ClusterError
from .runas import OsUser

_AUTO_CONF = "postgresql.auto.conf"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _family(pid: int) -> list[int]:
    """A postmaster and its children (each child runs in a session of its own, so not its group)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        children.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                pass
    return [pid, *children]


def quote(value: object) -> str:
    """A value as a postgresql.conf / SQL literal."""
    return "'" + str(value).replace("'", "''") + "'"


class LocalNode:
    """A PostgreSQL server with its own data directory, socket directory and loopback address."""

    def __init__(self, name: str, host: str, port: int, root: Path, bindir: str, user: OsUser) -> None:
        self.name, self.host, self.port = name, host, port
        self.home = root / name
        self.datadir = self.home / "data"
        self.sockdir = self.home / "sock"
        self.logfile = self.home / "postgres.log"
        self.bindir, self.user = bindir, user
        self._proc: subprocess.Popen | None = None
        self.held = False  # stopped on purpose (by this process): self-healing leaves it alone
        self.last_exit: int | None = None  # the exit status of the last postmaster this process reaped
        self._control = threading.RLock()  # start and stop, one at a time (the supervisor and operations)

    def __repr__(self) -> str:
        return f"LocalNode({self.name} {self.host}:{self.port})"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def bin(self, program: str) -> str:
        return os.path.join(self.bindir, program)

    def run_tool(self, argv: list[str], *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run one of PostgreSQL's programs for this node, as the server's OS user."""
        return self.user.run(argv, check=check, timeout=timeout)

    # -- process control -------------------------------------------------
    @property
    def pid(self) -> int | None:
        """PID of the running postmaster, or None."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def exists(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def start(self, timeout: float = 60) -> None:
        """Start the postmaster as our child (so we reap it) and wait until it accepts connections.
        One start or stop at a time in this process; a start that loses the race to another process is no
        error. The node counts as stopped on purpose (held) until the start is over, whatever its end."""
        with self._control:
            try:
                self._start(timeout)
            finally:
                self.held = False

    def _start(self, timeout: float) -> None:
        if self.running:
            return
        if self._proc is not None and self._proc.poll() is not None:  # reap a postmaster that crashed
            self._proc = None
        self.last_exit = None
        with open(self.logfile, "ab") as log:
            kwargs: dict[str, Any] = (
                {} if self.user.is_self else {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}
            )
            self._proc = subprocess.Popen(
                [self.bin("postgres"), "-D", str(self.datadir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd="/",
                **kwargs,
            )
        deadline = time.monotonic() + timeout
        while self.pid != self._proc.pid or self._status() not in ("ready", "standby"):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._reap(kill=True)
                if self.running and self._status() in ("ready", "standby"):
                    return  # another process started it meanwhile
                raise ClusterError(f"node {self.name} did not start; last log lines:\n{self.log_tail()}")
            time.sleep(0.02)

    def _status(self) -> str:
        """The postmaster's own status line in postmaster.pid ('starting', 'ready', 'standby', ...)."""
        try:
            lines = (self.datadir / "postmaster.pid").read_text().split("\n")
        except FileNotFoundError:
            return "stopped"
        return lines[7].strip() if len(lines) > 7 else "starting"

    def _reap(self, kill: bool = False, timeout: float = 10) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill and proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.last_exit = proc.returncode

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        with self._control:
            self._stop(mode, timeout)

    def _stop(self, mode: str, timeout: float) -> None:
        self.held = True  # stopped on purpose: not a crash to heal
        if not self.running:
            self._reap()
            return
        self.user.run(
            [self.bin("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", str(int(timeout)), "stop"],
            timeout=timeout + 10,
            check=False,
        )
        if self.running:
            raise ClusterError(f"node {self.name} did not stop within {timeout:.0f} s")
        self._reap()

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would; its children then exit on their own."""
        pid = self.pid
        if pid is None:
            self._reap()
            return
        family = _family(pid)
        os.kill(pid, signal.SIGKILL)
        self._reap()
        self._wait_gone(family, timeout=10)

    def release_shared_memory(self) -> bool:
        """After a crash, drop the SysV segment the dead postmaster left (postmaster.pid names it): a node that
        is killed and never started again leaks one, and the kernel allows 4096 (initdb then fails with
        "could not create shared memory segment"). Only the very segment, and only once nothing uses it."""
        if self.running:
            return False
        try:
            fields = (self.datadir / "postmaster.pid").read_text().split("\n")[6].split()
            key, shmid = int(fields[0]), int(fields[1])
        except (FileNotFoundError, IndexError, ValueError):
            return False
        return _remove_segment(key, shmid)

    def pause(self) -> None:
        """SIGSTOP the postmaster and every child of it, like a frozen host."""
        self._signal_family(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_family(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _signal_family(self, sig: int) -> None:
        pid = self.pid
        if pid is None:
            raise ClusterError(f"node {self.name} is not running")
        for member in _family(pid):  # the postmaster first, so it forks nothing meanwhile
            try:
                os.kill(member, sig)
            except ProcessLookupError:
                pass

    @staticmethod
    def _wait_gone(pids: list[int], timeout: float) -> None:
        """Wait until the killed postmaster's children have exited (its shared memory is then free)."""
        deadline = time.monotonic() + timeout
        while alive := [p for p in pids if _alive(p)]:
            if time.monotonic() > deadline:
                for p in alive:
                    os.kill(p, signal.SIGKILL)
            time.sleep(0.02)

    def exit_reason(self) -> str:
        """How the postmaster ended, when it was this process's child; else that it is gone."""
        code = self._proc.poll() if self._proc is not None else self.last_exit
        if code is None:
            return "is not running" if not (self.datadir / "postmaster.pid").exists() else "exited"
        return f"exited (signal {-code})" if code < 0 else f"exited (exit code {code})"

    def finish_crash_recovery(self) -> bool:
        """Run the crash recovery a crash left owing, alone (single-user mode), so that the data directory
        is shut down cleanly as pg_rewind needs. True when there was one to run."""
        out = self.run_tool([self.bin("pg_controldata"), "-D", str(self.datadir)], check=False).stdout
        if not re.search(r"Database cluster state:\s+in (production|crash recovery)", out):
            return False
        self.run_tool([self.bin("postgres"), "--single", "-F", "-D", str(self.datadir), "postgres"], timeout=600)
        return True

    def checkpoint_lsn(self) -> int:
        """Latest checkpoint location from pg_control (read while the node is stopped)."""
        out = self.run_tool([self.bin("pg_controldata"), "-D", str(self.datadir)]).stdout
        match = re.search(r"Latest checkpoint location:\s+([0-9A-F]+)/([0-9A-F]+)", out)
        if not match:
            raise ClusterError(f"pg_controldata of {self.name} shows no checkpoint location")
        return (int(match.group(1), 16) << 32) | int(match.group(2), 16)

    def stopped_as_primary(self) -> bool:
        """Was this stopped node a primary when it stopped (pg_control's state: not 'in recovery')?"""
        out = self.run_tool([self.bin("pg_controldata"), "-D", str(self.datadir)]).stdout
        state = re.search(r"Database cluster state:\s+(.+)", out)
        return state is not None and state.group(1).strip() == "shut down"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # -- SQL and configuration ---------------------------------------------
    def sql(self, query: str, timeout: float = 60) -> str:
        """Run SQL over the node's unix socket as the superuser; returns unaligned output."""
        result = subprocess.run(
            [
                self.bin("psql"),
                "-h",
                str(self.sockdir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                query,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise ClusterError(f"SQL on {self.name} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def write_node_conf(self, cluster: str, extra: str = "") -> None:
        """Settings that differ per node (and `extra` ones); postgresql.conf includes this file."""
        conf = (
            f"listen_addresses = {quote(self.host)}\nport = {self.port}\n"
            f"unix_socket_directories = {quote(self.sockdir)}\n"
            f"cluster_name = {quote(cluster + '-' + self.name)}\n{extra}"
        )
        self._write(self.datadir / "node.conf", conf)

    def set_auto_conf(self, **settings: object) -> None:
        """Edit postgresql.auto.conf while the node is stopped (ALTER SYSTEM needs it running)."""
        path = self.datadir / _AUTO_CONF
        lines = path.read_text().splitlines() if path.exists() else []
        keep = [line for line in lines if not any(re.match(rf"\s*{k}\s*=", line) for k in settings)]
        keep += [f"{k} = {quote(v)}" for k, v in settings.items() if v is not None]
        self._write(path, "\n".join(keep) + "\n")

    def auto_conf(self) -> str:
        path = self.datadir / _AUTO_CONF
        return path.read_text() if path.exists() else ""

    def replace_auto_conf(self, text: str) -> None:
        """Put back postgresql.auto.conf as auto_conf() read it (while the node is stopped)."""
        self._write(self.datadir / _AUTO_CONF, text)

    def make_standby(self, conninfo: str) -> None:
        self.set_auto_conf(primary_conninfo=conninfo, primary_slot_name=self.name)
        self._write(self.datadir / "standby.signal", "")

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        os.chmod(path, 0o600)
        self.user.chown(str(path))


def _remove_segment(key: int, shmid: int) -> bool:
    """IPC_RMID the SysV segment shmid if it still has this key and no process attached."""
    try:
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return False
    for row in rows:
        cols = row.split()
        if int(cols[1]) == shmid and int(cols[0]) == key and int(cols[6]) == 0:
            return ctypes.CDLL(None, use_errno=True).shmctl(shmid, 0, None) == 0  # 0: IPC_RMID
    return False
