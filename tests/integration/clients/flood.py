"""Load for the limits test, run in its own process so that it does not share pgaurora's interpreter.

    flood.py attempts HOST PORT SOURCE COUNT SECONDS -> connection attempts from one source address
    flood.py status URL SECONDS                           -> /status latencies, polled every 20 ms

Each prints one JSON document. An attempt sends a StartupMessage and reads the first answer: an
ErrorResponse counts by its SQLSTATE, an authentication request as admitted (held open until the end).
"""

from __future__ import annotations

import json
import socket
import sys
import time

from pgaurora.service.admin.client import call

STARTUP = b"\x00\x03\x00\x00user\x00postgres\x00database\x00postgres\x00\x00"
STARTUP = (len(STARTUP) + 4).to_bytes(4, "big") + STARTUP


def _sqlstate(payload: bytes) -> str:
    for field in payload.split(b"\x00"):
        if field[:1] == b"C":
            return field[1:].decode()
    return "?"


def _attempt(address: tuple[str, int], source: str) -> tuple[str, socket.socket]:
    sock = socket.socket()
    sock.settimeout(20)
    try:
        sock.bind((source, 0))
        sock.connect(address)
        sock.sendall(STARTUP)
        head = sock.recv(5, socket.MSG_WAITALL)
        body = sock.recv(int.from_bytes(head[1:5], "big") - 4, socket.MSG_WAITALL) if len(head) == 5 else b""
    except OSError as exc:
        return f"error: {exc.__class__.__name__}", sock
    if len(head) < 5:
        return "closed", sock
    return ("admitted" if head[:1] == b"R" else _sqlstate(body) if head[:1] == b"E" else "other"), sock


def attempts(host: str, port: int, source: str, count: int, seconds: float) -> dict:
    """One attempt after another, spread evenly over seconds, with plain blocking sockets: the cheapest flood
    this process can make, so that on a small machine it takes as little as it can from what it is measured
    against."""
    held: list[socket.socket] = []
    outcome: dict = {}
    started = time.monotonic()
    for number in range(count):
        ahead = started + number * seconds / count - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        key, sock = _attempt((host, port), source)
        outcome[key] = outcome.get(key, 0) + 1
        if key == "admitted":
            held.append(sock)
        else:
            sock.close()
    outcome["seconds"] = round(time.monotonic() - started, 3)
    for sock in held:
        sock.close()
    return outcome


def status(url: str, seconds: float) -> dict:
    latencies, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        call(url, "/status", timeout=10)
        latencies.append(time.monotonic() - started)
        time.sleep(0.02)
    latencies.sort()
    return {"count": len(latencies), "p99": latencies[int(len(latencies) * 0.99)], "max": latencies[-1]}


if __name__ == "__main__":
    if sys.argv[1] == "attempts":
        host, port, source, count, seconds = sys.argv[2:7]
        print(json.dumps(attempts(host, int(port), source, int(count), float(seconds))))
    else:
        print(json.dumps(status(sys.argv[2], float(sys.argv[3]))))
