"""ClientProtocol: glue for one client connection until its session is established."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from ..core.config import PoolMode
from ..core.errors import ProxyError
from ..core.sslcontexts import ALPN
from ..wire import (
    NEED_DATA,
    CancelRequest,
    GSSENCRequest,
    RemoteProtocolError,
    SSLRequest,
    StartupDecoder,
    StartupMessage,
    error_response,
    sasl_initial_flag,
)
from .pooled import PooledClient, PoolGate, startup_settings
from .relay import Session
from .split import CONSISTENCIES, LSN_HINT, parse_lsn
from .tls import TLS_HANDSHAKE_RECORD, TlsTransport

if TYPE_CHECKING:
    from ..core.config import Config
    from ..core.sslcontexts import Contexts
    from ..wire import CancelRequest
    from .state import ProxyState, Seat
    from .upstream import ServerProtocol


class Gate(PoolGate, Protocol):
    """What a client connection uses of the endpoint it arrived on (endpoint.Endpoint)."""

    name: str
    config: Config
    state: ProxyState
    tls: Contexts | None

    def admits(self, peer: str) -> bool: ...

    async def open_upstream(self, client: ClientProtocol) -> ServerProtocol: ...

    async def forward_cancel(self, event: CancelRequest) -> None: ...

    def watch(self, session: Session) -> None: ...

    @property
    def starting(self) -> set[ClientProtocol]: ...


log = logging.getLogger("pgaurora.proxy")
MAX_REROUTED = 64 * 1024  # bytes of a startup kept to send again elsewhere (a startup packet is far smaller)


class ClientProtocol(asyncio.Protocol):
    """Reads the startup packet (deadline, size limit), routes, then hands the bytes to a Session."""

    def __init__(self, endpoint: Gate) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made(), which asyncio calls first
        self.decoder = StartupDecoder()
        self.server: ServerProtocol | None = None
        self.pending = b""  # bytes for the server that arrived before it was connected
        self.task: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.session: Session | None = None
        self.tls: TlsTransport | None = None
        self.certificate: bytes | None = None  # DER of the certificate this client's handshake used
        self.disallowed = False  # refused by the endpoint's allow-list: closed at once
        self.pooled: PooledClient | None = None  # on a pooled endpoint, after the startup packet
        self.seat: Seat | None = None  # what the connection limits count of it
        self.forwarded = b""  # what went to the node before it answered: sent again if the startup moves
        self.min_lsn: int | None = None  # the reader endpoint: a replica must have replayed past it

    # -- asyncio callbacks ---------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # a stream's Transport
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if not self.endpoint.admits(peer[0] if peer else ""):
            self.disallowed = True
            transport.abort()  # closed before a byte is read or written, as a security group drops it
            return
        self.seat = self.endpoint.state.client_opened(peer[0] if peer else "")
        timeout = self.endpoint.config.proxy.startup_timeout
        self.timer = asyncio.get_running_loop().call_later(timeout, self._startup_timeout)

    def data_received(self, data: bytes) -> None:
        if self.pooled is not None:
            self.pooled.from_client(data)
        elif self.server is not None:
            if self.tls is not None and not self._binding_refused(self.server, data):
                return
            if not self.server.answered and len(self.forwarded) < MAX_REROUTED:
                self.forwarded += data  # beyond MAX_REROUTED it is not kept: such a startup cannot move
            self.server.transport.write(data)  # authentication exchange
        elif self.task is not None:
            self.pending += data
        else:
            self._read_startup(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint.starting.discard(self)
        if self.session is not None or self.disallowed:
            return  # the Session owns the transport now; or it was never let in
        self.endpoint.state.client_closed(self.seat)
        if self.pooled is not None:
            self.pooled.client_lost()
            return
        self._cancel_timer()
        if self.task is not None:
            self.task.cancel()
        if self.server is not None and self.server.transport is not None:
            self.server.transport.close()

    # -- startup phase ----------------------------------------------------------------
    def _read_startup(self, data: bytes) -> None:
        if self.tls is None and data[:1] == bytes([TLS_HANDSHAKE_RECORD]) and self._tls_context():
            self._start_tls(data)  # direct TLS (sslnegotiation=direct): no SSLRequest first
            return
        self.decoder.feed(data)
        try:
            while (event := self.decoder.next_event()) is not NEED_DATA:
                match event:
                    case SSLRequest():
                        self._ssl_request()
                        return
                    case GSSENCRequest():
                        self.transport.write(b"N")  # GSS encryption is not offered
                    case CancelRequest():
                        self._start(self._cancel(event))
                        return
                    case StartupMessage():
                        self._startup(event)
                        return
        except RemoteProtocolError as exc:
            self.fail(exc.sqlstate, exc.message)

    def _startup(self, event: StartupMessage) -> None:
        if self.tls is None and self._tls_required():
            self.fail(
                "28000",
                "pgaurora requires TLS on this endpoint (client_tls = require)",
                "Connect with sslmode=require or stricter.",
            )
            return
        if self._over_limit(event):
            return
        settings = startup_settings(event)
        named = settings.get("pgaurora.min_lsn")
        if named is not None and self.endpoint.takes_min_lsn:
            self.min_lsn = parse_lsn(named)
            if self.min_lsn is None:
                self.fail("22023", f'invalid value for parameter "pgaurora.min_lsn": "{named}"', LSN_HINT)
                return
        mode = settings.get("pgaurora.consistency")
        if mode is not None and self.endpoint.splitter is not None and mode.lower() not in CONSISTENCIES:
            hint = f"Available values: {', '.join(CONSISTENCIES)}."
            self.fail("22023", f'invalid value for parameter "pgaurora.consistency": "{mode}"', hint)
            return
        if self.endpoint.pool_mode is not PoolMode.PASSTHROUGH:
            self._cancel_timer()
            rest = self.decoder.take_rest()
            peer = self.seat.address if self.seat is not None else ""
            self.pooled = PooledClient(self.endpoint, self.transport, event, peer, self.tls is not None)
            if rest:
                self.pooled.from_client(rest)
            return
        self.pending = self.decoder.raw + self.decoder.take_rest()
        self._start(self._connect())

    def _over_limit(self, event: StartupMessage) -> bool:
        """Refuse (53300) a client beyond a connection limit, at its startup packet (after TLS, so that libpq
        shows the message) and before any server connection."""
        assert self.seat is not None
        state, limits = self.endpoint.state, self.endpoint.config.proxy
        state.seated(self.seat, event.get("user") or "")  # always: a reload may turn the role's limit on
        refusal = state.over_limit(
            self.seat,
            limits.max_client_connections,
            limits.max_client_connections_per_address,
            limits.max_client_connections_per_role,
        )
        if refusal is not None:
            self.fail("53300", refusal)
        return refusal is not None

    # -- TLS ------------------------------------------------------------------------------------
    def _tls_context(self):
        contexts = self.endpoint.tls
        return contexts.server if contexts is not None else None

    def _tls_required(self) -> bool:
        return self.endpoint.tls is not None and self.endpoint.tls.required

    def _ssl_request(self) -> None:
        if self.tls is not None:
            raise RemoteProtocolError("SSLRequest received on a connection that is already encrypted")
        buffered = self.decoder.take_rest()
        if self._tls_context() is None:
            self.transport.write(b"N")  # as PostgreSQL answers, before it looks at what else was sent
        if buffered:  # CVE-2021-23214: nothing may be sent after an SSLRequest before its answer is read
            raise RemoteProtocolError("received unencrypted data after SSL request")
        if self._tls_context() is None:
            return
        self.transport.write(b"S")
        self._start_tls(b"")

    def _start_tls(self, early: bytes) -> None:
        self.endpoint.state.tls_started()
        self.certificate = self.endpoint.tls.certificate if self.endpoint.tls is not None else None
        self.tls = TlsTransport(
            self.transport,
            self._tls_context(),
            server_side=True,
            app=self,
            on_handshake=lambda exc: self._handshake_done(exc, direct=bool(early)),
            early=early,
        )
        self.transport = self.tls

    def binding_passes(self, server: ServerProtocol) -> bool:
        """Can SCRAM channel binding (tls-server-end-point) cross the proxy? Only when both legs are TLS
        and the node presents the very certificate this client saw."""
        return self.tls is not None and server.encrypted and server.peer_certificate == self.certificate

    def _binding_refused(self, server: ServerProtocol, data: bytes) -> bool:
        """A TLS client that would bind but was told the server cannot (flag y) is refused by a node on TLS
        as a downgrade attack; say why, rather than relay that opaque failure. True: forward data."""
        if data[:1] != b"p" or not server.encrypted or self.binding_passes(server):
            return True
        initial = sasl_initial_flag(memoryview(data)[5 : 5 + int.from_bytes(data[1:5], "big") - 4])
        if initial is None or initial[1] != b"y":
            return True
        self.fail(
            "28000",
            "SCRAM channel binding cannot pass through pgaurora: the node's certificate is "
            "not the one this connection was encrypted with",
            "Connect with channel_binding=disable, or serve the nodes and pgaurora's endpoints "
            "with the same certificate (as pgaurora up --tls does).",
        )
        return False

    def _handshake_done(self, exc: BaseException | None, direct: bool) -> None:
        if exc is not None:
            log.info("TLS handshake with a client failed: %s", exc)
            return
        if direct and (self.tls is None or self.tls.alpn != ALPN):
            self.fail("08P01", "received direct SSL connection request without ALPN protocol negotiation extension")

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
        self.forwarded, self.pending = self.pending, b""
        self.endpoint.starting.add(self)
        self.transport.resume_reading()

    def reroute(self) -> bool:
        """The node this startup waits on stopped being one to start on (a frozen writer replaced, a fenced
        replica): when it has sent nothing yet, drop that connection and route the same bytes again. True if
        moved. Safe because nothing of the node reached the client: the proxy still holds the startup packet."""
        server = self.server
        if server is None or server.answered or self.session is not None or self.transport.is_closing():
            return False
        if len(self.forwarded) >= MAX_REROUTED:
            return False
        self.endpoint.starting.discard(self)
        self.server, self.pending = None, self.forwarded
        server.transport.abort()
        self._start(self._connect())
        return True

    # -- events from the server side -------------------------------------------------------
    def established(self, server: ServerProtocol, data: bytes, offload: bool) -> None:
        """First ReadyForQuery: hand both transports to a Session that relays unparsed, then pass
        the server's last bytes (ending with ReadyForQuery) to the client."""
        self.endpoint.starting.discard(self)
        session = Session(server.node.name, self.endpoint.name, self.endpoint.state, self.transport, server.transport)
        session.seat = self.seat
        self.session = session
        session.start(
            server.cancel_key,
            (server.node.host, server.node.port),
            offload,
            data,
            encrypted=self.tls is not None or server.encrypted,
        )
        self.endpoint.watch(session)

    def server_lost(self, server: ServerProtocol) -> None:
        if server is not self.server or self.session is not None or self.transport.is_closing():
            return  # a connection reroute() left, or the session's own
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
