"""TlsTransport over real sockets on the event loop: data both ways, backpressure, closing, failed handshakes."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
import trustme
import uvloop

from pgaurora.proxy.tls import TlsTransport


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()
        self.paused = 0

    def data_received(self, data: bytes) -> None:
        self.data += data

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        pass

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Each test on both loops: the proxy runs on uvloop, where start_tls once hung."""
    return asyncio.run if request.param == "asyncio" else uvloop.run


def _contexts(ca, client_ca=None):
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    (client_ca or ca).configure_trust(client)
    return server, client


async def _pair(server_ctx, client_ctx):
    """(server TlsTransport, its Sink, client TlsTransport, its Sink, handshake outcomes)."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    raw_server, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
    raw_client, _ = await loop.connect_accepted_socket(asyncio.Protocol, b)
    outcomes = {"server": loop.create_future(), "client": loop.create_future()}
    server_sink, client_sink = Sink(), Sink()
    server = TlsTransport(
        raw_server, server_ctx, server_side=True, app=server_sink, on_handshake=outcomes["server"].set_result
    )
    client = TlsTransport(
        raw_client,
        client_ctx,
        server_side=False,
        app=client_sink,
        server_hostname="127.0.0.1",
        on_handshake=outcomes["client"].set_result,
    )
    return server, server_sink, client, client_sink, outcomes


async def _until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


def test_bytes_cross_both_ways_intact_and_writes_before_the_handshake_are_held(ca, run):
    run(_bytes_cross_both_ways_intact_and_writes_before_the_handshake_are_held(ca))


async def _bytes_cross_both_ways_intact_and_writes_before_the_handshake_are_held(ca):
    server, server_sink, client, client_sink, outcomes = await _pair(*_contexts(ca))
    client.write(b"early")  # before the handshake completed: held, then sent
    assert await outcomes["client"] is None and await outcomes["server"] is None
    big = bytes(range(256)) * 20000  # 5 MB, several hundred TLS records
    server.write(big)
    await _until(lambda: len(client_sink.data) == len(big) and bytes(server_sink.data) == b"early")
    assert bytes(client_sink.data) == big
    assert server.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    client.close()
    server.close()


def test_close_does_not_wait_for_the_peers_close_notify(ca, run):
    run(_close_does_not_wait_for_the_peers_close_notify(ca))


async def _close_does_not_wait_for_the_peers_close_notify(ca):
    server, server_sink, client, client_sink, outcomes = await _pair(*_contexts(ca))
    await outcomes["server"]
    client.pause_reading()  # the peer reads nothing more, so it never answers close_notify
    server.close()
    assert server.is_closing()
    async with asyncio.timeout(5):
        await server_sink.lost
    client.resume_reading()
    async with asyncio.timeout(5):
        await client_sink.lost  # the peer sees the end too


def test_a_failed_handshake_is_reported_once_to_both_sides_and_closes_them(ca, run):
    run(_a_failed_handshake_is_reported_once_to_both_sides_and_closes_them(ca))


async def _a_failed_handshake_is_reported_once_to_both_sides_and_closes_them(ca):
    _server, server_sink, _client, client_sink, outcomes = await _pair(*_contexts(ca, client_ca=trustme.CA()))
    client_error = await asyncio.wait_for(outcomes["client"], 5)
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    assert await asyncio.wait_for(outcomes["server"], 5) is not None
    async with asyncio.timeout(5):
        await client_sink.lost
        await server_sink.lost


def test_a_peer_that_vanishes_mid_handshake_is_an_error_not_a_hang(ca, run):
    run(_a_peer_that_vanishes_mid_handshake_is_an_error_not_a_hang(ca))


async def _a_peer_that_vanishes_mid_handshake_is_an_error_not_a_hang(ca):
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    raw, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
    outcome = loop.create_future()
    sink = Sink()
    TlsTransport(raw, _contexts(ca)[0], server_side=True, app=sink, on_handshake=outcome.set_result)
    b.sendall(b"\x16\x03\x01\x00\x05hello")  # the start of a ClientHello, then nothing
    b.close()
    assert isinstance(await asyncio.wait_for(outcome, 5), BaseException)
    async with asyncio.timeout(5):
        await sink.lost


def test_no_tls_record_carries_more_than_8_kb_of_plaintext(ca, run):
    run(_no_tls_record_carries_more_than_8_kb_of_plaintext(ca))


async def _no_tls_record_carries_more_than_8_kb_of_plaintext(ca):
    """PostgreSQL's records hold at most 8 kB, and libpq relies on it: a bigger record left pgbench
    waiting forever on data OpenSSL had already decrypted (its poll() watches only the socket)."""
    loop = asyncio.get_running_loop()
    server_ctx, client_ctx = _contexts(ca)
    a, b = socket.socketpair()
    raw, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
    done = loop.create_future()
    server = TlsTransport(raw, server_ctx, server_side=True, app=Sink(), on_handshake=done.set_result)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    b.setblocking(False)
    records = bytearray()

    async def pump_client():
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        if outgoing.pending:
            await loop.sock_sendall(b, outgoing.read())
        data = await loop.sock_recv(b, 1 << 20)
        incoming.write(data)
        return data

    while not done.done():
        await pump_client()
    server.write(b"x" * 300_000)  # one big write, as a 256 kB chunk from the node would be
    while len(records) < 300_000:
        records += await loop.sock_recv(b, 1 << 20)
    lengths = []
    view = memoryview(records)
    while len(view) >= 5:
        length = int.from_bytes(view[3:5], "big")
        if len(view) < 5 + length:
            break
        if view[0] == 23:  # application data
            lengths.append(length)
        view = view[5 + length :]
    assert len(lengths) >= 36 and max(lengths) <= 8192 + 64, max(lengths)
    server.abort()
    b.close()


class _Node(asyncio.Protocol):
    """A fake node that answers SSLRequest with `answer`, then answers the ClientHello with `after`
    (or sends `after` at once, with the answer, when `eager`)."""

    def __init__(self, answer: bytes, after: bytes, eager: bool) -> None:
        self.answer, self.after, self.eager, self.seen = answer, after, eager, 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.seen += 1
        if self.seen == 1:
            self.transport.write(self.answer + (self.after if self.eager else b""))
        elif not self.eager:
            self.transport.write(self.after)


async def _connect_to(answer: bytes, mode, after: bytes = b"", eager: bool = False) -> bool:
    """Connect as the proxy does; True when the connection ended up encrypted."""
    from pgaurora.core.topology import NodeState, Role
    from pgaurora.proxy.upstream import connect

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Node(answer, after, eager), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    node = NodeState(name="n1", host="127.0.0.1", port=port, role=Role.PRIMARY)
    try:
        async with asyncio.timeout(5):
            upstream = await connect(object(), node, mode, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        upstream.transport.close()
        return upstream.encrypted
    finally:
        server.close()


@pytest.mark.parametrize(
    "answer, after, eager, mode, refused",
    [
        (b"N", b"", False, "require", "refused TLS"),
        (b"S", b"\x15\x03\x03\x00\x02\x02\x28", False, "require", "TLS handshake with node n1 failed"),  # an alert
        (b"S", b"extra", True, "verify-full", "unexpected data"),  # bytes before the handshake: CVE-2021-23222
    ],
)
def test_a_node_that_will_not_do_the_tls_asked_for_fails_at_once_with_08001(run, answer, after, eager, mode, refused):
    from pgaurora.core.config import BackendTls
    from pgaurora.core.errors import NodeTlsFailed

    with pytest.raises(NodeTlsFailed, match=refused) as failure:
        run(_connect_to(answer, BackendTls(mode), after, eager))
    assert failure.value.sqlstate == "08001"


def test_prefer_falls_back_to_plaintext_when_the_node_answers_n(run):
    from pgaurora.core.config import BackendTls

    assert run(_connect_to(b"N", BackendTls.PREFER)) is False
