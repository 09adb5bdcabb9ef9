"""ServerProtocol: the connection to a node during authentication, until the first ReadyForQuery."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..topology import NodeState
from ..wire import BackendKeyData, Framer, RemoteProtocolError, decode_backend

if TYPE_CHECKING:
    from .client import ClientProtocol

MAX_AUTH_MESSAGE = 1 << 20  # no message during startup is anywhere near this


class ServerProtocol(asyncio.Protocol):
    """Forwards every byte to the client unchanged, reading headers only to learn the cancel key."""

    def __init__(self, client: "ClientProtocol", node: NodeState) -> None:
        self.client, self.node = client, node
        self.transport: asyncio.Transport | None = None
        self.framer = Framer(max_message=MAX_AUTH_MESSAGE)
        self.cancel_key: tuple[int, bytes] | None = None
        self.saw_error = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.framer.feed(data)
        try:
            while (frame := self.framer.next_frame()) is not None:
                if frame.type == b"K":
                    key = decode_backend(frame.type, frame.payload)
                    assert isinstance(key, BackendKeyData)
                    self.cancel_key = (key.process_id, key.secret_key)
                elif frame.type == b"E":
                    self.saw_error = True
                elif frame.type == b"Z":
                    # Nothing may follow ReadyForQuery for the session to go to the kernel relay.
                    self.client.established(self, data, offload=self.framer.pending == 0)
                    return
        except RemoteProtocolError as exc:
            self.client.transport.write(data)
            self.client.fail(exc.sqlstate, f"invalid data from node {self.node.name}: {exc.message}")
            return
        self.client.transport.write(data)

    def pause_writing(self) -> None:
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.server_lost(self)
