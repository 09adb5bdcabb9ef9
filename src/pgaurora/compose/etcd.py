"""EtcdCluster: etcd members as local processes, one loopback address each, for demos and tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ClusterError
from .certs import CertAuthority

CLIENT_PORT, PEER_PORT = 2379, 2380


def find_etcd() -> str:
    path = shutil.which("etcd") or shutil.which("etcd", path="/usr/bin:/usr/local/bin")
    if path is None:
        raise ClusterError("etcd is not installed: on Debian, apt-get install etcd-server")
    return path


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class EtcdMember:
    name: str
    host: str
    data_dir: Path
    client_port: int = CLIENT_PORT
    peer_port: int = PEER_PORT
    proc: subprocess.Popen | None = None
    scheme: str = "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """Members on consecutive loopback addresses from `base_address`; start() waits until each answers."""

    def __init__(
        self,
        root: str | Path,
        size: int = 3,
        base_address: str = "127.0.0.51",
        client_port: int = CLIENT_PORT,
        peer_port: int = PEER_PORT,
        authority: CertAuthority | None = None,
    ) -> None:
        """With an authority: TLS between members and to clients, and clients must present a certificate
        it signed (`client_certificate()` makes one)."""
        self.root = Path(root)
        first = [int(x) for x in base_address.split(".")]
        scheme = "https" if authority else "http"
        self.members = [
            EtcdMember(
                f"e{i + 1}",
                ".".join(map(str, [*first[:3], first[3] + i])),
                self.root / f"e{i + 1}",
                client_port,
                peer_port,
                scheme=scheme,
            )
            for i in range(size)
        ]
        self.authority = authority
        self.binary = find_etcd()

    def client_certificate(self, name: str) -> tuple[Path, Path]:
        """A client certificate etcd admits (cert file, key file), from the cluster's authority."""
        if self.authority is None:
            raise ClusterError("this etcd cluster runs without TLS")
        return self.authority.issue(name, [name], self.root / "tls", client=True)

    def _tls_flags(self) -> list[str]:
        if self.authority is None:
            return []
        cert, key = self.root / "tls" / "etcd.crt", self.root / "tls" / "etcd.key"
        if not cert.exists():  # once: members restarted later keep reading the same files
            cert, key = self.authority.issue(
                "etcd", [m.host for m in self.members] + ["127.0.0.1"], self.root / "tls", client=True
            )
        ca = str(self.authority.cert_file)
        return [
            "--cert-file",
            str(cert),
            "--key-file",
            str(key),
            "--trusted-ca-file",
            ca,
            "--client-cert-auth",
            "--peer-cert-file",
            str(cert),
            "--peer-key-file",
            str(key),
            "--peer-trusted-ca-file",
            ca,
            "--peer-client-cert-auth",
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def _command(self, member: EtcdMember, state: str) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            self.binary,
            "--name",
            member.name,
            "--data-dir",
            str(member.data_dir),
            "--listen-client-urls",
            member.client_url,
            "--advertise-client-urls",
            member.client_url,
            "--listen-peer-urls",
            member.peer_url,
            "--initial-advertise-peer-urls",
            member.peer_url,
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            f"pgaurora-{self.root.name}",
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
            "--log-level",
            "warn",
            *self._tls_flags(),
        ]

    def start(self, timeout: float = 30) -> None:
        busy = [m.client_url for m in self.members if not m.running and _listening(m.host, m.client_port)]
        if busy:
            raise ClusterError(f"something already listens on {', '.join(busy)}: another etcd? choose other addresses")
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            for member in self.members:
                if not member.running:
                    self.start_member(member.name, wait=False)
            for member in self.members:
                self._wait(member, timeout)
        except BaseException:
            self.stop()  # nothing half-started stays behind
            raise

    def start_member(self, name: str, wait: bool = True) -> None:
        member = self.member(name)
        state = "existing" if (member.data_dir / "member").exists() else "new"
        log = open(self.root / f"{member.name}.log", "a")
        member.proc = subprocess.Popen(
            self._command(member, state), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        if wait:
            self._wait(member, 30)

    def _wait(self, member: EtcdMember, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not member.running:
                raise ClusterError(f"etcd member {member.name} exited: see {self.root / (member.name + '.log')}")
            if _listening(member.host, member.client_port):
                return
            time.sleep(0.05)
        raise ClusterError(f"etcd member {member.name} did not listen on {member.client_url} in {timeout:.0f} s")

    def member(self, name: str) -> EtcdMember:
        for member in self.members:
            if member.name == name:
                return member
        raise ClusterError(f"no etcd member named {name!r}")

    def stop_member(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop one member by its PID (SIGKILL to crash it, SIGSTOP to freeze it)."""
        member = self.member(name)
        if member.proc is None or member.proc.poll() is not None:
            return
        member.proc.send_signal(sig)
        if sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                member.proc.wait(10)
            except subprocess.TimeoutExpired:
                member.proc.kill()
                member.proc.wait()

    def stop(self) -> None:
        for member in self.members:
            if member.proc is not None and member.proc.poll() is None:
                os.kill(member.proc.pid, signal.SIGCONT)  # a frozen member must be able to exit
                self.stop_member(member.name)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
