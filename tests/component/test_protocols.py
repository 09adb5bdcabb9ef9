"""ClientProtocol, Session and Endpoint draining over in-memory transports: no sockets, no Postgres."""

from __future__ import annotations

import asyncio
import struct

from pgaurora.core import config as config_mod
from pgaurora.core.topology import Health, NodeState, Role, Topology, TopologyHub
from pgaurora.proxy.client import ClientProtocol
from pgaurora.proxy.endpoint import Endpoint
from pgaurora.proxy.relay import Session
from pgaurora.proxy.router import EndpointKind, Router
from pgaurora.proxy.state import ProxyState
from pgaurora.wire import CancelRequest, Framer, SSLRequest, StartupMessage, decode_backend, encode

STARTUP = encode(StartupMessage((("user", "app"), ("database", "db"))))


class MockTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.reading = True
        self.protocol = None

    def write(self, data) -> None:
        assert not self.closed, "write after close"
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    def get_extra_info(self, name, default=None):
        return default

    def errors(self) -> list:
        framer, found = Framer(), []
        framer.feed(self.written)
        while (frame := framer.next_frame()) is not None:
            if frame.type == b"E":
                found.append(decode_backend(frame.type, frame.payload))
        return found


def _config(**proxy) -> config_mod.Config:
    return config_mod.build(
        {
            "nodes": [{"name": "n1", "host": "127.0.0.11"}, {"name": "n2", "host": "127.0.0.12"}],
            "proxy": {"failover_connect_timeout": 0.05, "startup_timeout": 0.2, **proxy},
        }
    )


def _topology(writer: str | None = "n1") -> Topology:
    nodes = (
        NodeState("n1", "127.0.0.11", 5432, Role.PRIMARY if writer == "n1" else Role.FENCED, Health.HEALTHY),
        NodeState("n2", "127.0.0.12", 5432, Role.PRIMARY if writer == "n2" else Role.REPLICA, Health.HEALTHY),
    )
    return Topology("demo", nodes, writer=writer, readers=("n2",) if writer == "n1" else (), epoch=1)


def _endpoint(kind=EndpointKind.WRITER, topology=None, **proxy) -> Endpoint:
    cfg = _config(**proxy)
    hub = TopologyHub(topology or Topology("demo"))
    state = ProxyState()
    return Endpoint(kind, cfg.writer, cfg, hub, Router(hub, cfg, state), state)


def _client(endpoint) -> tuple[ClientProtocol, MockTransport]:
    protocol, transport = ClientProtocol(endpoint), MockTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def _settle(transport: MockTransport, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not transport.closed:
            await asyncio.sleep(0.005)


async def test_ssl_request_is_declined_with_n():
    protocol, transport = _client(_endpoint())
    protocol.data_received(encode(SSLRequest()))
    assert transport.written == b"N" and not transport.closed


async def test_garbage_gets_protocol_violation_and_close():
    protocol, transport = _client(_endpoint())
    protocol.data_received(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS ClientHello
    assert transport.closed
    assert [e.sqlstate for e in transport.errors()] == ["08P01"]


async def test_silent_client_is_closed_at_the_startup_deadline():
    _protocol, transport = _client(_endpoint())
    await _settle(transport)
    assert transport.errors()[0].message == "timeout while waiting for the startup packet"


async def test_startup_without_writer_gets_57p03_after_waiting():
    endpoint = _endpoint()
    protocol, transport = _client(endpoint)
    protocol.data_received(STARTUP)
    assert not transport.reading  # nothing more is read until a backend is chosen
    await _settle(transport)
    assert [e.sqlstate for e in transport.errors()] == ["57P03"]
    assert endpoint.state.clients == 1
    protocol.connection_lost(None)
    assert endpoint.state.clients == 0


async def test_client_over_max_connections_gets_53300():
    endpoint = _endpoint(topology=_topology(), max_client_connections=1)
    _client(endpoint)
    protocol, transport = _client(endpoint)
    protocol.data_received(STARTUP)
    await _settle(transport)
    assert [e.sqlstate for e in transport.errors()] == ["53300"]


async def test_cancel_with_unknown_key_is_closed_silently():
    protocol, transport = _client(_endpoint(topology=_topology()))
    protocol.data_received(encode(CancelRequest(42, b"\x00\x00\x00\x01")))
    await _settle(transport)
    assert transport.written == b""


def _session(state: ProxyState, node: str = "n1", kind: str = "writer"):
    client, server = MockTransport(), MockTransport()
    session = Session(node, kind, state, client, server)
    state.client_opened()
    session.start((7, b"key!"), ("127.0.0.11", 5432), offload=False, ready=b"")
    return session, client, server


def test_session_relays_bytes_unchanged_and_applies_backpressure():
    state = ProxyState()
    session, client, server = _session(state)
    assert client.protocol is session.client and server.protocol is session.server
    session.client.data_received(b"Q\x00\x00\x00\x0dSELECT 1\x00")
    session.server.data_received(b"T-payload")
    assert server.written == b"Q\x00\x00\x00\x0dSELECT 1\x00" and client.written == b"T-payload"
    session.client.pause_writing()  # the client's socket is full: stop reading the server
    assert not server.reading
    session.client.resume_writing()
    assert server.reading
    assert state.cancel_keys[(7, b"key!")] == ("127.0.0.11", 5432) and state.count("n1") == 1


def test_lost_server_at_ready_for_query_tells_client_08006():
    state = ProxyState()
    session, client, _server = _session(state)
    session.server.data_received(b"C\x00\x00\x00\x0bSELECT\x00Z\x00\x00\x00\x05I")
    session.server.connection_lost(ConnectionResetError())
    assert client.closed and [e.sqlstate for e in client.errors()] == ["08006"]
    assert state.count("n1") == 0 and not state.cancel_keys and state.clients == 0


def test_lost_server_mid_message_closes_without_corrupting_the_stream():
    state = ProxyState()
    session, client, _server = _session(state)
    session.server.data_received(b"D\x00\x00\x01\x00partial-row")
    session.server.connection_lost(None)
    assert client.closed and client.written == b"D\x00\x00\x01\x00partial-row"


def test_writer_sessions_on_the_old_primary_are_terminated_with_57p01():
    endpoint = _endpoint(topology=_topology("n1"))
    _, client, _ = _session(endpoint.state)
    _reader_session, reader_client, _ = _session(endpoint.state, node="n2", kind="reader")
    endpoint._on_topology(_topology("n1"), _topology("n2"))
    assert client.closed and [e.sqlstate for e in client.errors()] == ["57P01"]
    assert not reader_client.closed


async def test_startup_packet_longer_than_limit_is_rejected_before_reading_it():
    protocol, transport = _client(_endpoint())
    protocol.data_received(struct.pack("!II", 10_001, 196608))
    assert transport.closed and transport.errors()[0].sqlstate == "08P01"
