"""Differential testing of the startup path (issue 24): for the same bytes, pgaurora's passthrough endpoint
answers as PostgreSQL itself does (both without TLS): S or N, an ErrorResponse and its SQLSTATE, an
authentication request, or a close. Where it differs on purpose, DIFFERENT says why."""

from __future__ import annotations

import socket
import time

import pytest

pytestmark = pytest.mark.integration


def _packet(code: int, body: bytes = b"") -> bytes:
    return (len(body) + 8).to_bytes(4, "big") + code.to_bytes(4, "big") + body


def _startup(*pairs: str, version: int = 196608) -> bytes:
    body = b"".join(p.encode() + b"\0" for p in pairs) + b"\0"
    return _packet(version, body)


SSL, GSS = _packet(80877103), _packet(80877104)

CASES = {
    "startup": _startup("user", "postgres", "database", "postgres"),
    "startup with options": _startup("user", "postgres", "options", "-c work_mem=8MB"),
    "ssl request alone": SSL,
    "ssl request pipelined with a startup": SSL + _startup("user", "postgres"),
    "gss request then startup": GSS + _startup("user", "postgres"),
    "two ssl requests": SSL + SSL,
    "no user": _startup("database", "postgres"),
    "protocol 2": _startup("user", "postgres", version=131072),
    "protocol 4": _startup("user", "postgres", version=262144),
    "length below 8": b"\x00\x00\x00\x04",
    "length too large": (20000).to_bytes(4, "big") + (196608).to_bytes(4, "big") + b"x" * 100,
    "unterminated parameters": _packet(196608, b"user\0postgres"),
    "a value without a name's end": _packet(196608, b"user\0postgres\0database\0"),
    "cancel with an unknown key": _packet(80877102, (12345).to_bytes(4, "big") + b"abcd"),
    "cancel too short": _packet(80877102, b"ab"),
    "garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}

# (case): why pgaurora's answer differs from PostgreSQL's, on purpose
DIFFERENT = {
    "gss request then startup": "pgaurora does not offer GSS encryption and answers N, as a PostgreSQL built "
    "without GSSAPI does; Debian's is built with it and answers G",
    "protocol 2": "pgaurora refuses protocol 2 with 0A000 in protocol 3's format; PostgreSQL writes that error "
    "in protocol 2's format, which no client in use since PostgreSQL 14 dropped protocol 2 still reads",
    "length below 8": "pgaurora says why it closes (08P01, invalid length); PostgreSQL closes without a word "
    "and writes the reason to its own log only",
    "length too large": "as for a length below 8: 08P01 rather than a silent close",
    "cancel too short": "as for a length below 8: 08P01 rather than a silent close",
    "garbage": "as for a length below 8: an HTTP request gets 08P01 rather than a silent close",
}


def _answer(address: tuple[str, int], data: bytes) -> str:
    """What comes back first: 'S', 'N', 'R' (an authentication request), 'E <SQLSTATE>', 'close' or 'silence'."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(data)
        received, deadline = b"", time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(4096)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
            if _classified(received, data) is not None:
                break
    return _classified(received, data) or ("close" if not received else "silence")


def _classified(received: bytes, sent: bytes) -> str | None:
    answers = []
    while received:
        if received[:1] in (b"S", b"N") and (len(received) == 1 or received[1:2] in (b"E", b"R", b"S", b"N")):
            answers.append(received[:1].decode())
            received = received[1:]
            continue
        if len(received) < 5 or len(received) < 1 + int.from_bytes(received[1:5], "big"):
            return None
        size = int.from_bytes(received[1:5], "big")
        kind, payload, received = received[:1], received[5 : 1 + size], received[1 + size :]
        if kind == b"E":
            code = next((f[1:].decode() for f in payload.split(b"\0") if f[:1] == b"C"), "?")
            answers.append(f"E {code}")
        elif kind == b"R":
            answers.append("R")
        else:
            answers.append(kind.decode(errors="replace"))
        return " ".join(answers)
    settled = answers and answers[-1] in ("S", "N") and sent in (SSL, GSS)  # nothing more was sent: no more comes
    return " ".join(answers) if settled else None


@pytest.mark.parametrize("case", sorted(CASES))
def test_pgaurora_answers_the_startup_as_postgresql_does(proxy, cluster, case):
    direct = _answer((cluster.primary.host, cluster.primary.port), CASES[case])
    through = _answer(proxy.writer, CASES[case])
    if case in DIFFERENT:
        assert through != direct, f"{case}: documented as different, but both answer {direct!r}"
    else:
        assert through == direct, f"{case}: PostgreSQL answers {direct!r}, pgaurora {through!r}"
