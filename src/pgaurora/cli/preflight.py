"""Before `pgaurora up` makes anything: is every address and port it will listen on free, and who holds it?"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from ..service.admin import client as admin_client


@dataclass(frozen=True, slots=True)
class Wanted:
    """An address pgaurora is about to listen on (the config's own is core.config.Listen)."""

    what: str  # "node n1", "writer endpoint", ...
    host: str
    port: int
    flag: str  # the option that moves it
    udp: bool = False


def _taken(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers themselves bind
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _pgaurora_at(host: str, port: int) -> str | None:
    """'another pgaurora (cluster X, pid N)' if an admin endpoint answers there."""
    try:
        doc = admin_client.call(f"http://{host}:{port}", "/status", timeout=1)
        return f"another pgaurora (cluster {doc['cluster']!r}, pid {doc['pid']})"
    except admin_client.AdminError as exc:  # one whose token this user does not hold
        return "another pgaurora" if exc.status in (401, 403) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _speaks_postgres(host: str, port: int) -> bool:
    """Does the listener answer an SSLRequest as PostgreSQL does (one byte, S or N)?"""
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
            return s.recv(1) in (b"S", b"N")
    except OSError:
        return False


def _holder(listen: Wanted, admin: tuple[str, int] | None) -> str:
    if not listen.udp and _speaks_postgres(listen.host, listen.port):
        found = _pgaurora_at(*admin) if admin else None
        return f"a PostgreSQL server or proxy{f'; {found} runs here' if found else ''}"
    if listen.what == "admin endpoint":
        return _pgaurora_at(listen.host, listen.port) or "another program"
    return "another program"


def conflicts(listens: list[Wanted], admin: tuple[str, int] | None = None) -> list[str]:
    """One line per address that cannot be bound: what needs it, what holds it, and the flag that moves it."""
    problems = []
    for listen in listens:
        kinds = (socket.SOCK_DGRAM, socket.SOCK_STREAM) if listen.udp else (socket.SOCK_STREAM,)
        if any(_taken(listen.host, listen.port, kind) for kind in kinds):
            problems.append(
                f"{listen.what} needs {listen.host}:{listen.port}, which is in use by "
                f"{_holder(listen, admin)}; choose another with {listen.flag}"
            )
    return problems
