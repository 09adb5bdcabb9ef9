"""Decode startup packets and backend messages into events, and encode events into bytes."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from construct import ConstructError

from . import messages as m
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    Authentication,
    BackendKeyData,
    CancelRequest,
    ErrorResponse,
    Event,
    GSSENCRequest,
    NoticeResponse,
    ParameterStatus,
    ReadyForQuery,
    SSLRequest,
    StartupMessage,
    UnknownMessage,
)


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
SUPPORTED_MAJOR = 3


class StartupDecoder:
    """Decodes the untagged packets a client sends before its StartupMessage.

    feed(bytes) buffers; next_event() returns an event, NEED_DATA, or raises
    RemoteProtocolError with the SQLSTATE PostgreSQL itself would report.
    `raw` holds the exact bytes of the last packet returned, to forward unchanged.
    """

    def __init__(self, max_packet: int = m.MAX_STARTUP_PACKET) -> None:
        self._buf = b""
        self._max = max_packet
        self.raw = b""

    def feed(self, data: bytes) -> None:
        self._buf += data

    def take_rest(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest

    def next_event(self) -> Event | _NeedData:
        if len(self._buf) < 4:
            return NEED_DATA
        length = int.from_bytes(self._buf[:4], "big", signed=True)
        if length < 8 or length > self._max:
            raise RemoteProtocolError(f"invalid length of startup packet ({length} bytes)")
        if len(self._buf) < length:
            return NEED_DATA
        self.raw, self._buf = self._buf[:length], self._buf[length:]
        return decode_startup(self.raw)


@lru_cache(maxsize=256)  # a pool's connections send the same packet: parse it once (events are frozen)
def decode_startup(packet: bytes) -> Event:
    parsed = m.StartupPacket.parse(packet)
    code, body = parsed.code, parsed.body
    if code == m.SSL_REQUEST_CODE and not body:
        return SSLRequest()
    if code == m.GSSENC_REQUEST_CODE and not body:
        return GSSENCRequest()
    if code == m.CANCEL_REQUEST_CODE:
        if len(body) < 8:
            raise RemoteProtocolError("invalid length of cancel request packet")
        cancel = m.CancelBody.parse(body)
        return CancelRequest(cancel.process_id, cancel.secret_key)
    if code >> 16 != SUPPORTED_MAJOR:
        raise RemoteProtocolError(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0 to 3.0",
            sqlstate="0A000",
        )
    return StartupMessage(_decode_parameters(body), protocol=code)


def _decode_parameters(body: bytes) -> tuple[tuple[str, str], ...]:
    if not body.endswith(b"\0"):
        raise RemoteProtocolError("invalid startup packet layout: expected terminator as last byte")
    try:
        strings = m.StartupParameters.parse(body[:-1])
    except (ConstructError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"invalid startup packet: {exc}") from None
    if len(strings) % 2:
        raise RemoteProtocolError("invalid startup packet layout: missing value for parameter")
    pairs = tuple(zip(strings[0::2], strings[1::2], strict=False))
    if not any(name == "user" for name, _ in pairs):
        raise RemoteProtocolError("no PostgreSQL user name specified in startup packet", sqlstate="28000")
    return pairs


def _fields(payload: bytes) -> tuple[tuple[str, str], ...]:
    return tuple((chr(f.code), f.value) for f in m.NoticeFields.parse(payload) if not f.last)


_BACKEND: dict[bytes, Callable[[bytes], Event]] = {
    b"R": lambda p: Authentication(*_parsed(m.Authentication, p, "code", "data")),
    b"K": lambda p: BackendKeyData(*_parsed(m.BackendKeyData, p, "process_id", "secret_key")),
    b"S": lambda p: ParameterStatus(*_parsed(m.ParameterStatus, p, "name", "value")),
    b"Z": lambda p: ReadyForQuery(m.ReadyForQuery.parse(p).status),
    b"E": lambda p: ErrorResponse(_fields(p)),
    b"N": lambda p: NoticeResponse(_fields(p)),
}


def _parsed(struct: Any, payload: bytes, *names: str) -> tuple[Any, ...]:
    obj = struct.parse(payload)
    return tuple(obj[name] for name in names)


def decode_backend(type_: bytes, payload: bytes | memoryview) -> Event:
    """Decode one tagged backend message (as split by Framer)."""
    payload = bytes(payload)
    decoder = _BACKEND.get(type_)
    if decoder is None:
        return UnknownMessage(type_, payload)
    try:
        return decoder(payload)
    except (ConstructError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"malformed {type_!r} message: {exc}") from None


def _tagged(type_: bytes, payload: bytes) -> bytes:
    return bytes(m.TaggedMessage.build({"type": type_, "payload": payload}))


def _plain(type_: bytes, payload: bytes) -> bytes:
    return type_ + (len(payload) + 4).to_bytes(4, "big") + payload


def _untagged(code: int, body: bytes) -> bytes:
    return bytes(m.StartupPacket.build({"length": len(body) + 8, "code": code, "body": body}))


def _build_fields(fields: tuple[tuple[str, str], ...]) -> bytes:
    items = [{"code": ord(code), "value": value, "last": False} for code, value in fields]
    return bytes(m.NoticeFields.build([*items, {"code": 0, "value": None, "last": True}]))


def encode(event: Event) -> bytes:
    """Bytes on the wire for an event."""
    match event:
        case StartupMessage(parameters=params, protocol=protocol):
            body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params) + b"\0"
            return _untagged(protocol, body)
        case SSLRequest():
            return _untagged(m.SSL_REQUEST_CODE, b"")
        case GSSENCRequest():
            return _untagged(m.GSSENC_REQUEST_CODE, b"")
        case CancelRequest(process_id=pid, secret_key=key):
            return _untagged(m.CANCEL_REQUEST_CODE, m.CancelBody.build({"process_id": pid, "secret_key": key}))
        # The messages a pooled login sends, built directly: construct's build costs ~50 µs each, and a
        # login sends some twenty of them (bench/pooling.py's connect-c16 spent 1 ms per login there).
        case Authentication(code=code, data=data):
            return _plain(b"R", code.to_bytes(4, "big") + data)
        case BackendKeyData(process_id=pid, secret_key=key):
            return _plain(b"K", pid.to_bytes(4, "big") + key)
        case ParameterStatus(name=name, value=value):
            return _plain(b"S", name.encode() + b"\0" + value.encode() + b"\0")
        case ReadyForQuery(status=status):
            return _plain(b"Z", status)
        case ErrorResponse(fields=fields):
            return _tagged(b"E", _build_fields(fields))
        case NoticeResponse(fields=fields):
            return _tagged(b"N", _build_fields(fields))
        case UnknownMessage(type=type_, payload=payload):
            return _tagged(type_, payload)
    raise LocalProtocolError(f"cannot encode {event!r}")


@lru_cache(maxsize=1024)  # the same few errors go to many clients, and construct's build is slow
def error_response(sqlstate: str, message: str, severity: str = "FATAL", detail: str | None = None) -> bytes:
    """Bytes of an ErrorResponse as PostgreSQL would send it."""
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message)]
    if detail:
        fields.append(("D", detail))
    return encode(ErrorResponse(tuple(fields)))


AUTH_SASL = 10
CHANNEL_BINDING_SUFFIX = b"-PLUS"


def sasl_mechanisms(payload: bytes | memoryview) -> list[bytes] | None:
    """The mechanisms an AuthenticationSASL payload offers, or None for any other Authentication."""
    payload = bytes(payload)
    if len(payload) < 5 or int.from_bytes(payload[:4], "big") != AUTH_SASL:
        return None
    return [name for name in payload[4:].split(b"\0") if name]


def without_channel_binding(mechanisms: list[bytes]) -> bytes:
    """An AuthenticationSASL message offering the mechanisms other than the -PLUS ones: a proxy that
    terminates TLS cannot pass tls-server-end-point channel binding through."""
    kept = [name for name in mechanisms if not name.endswith(CHANNEL_BINDING_SUFFIX)]
    body = AUTH_SASL.to_bytes(4, "big") + b"".join(name + b"\0" for name in kept) + b"\0"
    return _tagged(b"R", body)


def sasl_initial_flag(payload: bytes | memoryview) -> tuple[bytes, bytes] | None:
    """(mechanism, GS2 channel-binding flag: b"n", b"y" or b"p") of a SASLInitialResponse payload,
    or None when the payload is not one."""
    payload = bytes(payload)
    end = payload.find(b"\0")
    if end <= 0 or len(payload) < end + 6:
        return None
    return payload[:end], payload[end + 5 : end + 6]
