"""free_ports: distinct ports, each free to bind when handed out."""

from __future__ import annotations

import socket

from pgaurora.compose.ports import free_ports


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(64)
    assert len(set(ports)) == 64
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
