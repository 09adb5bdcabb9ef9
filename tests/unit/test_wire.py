"""The sans-IO codec against bytes captured from a real PostgreSQL 15 server and psql."""

from __future__ import annotations

import ast
import pathlib
import struct

import pytest

from pgaurora.wire import (
    NEED_DATA,
    Authentication,
    BackendKeyData,
    CancelRequest,
    Framer,
    GSSENCRequest,
    NoticeResponse,
    ParameterStatus,
    ReadyForQuery,
    RemoteProtocolError,
    SSLRequest,
    StartupDecoder,
    StartupMessage,
    UnknownMessage,
    decode_backend,
    encode,
    error_response,
)

# Captured from psql 15 connecting with user=alice dbname=shop application_name=golden.
PSQL_STARTUP = b"\x00\x00\x00:\x00\x03\x00\x00user\x00alice\x00database\x00shop\x00application_name\x00golden\x00\x00"
# Captured from PostgreSQL 15.18: scram over TCP, a missing database, and a trust login.
SERVER_SASL = b"R\x00\x00\x00\x17\x00\x00\x00\nSCRAM-SHA-256\x00\x00"
SERVER_NODB = (
    b"R\x00\x00\x00\x08\x00\x00\x00\x00E\x00\x00\x00]SFATAL\x00VFATAL\x00C3D000\x00"
    b'Mdatabase "nosuchdb" does not exist\x00Fpostinit.c\x00L948\x00RInitPostgres\x00\x00'
)
SERVER_KEY = b"K\x00\x00\x00\x0c\x00\x00\x1b\x98 8_q"
SERVER_PARAM = b"S\x00\x00\x00\x1capplication_name\x00golden\x00"
SERVER_READY = b"Z\x00\x00\x00\x05I"


def _decode_all(data: bytes) -> list:
    framer = Framer()
    framer.feed(data)
    events = []
    while (frame := framer.next_frame()) is not None:
        events.append(decode_backend(frame.type, frame.payload))
    return events


def _startup(data: bytes):
    decoder = StartupDecoder()
    decoder.feed(data)
    return decoder.next_event()


def test_psql_startup_message_decodes_and_reencodes_byte_exact():
    event = _startup(PSQL_STARTUP)
    assert event == StartupMessage((("user", "alice"), ("database", "shop"), ("application_name", "golden")))
    assert event.version == (3, 0) and event.get("user") == "alice"
    assert encode(event) == PSQL_STARTUP


def test_server_messages_decode_and_reencode_byte_exact():
    for raw in (SERVER_SASL, SERVER_NODB, SERVER_KEY, SERVER_PARAM, SERVER_READY):
        assert b"".join(encode(e) for e in _decode_all(raw)) == raw


def test_server_messages_decode_to_typed_events():
    assert _decode_all(SERVER_SASL) == [Authentication(10, b"SCRAM-SHA-256\x00\x00")]
    assert _decode_all(SERVER_SASL)[0].name == "AuthenticationSASL"
    ok, error = _decode_all(SERVER_NODB)
    assert ok.name == "AuthenticationOk"
    assert (error.severity, error.sqlstate, error.message) == ("FATAL", "3D000", 'database "nosuchdb" does not exist')
    assert _decode_all(SERVER_KEY) == [BackendKeyData(0x1B98, b" 8_q")]
    assert _decode_all(SERVER_PARAM) == [ParameterStatus("application_name", "golden")]
    assert _decode_all(SERVER_READY) == [ReadyForQuery(b"I")]


@pytest.mark.parametrize(
    "event",
    [
        SSLRequest(),
        GSSENCRequest(),
        CancelRequest(1234, b"\x01\x02\x03\x04"),
        StartupMessage((("user", "u"),), protocol=(3 << 16) | 2),
    ],
)
def test_startup_packets_round_trip(event):
    assert _startup(encode(event)) == event


@pytest.mark.parametrize(
    "event",
    [
        NoticeResponse((("S", "WARNING"), ("C", "01000"), ("M", "careful"))),
        UnknownMessage(b"D", b"\x00\x01\x00\x00\x00\x01x"),
        Authentication(0),
    ],
)
def test_backend_messages_round_trip(event):
    assert _decode_all(encode(event)) == [event]


def test_error_response_builder_carries_severity_sqlstate_and_message():
    (event,) = _decode_all(error_response("57P03", "no primary", detail="failing over"))
    assert (event.severity, event.sqlstate, event.message, event.get("D")) == (
        "FATAL",
        "57P03",
        "no primary",
        "failing over",
    )


def test_ssl_request_bytes_match_the_protocol_docs():
    assert encode(SSLRequest()) == struct.pack("!II", 8, 80877103)
    assert encode(GSSENCRequest()) == struct.pack("!II", 8, 80877104)


def test_startup_decoder_needs_data_until_the_packet_is_complete():
    decoder = StartupDecoder()
    for i in range(len(PSQL_STARTUP) - 1):
        decoder.feed(PSQL_STARTUP[i : i + 1])
        assert decoder.next_event() is NEED_DATA
    decoder.feed(PSQL_STARTUP[-1:])
    assert isinstance(decoder.next_event(), StartupMessage)


def test_startup_decoder_splits_pipelined_packets():
    decoder = StartupDecoder()
    decoder.feed(encode(SSLRequest()) + PSQL_STARTUP + b"Q")
    assert decoder.next_event() == SSLRequest()
    assert isinstance(decoder.next_event(), StartupMessage)
    assert decoder.raw == PSQL_STARTUP and decoder.take_rest() == b"Q"


@pytest.mark.parametrize(
    "packet, sqlstate",
    [
        (b"GET / HTTP/1.1\r\n\r\n", "08P01"),  # garbage: absurd length
        (struct.pack("!iI", 1 << 20, 196608), "08P01"),  # 1 MiB declared
        (struct.pack("!iI", -5, 196608), "08P01"),  # negative length
        (struct.pack("!iI", 4, 196608), "08P01"),  # shorter than a header
        (struct.pack("!II", 16, 2 << 16) + b"user\0x\0\0", "0A000"),  # protocol 2.0
        (struct.pack("!II", 12, 196608) + b"user", "08P01"),  # no terminator
        (struct.pack("!II", 15, 196608) + b"user\0x\0", "08P01"),  # value missing terminator
        (struct.pack("!II", 14, 196608) + b"user\0\0", "08P01"),  # name without value
        (struct.pack("!II", 16, 196608) + b"user\0\xff\0\0", "08P01"),  # not UTF-8
        (struct.pack("!II", 14, 196608) + b"db\0x\0\0", "28000"),  # no user
        (struct.pack("!II", 12, 80877102) + b"\0\0\0\1", "08P01"),  # cancel too short
    ],
)
def test_bad_startup_packets_raise_typed_errors(packet, sqlstate):
    with pytest.raises(RemoteProtocolError) as info:
        _startup(packet)
    assert info.value.sqlstate == sqlstate


def test_framer_returns_zero_copy_payload_views():
    framer = Framer()
    data = SERVER_PARAM + SERVER_READY
    framer.feed(data)
    frame = framer.next_frame()
    assert isinstance(frame.payload, memoryview) and frame.payload.obj is data
    assert frame.wire_length == len(SERVER_PARAM)


def test_framer_reassembles_messages_split_across_feeds():
    framer = Framer()
    data = SERVER_KEY + SERVER_READY
    for byte in data[:-1]:
        framer.feed(bytes([byte]))
    framer.feed(data[-1:])
    frames = []
    while (frame := framer.next_frame()) is not None:
        frames.append(frame.type)
    assert frames == [b"K", b"Z"]


@pytest.mark.parametrize(
    "header",
    [b"Z\xff\xff\xff\xff", b"Z\x00\x00\x00\x03", b"D\x7f\xff\xff\xff"],
    ids=["negative", "too-short", "oversized"],
)
def test_framer_rejects_bad_lengths(header):
    framer = Framer(max_message=1 << 20)
    framer.feed(header)
    with pytest.raises(RemoteProtocolError):
        framer.next_frame()


def test_framer_reports_truncated_message_at_eof():
    framer = Framer()
    framer.feed(SERVER_KEY[:7])
    assert framer.next_frame() is None
    framer.feed(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a message"):
        framer.next_frame()


def test_malformed_backend_payload_is_a_typed_error():
    with pytest.raises(RemoteProtocolError):
        decode_backend(b"S", b"no-terminator")


def test_wire_package_imports_no_io():
    root = pathlib.Path(__file__).parents[2] / "src" / "pgaurora" / "wire"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in {"asyncio", "socket", "selectors", "uvloop"}, (path, name)


def test_construct_is_only_used_in_messages_module():
    root = pathlib.Path(__file__).parents[2] / "src" / "pgaurora"
    users = {
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if "from construct" in p.read_text() or "import construct" in p.read_text()
    }
    assert users <= {"wire/messages.py", "wire/codec.py"}
