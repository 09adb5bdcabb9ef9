"""The established-session path: bytes relayed unparsed, by C threads, the kernel (sockmap) or two Python Pipes."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..wire import error_response

if TYPE_CHECKING:
    from .native import NativeRelay
    from .sockmap import SockMap
    from .state import CancelKey, ProxyState, Seat

log = logging.getLogger("pgaurora.proxy")
_RFQ_HEAD = b"Z\x00\x00\x00\x05"


class Pipe(asyncio.Protocol):
    """Receives on one transport and writes straight to the peer's; no parsing, no copies.

    When our own transport's write buffer fills (pause_writing), the peer stops reading,
    so a slow reader never makes the proxy buffer without bound. With the kernel relay,
    bytes bypass this class; it then only sees end-of-stream and errors.
    """

    __slots__ = ("peer", "session", "transport")

    def __init__(self, session: Session, transport: asyncio.Transport) -> None:
        self.session, self.transport = session, transport
        self.peer: asyncio.Transport = None  # type: ignore[assignment]  # set by Session before the pipe reads

    def data_received(self, data: bytes) -> None:
        self.peer.write(data)

    def eof_received(self) -> bool:
        return False  # a half-close ends the session

    def pause_writing(self) -> None:
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.lost(self, exc)


class ServerPipe(Pipe):
    """The server side also keeps a reference to its last chunk (no copy), to find message boundaries."""

    __slots__ = ("last",)

    def __init__(self, session: Session, transport: asyncio.Transport) -> None:
        super().__init__(session, transport)
        self.last = _RFQ_HEAD + b"I"  # sessions start right after ReadyForQuery

    def data_received(self, data: bytes) -> None:
        self.peer.write(data)
        self.last = data


class Session:
    """One client connection relayed to one server connection on one node."""

    __slots__ = (
        "__weakref__",
        "cancel_key",
        "client",
        "closed",
        "cookies",
        "kind",
        "native_id",
        "node",
        "seat",
        "server",
        "state",
    )

    def __init__(
        self, node: str, kind: str, state: ProxyState, client: asyncio.Transport, server: asyncio.Transport
    ) -> None:
        self.node, self.kind, self.state = node, kind, state
        self.client, self.server = Pipe(self, client), ServerPipe(self, server)
        self.client.peer, self.server.peer = server, client
        self.cancel_key: CancelKey | None = None
        self.closed = False
        self.cookies: tuple[int, int] | None = None  # (client, server) socket cookies in the kernel relay
        self.native_id: int | None = None  # the session's id in the native relay
        self.seat: Seat | None = None  # what the connection limits count of its client

    @property
    def lost_reason(self) -> tuple[str, str]:
        """(SQLSTATE, message) the client gets when the server goes away between messages."""
        return "08006", f"connection to node {self.node} was lost"

    @property
    def offloaded(self) -> bool:
        return self.cookies is not None or self.native_id is not None

    def start(
        self,
        cancel_key: CancelKey | None,
        address: tuple[str, int],
        offload: bool,
        ready: bytes,
        encrypted: bool = False,
    ) -> None:
        """Swap both transports onto the Pipes, pass the server's `ready` bytes (ending with the first
        ReadyForQuery) to the client and, when allowed, hand the session to the native or kernel relay.

        Until the client has that ReadyForQuery it sends nothing, so no byte can be left behind in user
        space: the kernel takes over just before it is written, the C threads once it was written whole.
        An `encrypted` session (TLS on either leg) can go to the C threads, never to the kernel.
        """
        self.state.session_started(self)
        if cancel_key is not None:
            self.state.learned_cancel_key(self, cancel_key, address)
        self.client.transport.set_protocol(self.client)
        self.server.transport.set_protocol(self.server)
        if offload and not encrypted and self.state.sockmap is not None:
            self._offload()
        self.client.transport.write(ready)
        if offload and self.state.native is not None and not self.client.transport.get_write_buffer_size():
            self.native_id = self.state.native.adopt(self)

    def _offload(self) -> None:
        client_sock = self.client.transport.get_extra_info("socket")
        server_sock = self.server.transport.get_extra_info("socket")
        try:
            self.cookies = self._kernel.splice(client_sock, server_sock, self.state.both_ways)
        except OSError as exc:
            log.warning("kernel relay refused a session (%s); relaying it in Python", exc)

    @property
    def _kernel(self) -> SockMap:
        """The kernel relay: a session has its cookies only where it exists."""
        if self.state.sockmap is None:
            raise RuntimeError("no kernel relay")
        return self.state.sockmap

    @property
    def _native(self) -> NativeRelay:
        """The relay threads: a session has a native id only where they exist."""
        if self.state.native is None:
            raise RuntimeError("no native relay")
        return self.state.native

    def at_message_boundary(self) -> bool:
        """Did the server's last bytes end with ReadyForQuery? Then an ErrorResponse can be injected safely."""
        if self.cookies is not None and self.state.both_ways:
            kernel = self._kernel.ended_with_ready_for_query(self.cookies[1])
            if kernel is not None:
                return kernel
        last = self.server.last
        return len(last) >= 6 and last[-6:-1] == _RFQ_HEAD

    def terminate(self, sqlstate: str, message: str) -> None:
        """Close the session, telling the client why when the stream allows it."""
        if self.closed:
            return
        if self.native_id is not None:
            self._native.terminate(self.native_id, sqlstate, message)
        elif self.at_message_boundary() and not self.client.transport.is_closing():
            self.client.transport.write(error_response(sqlstate, message))
        self._close()

    def relay_ended(self) -> None:
        """The native relay saw either side close (and told the client, if the server went away)."""
        if not self.closed:
            self._close()

    def lost(self, pipe: Pipe, exc: Exception | None) -> None:
        if self.closed:
            return
        if pipe is self.server:
            self.terminate(*self.lost_reason)
        else:
            self._close()

    def _close(self) -> None:
        self.closed = True
        self.state.session_ended(self)
        self.state.client_closed(self.seat)
        if self.cookies is not None:
            self._kernel.forget(*self.cookies)
        for pipe in (self.client, self.server):
            if not pipe.transport.is_closing():
                pipe.transport.close()
