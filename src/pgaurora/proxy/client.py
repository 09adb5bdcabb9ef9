"""ClientProtocol: glue for one client connection until its session is established."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..errors import ProxyError
from ..wire import (
    NEED_DATA,
    CancelRequest,
    GSSENCRequest,
    RemoteProtocolError,
    SSLRequest,
    StartupDecoder,
    StartupMessage,
    error_response,
)
from .relay import Session

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .upstream import ServerProtocol

log = logging.getLogger("pgaurora.proxy")


class ClientProtocol(asyncio.Protocol):
    """Reads the startup packet (deadline, size limit), routes, then hands the bytes to a Session."""

    def __init__(self, endpoint: "Endpoint") -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.decoder = StartupDecoder()
        self.server: "ServerProtocol | None" = None
        self.pending = b""  # bytes for the server that arrived before it was connected
        self.task: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.session: Session | None = None

    # -- asyncio callbacks ---------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.endpoint.state.client_opened()
        timeout = self.endpoint.config.proxy.startup_timeout
        self.timer = asyncio.get_running_loop().call_later(timeout, self._startup_timeout)

    def data_received(self, data: bytes) -> None:
        if self.server is not None:
            self.server.transport.write(data)  # authentication exchange
        elif self.task is not None:
            self.pending += data
        else:
            self._read_startup(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            return  # the Session owns the transport now
        self.endpoint.state.client_closed()
        self._cancel_timer()
        if self.task is not None:
            self.task.cancel()
        if self.server is not None and self.server.transport is not None:
            self.server.transport.close()

    # -- startup phase ----------------------------------------------------------------
    def _read_startup(self, data: bytes) -> None:
        self.decoder.feed(data)
        try:
            while (event := self.decoder.next_event()) is not NEED_DATA:
                match event:
                    case SSLRequest() | GSSENCRequest():
                        self.transport.write(b"N")  # TLS and GSS encryption come later
                    case CancelRequest():
                        self._start(self._cancel(event))
                        return
                    case StartupMessage():
                        self.pending = self.decoder.raw + self.decoder.take_rest()
                        self._start(self._connect())
                        return
        except RemoteProtocolError as exc:
            self.fail(exc.sqlstate, exc.message)

    def _start(self, coro) -> None:
        self._cancel_timer()
        self.transport.pause_reading()
        self.task = asyncio.get_running_loop().create_task(coro)

    async def _cancel(self, event: CancelRequest) -> None:
        try:
            await self.endpoint.forward_cancel(event)
        finally:
            self.transport.close()

    async def _connect(self) -> None:
        try:
            server = await self.endpoint.open_upstream(self)
        except ProxyError as exc:
            self.fail(exc.sqlstate, exc.message, exc.detail)
            return
        if self.transport.is_closing():
            server.transport.close()
            return
        self.server = server
        server.transport.write(self.pending)
        self.pending = b""
        self.transport.resume_reading()

    # -- events from the server side -------------------------------------------------------
    def established(self, server: "ServerProtocol", data: bytes, offload: bool) -> None:
        """First ReadyForQuery: hand both transports to a Session that relays unparsed, then pass
        the server's last bytes (ending with ReadyForQuery) to the client."""
        session = Session(server.node.name, self.endpoint.kind.value, self.endpoint.state,
                          self.transport, server.transport)
        self.session = session
        session.start(server.cancel_key, (server.node.host, server.node.port), offload, data)
        self.endpoint.watch(session)

    def server_lost(self, server: "ServerProtocol") -> None:
        if self.session is not None or self.transport.is_closing():
            return
        if server.saw_error:  # e.g. authentication failed: the FATAL was forwarded already
            self.transport.close()
        else:
            self.fail("08006", f"connection to node {server.node.name} was lost during startup")

    # -- endings ------------------------------------------------------------------------------
    def fail(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        """Send an ErrorResponse and close: a client never sees a silently dropped socket."""
        if not self.transport.is_closing():
            self.endpoint.state.refused(sqlstate)
            self.transport.write(error_response(sqlstate, message, detail=detail))
            self.transport.close()
        if self.server is not None and self.server.transport is not None:
            self.server.transport.close()

    def _startup_timeout(self) -> None:
        self.timer = None
        self.fail("08P01", "timeout while waiting for the startup packet")

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
