"""The native relay's C threads over socket pairs: bytes, backpressure, endings and where errors may be injected."""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import threading
import time

import pytest

from pgaurora.proxy import native
from pgaurora.proxy.native import NativeRelay
from pgaurora.proxy.relay import Session
from pgaurora.proxy.state import ProxyState
from pgaurora.wire import error_response
from tests.component.test_protocols import MockTransport

pytestmark = pytest.mark.skipif(not native.available(), reason="the native relay extension was not built")

LOST = error_response("08006", "connection to node n1 was lost")
RFQ = b"Z\x00\x00\x00\x05I"
COMPLETE = b"C\x00\x00\x00\x0dSELECT 1\x00"


class Harness:
    """A client app and a server app, each on a socket pair whose other end the relay holds."""

    def __init__(self, relay, session_id: int) -> None:
        self.relay, self.id = relay, session_id
        self.client, client_end = socket.socketpair()
        server_end, self.server = socket.socketpair()
        for s in (client_end, server_end):
            s.setblocking(False)
        relay.add(session_id, client_end.fileno(), server_end.fileno(), LOST)
        client_end.close()  # the relay holds duplicates, as it does of a Session's transports
        server_end.close()

    def close(self) -> None:
        self.client.close()
        self.server.close()


@pytest.fixture
def relay():
    r = native._relay.Relay(2)
    yield r
    r.close()


def ended_ids(relay, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([relay.notify_fd], [], [], 0.05)[0]:
            data = os.read(relay.notify_fd, 4096)
            return [i for (i,) in struct.iter_unpack("=Q", data)]
    return []


def read_until_eof(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def recv_exactly(sock: socket.socket, size: int, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"stream ended after {len(data)} of {size} bytes"
        data += chunk
    return data


def test_relays_bytes_both_ways_unchanged(relay):
    h = Harness(relay, 1)
    h.client.sendall(b"Q\x00\x00\x00\x0dSELECT 1\x00")
    assert recv_exactly(h.server, 14) == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    h.server.sendall(COMPLETE + RFQ)
    assert recv_exactly(h.client, len(COMPLETE + RFQ)) == COMPLETE + RFQ
    h.close()


def test_large_result_to_a_slow_reader_arrives_whole_and_in_order(relay):
    h = Harness(relay, 2)
    rows = b"".join(b"D" + struct.pack("!I", 4 + 8000) + bytes([i % 251]) * 8000 for i in range(1000))
    writer = threading.Thread(target=h.server.sendall, args=(rows + RFQ,))
    writer.start()
    received = b""
    h.client.settimeout(5)
    while len(received) < len(rows) + len(RFQ):
        time.sleep(0.001)  # not a wait: it makes the client slow, so the relay's sends block and park
        received += h.client.recv(32768)
    writer.join(5)
    assert received == rows + RFQ
    h.close()


def test_client_hanging_up_closes_the_server_side_and_reports_the_session(relay):
    h = Harness(relay, 3)
    h.client.close()
    assert ended_ids(relay) == [3]
    assert read_until_eof(h.server) == b""
    h.server.close()


def test_server_loss_between_messages_tells_the_client_08006(relay):
    h = Harness(relay, 4)
    h.server.sendall(COMPLETE + RFQ)
    h.server.close()
    assert read_until_eof(h.client) == COMPLETE + RFQ + LOST
    assert ended_ids(relay) == [4]
    h.client.close()


def test_server_loss_mid_message_closes_without_corrupting_the_stream(relay):
    h = Harness(relay, 5)
    h.server.sendall(b"D\x00\x00\x01\x00partial-row")
    h.server.close()
    assert read_until_eof(h.client) == b"D\x00\x00\x01\x00partial-row"
    h.client.close()


def test_terminate_while_idle_injects_the_error(relay):
    h = Harness(relay, 6)
    notice = b"N\x00\x00\x00\x0bShello\x00"  # asynchronous: the session is still between queries
    h.server.sendall(COMPLETE + RFQ + notice)
    assert recv_exactly(h.client, len(COMPLETE + RFQ + notice)) == COMPLETE + RFQ + notice
    relay.terminate(6, error_response("57P01", "node n1 is no longer the writer"))
    assert read_until_eof(h.client) == error_response("57P01", "node n1 is no longer the writer")
    assert read_until_eof(h.server) == b""
    h.close()


def test_terminate_inside_a_result_closes_without_injecting(relay):
    h = Harness(relay, 7)
    h.server.sendall(b"T\x00\x00\x00\x06\x00\x00")  # RowDescription: a result has begun
    assert recv_exactly(h.client, 7) == b"T\x00\x00\x00\x06\x00\x00"
    relay.terminate(7, error_response("57P01", "node n1 is no longer the writer"))
    assert read_until_eof(h.client) == b""
    h.close()


def test_terminate_of_an_unknown_session_is_ignored_and_others_carry_on(relay):
    h = Harness(relay, 8)
    relay.terminate(999, error_response("57P01", "nobody"))
    h.client.sendall(b"Q\x00\x00\x00\x05\x00")
    assert recv_exactly(h.server, 6) == b"Q\x00\x00\x00\x05\x00"
    h.close()


def test_close_returns_while_a_thread_is_blocked_on_a_full_notification_pipe(relay):
    fcntl.fcntl(relay.notify_fd, fcntl.F_SETPIPE_SZ, 4096)  # room for 512 endings
    ended = [Harness(relay, 100 + i) for i in range(600)]
    for h in ended:
        h.client.close()  # 600 endings for a pipe that nobody reads: a thread blocks writing them
    h = Harness(relay, 9)
    closer = threading.Thread(target=relay.close)
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "Relay.close() hung on a thread blocked on the notification pipe"
    assert read_until_eof(h.client) == b"" and read_until_eof(h.server) == b""
    with pytest.raises(RuntimeError):
        relay.add(10, h.client.fileno(), h.server.fileno(), LOST)
    for other in [h, *ended]:
        other.close()


def test_thread_count_is_validated():
    with pytest.raises(ValueError, match="threads"):
        native._relay.Relay(0)


def test_a_relay_cannot_be_initialised_twice(relay):
    with pytest.raises(RuntimeError, match="already"):
        relay.__init__(2)


class SocketTransport(MockTransport):
    """A mock transport in front of a real (unused) socket, as the native relay needs descriptors."""

    def __init__(self) -> None:
        super().__init__()
        self.sock = socket.socket()

    def get_extra_info(self, name, default=None):
        return self.sock if name == "socket" else default

    def get_write_buffer_size(self) -> int:
        return 0


async def test_a_session_the_threads_refuse_stays_on_the_python_relay():
    relay = NativeRelay(1)
    relay.close()  # a closed relay refuses every session, as one out of descriptors would
    state = ProxyState(native=relay)
    client, server = SocketTransport(), SocketTransport()
    session = Session("n1", "writer", state, client, server)
    session.start(None, ("127.0.0.11", 5432), offload=True, ready=RFQ)
    assert session.native_id is None and client.reading and server.reading
    session.client.data_received(b"Q\x00\x00\x00\x05\x00")
    assert client.written == RFQ and server.written == b"Q\x00\x00\x00\x05\x00"
    client.sock.close()
    server.sock.close()


@pytest.mark.parametrize("tls", [False, True])
def test_the_relay_compiles_with_and_without_openssl(tls):
    """setup.py builds the TLS parts only where OpenSSL's headers are found; without them the same file
    must still compile (TLS sessions then stay on the Python path)."""
    import shutil
    import subprocess
    import sysconfig
    from pathlib import Path

    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (.ci/run installs gcc)")
    source = Path(native.__file__).with_name("_relay.c")
    flags = ["-DPGAURORA_TLS=1"] if tls else []
    out = subprocess.run(
        [
            compiler,
            "-fsyntax-only",
            "-Wall",
            "-Wextra",
            "-Wno-unused-parameter",
            "-Werror",
            f"-I{sysconfig.get_paths()['include']}",
            *flags,
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
