"""ServerProtocol: the connection to a node during authentication, until the first ReadyForQuery."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from ..core.config import BackendTls
from ..core.errors import NodeTlsFailed
from ..core.topology import NodeState
from ..wire import (
    BackendKeyData,
    Framer,
    RemoteProtocolError,
    SSLRequest,
    decode_backend,
    encode,
    sasl_mechanisms,
    without_channel_binding,
)
from .tls import TlsTransport

if TYPE_CHECKING:
    import ssl


class Downstream(Protocol):
    """What a node's connection uses of the client it serves (client.Downstream)."""

    transport: asyncio.Transport

    def established(self, server: ServerProtocol, data: bytes, offload: bool) -> None: ...

    def fail(self, sqlstate: str, message: str, detail: str | None = None) -> None: ...

    def binding_passes(self, server: ServerProtocol) -> bool: ...

    def server_lost(self, server: ServerProtocol) -> None: ...


MAX_AUTH_MESSAGE = 1 << 20  # no message during startup is anywhere near this
_HEADER = 5


class ServerProtocol(asyncio.Protocol):
    """Forwards the node's startup messages to the client whole, reading them to learn the cancel key.

    SCRAM-SHA-256-PLUS binds authentication to the hash of the certificate the client saw. It can cross
    the proxy only when both legs present the same certificate; otherwise it is dropped from the
    mechanisms offered, and libpq's default channel_binding=prefer goes on without it."""

    def __init__(self, client: Downstream, node: NodeState) -> None:
        self.client, self.node = client, node
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made(), which asyncio calls first
        self.framer = Framer(max_message=MAX_AUTH_MESSAGE)
        self.cancel_key: tuple[int, bytes] | None = None
        self.saw_error = False
        self.answered = False  # the node has sent something: the startup can no longer move to another node

    @property
    def encrypted(self) -> bool:
        return isinstance(self.transport, TlsTransport)

    @property
    def peer_certificate(self) -> bytes | None:
        return self.transport.get_extra_info("ssl_object").getpeercert(True) if self.encrypted else None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # a stream's Transport
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.answered = True
        self.framer.feed(data)
        out = []
        try:
            while (frame := self.framer.next_frame()) is not None:
                out.append(self._forwarded(frame))
                if frame.type == b"Z":
                    # Nothing may follow ReadyForQuery for the session to go to a relay that skips Python.
                    rest = self.framer.take_rest()
                    self.client.established(self, b"".join(out) + rest, offload=not rest)
                    return
        except RemoteProtocolError as exc:
            self.client.transport.write(b"".join(out))
            self.client.fail(exc.sqlstate, f"invalid data from node {self.node.name}: {exc.message}")
            return
        if out:
            self.client.transport.write(b"".join(out))

    def _forwarded(self, frame) -> bytes:
        if frame.type == b"K":
            key = decode_backend(frame.type, frame.payload)
            assert isinstance(key, BackendKeyData)
            self.cancel_key = (key.process_id, key.secret_key)
        elif frame.type == b"E":
            self.saw_error = True
        elif (
            frame.type == b"R"
            and (mechanisms := sasl_mechanisms(frame.payload)) is not None
            and not self.client.binding_passes(self)
        ):
            return without_channel_binding(mechanisms)
        return frame.type + (len(frame.payload) + 4).to_bytes(4, "big") + frame.payload

    def pause_writing(self) -> None:
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.server_lost(self)


class _Negotiation(asyncio.Protocol):
    """Sends SSLRequest and waits for the node's one-byte answer: S (TLS follows) or N."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # a stream's Transport
        transport.write(encode(SSLRequest()))

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionResetError("the node closed the connection"))


async def connect(
    client: Downstream, node: NodeState, mode: BackendTls, context: ssl.SSLContext | None
) -> ServerProtocol:
    """A ServerProtocol on a new connection to node, encrypted as `mode` asks (the caller sets the deadline)."""
    server = ServerProtocol(client, node)
    await dial(node, server, mode, context)
    return server


async def dial(node: NodeState, protocol: asyncio.Protocol, mode: BackendTls, context: ssl.SSLContext | None) -> None:
    """Connect protocol to node, encrypted as `mode` asks: its connection_made gets the plain transport, or a
    TlsTransport once the handshake is done (the caller sets the deadline). Passthrough sessions and pooled
    server connections both reach the nodes this way."""
    loop = asyncio.get_running_loop()
    if context is None:
        await loop.create_connection(lambda: protocol, node.host, node.port)
        return
    raw, negotiation = await loop.create_connection(_Negotiation, node.host, node.port)
    try:
        await _secure(raw, negotiation, node, protocol, mode, context)
    except BaseException:
        raw.abort()
        raise


async def _secure(
    raw: asyncio.Transport,
    negotiation: _Negotiation,
    node: NodeState,
    server: asyncio.Protocol,
    mode: BackendTls,
    context: ssl.SSLContext,
) -> None:
    answer = await negotiation.answer
    if answer == b"N" and mode is BackendTls.PREFER:
        raw.set_protocol(server)
        server.connection_made(raw)
        return
    if answer != b"S":
        why = "refused TLS" if answer == b"N" else "answered SSLRequest with unexpected data"
        raise NodeTlsFailed(f"node {node.name} {why} (backend_tls = {mode.value!r})")
    done: asyncio.Future = asyncio.get_running_loop().create_future()
    hostname = node.host if mode is BackendTls.VERIFY_FULL else None
    tls = TlsTransport(
        raw,
        context,
        server_side=False,
        app=server,
        server_hostname=hostname,
        on_handshake=lambda exc: None if done.done() else done.set_result(exc),
    )
    if (exc := await done) is not None:
        raise NodeTlsFailed(f"TLS handshake with node {node.name} failed: {exc}")
    server.connection_made(tls)
