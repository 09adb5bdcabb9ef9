"""Frontend messages a pooler reads or writes: SASL responses, and the statement names in Parse, Bind,
Describe and Close (rewritten so that one client's prepared statements follow it across server connections)."""

from __future__ import annotations

from .errors import RemoteProtocolError


def tagged(type_: bytes, body: bytes) -> bytes:
    return type_ + (len(body) + 4).to_bytes(4, "big") + body


def _cstring(payload: bytes, start: int = 0) -> tuple[bytes, int]:
    """The NUL-terminated string at start, and the offset after its NUL."""
    end = payload.find(b"\0", start)
    if end < 0:
        raise RemoteProtocolError("a string in a message has no terminating NUL")
    return payload[start:end], end + 1


def sasl_initial_response(mechanism: str, data: str) -> bytes:
    raw = data.encode()
    return tagged(b"p", mechanism.encode() + b"\0" + len(raw).to_bytes(4, "big", signed=True) + raw)


def sasl_response(data: str) -> bytes:
    return tagged(b"p", data.encode())


def read_sasl_initial(payload: bytes) -> tuple[str, str]:
    """(mechanism, initial data) of a SASLInitialResponse payload."""
    mechanism, at = _cstring(payload)
    if len(payload) < at + 4:
        raise RemoteProtocolError("SASLInitialResponse is truncated")
    size = int.from_bytes(payload[at : at + 4], "big", signed=True)
    data = payload[at + 4 :] if size < 0 else payload[at + 4 : at + 4 + size]
    return mechanism.decode("ascii", "replace"), data.decode("utf-8", "replace")


def simple_query(sql: str) -> bytes:
    return tagged(b"Q", sql.encode() + b"\0")


def query_text(payload: bytes) -> str:
    """The SQL of a Query payload."""
    return _cstring(payload)[0].decode("utf-8", "replace")


def _two_strings(payload: bytes) -> tuple[bytes, bytes, bytes]:
    first, at = _cstring(payload)
    second, at = _cstring(payload, at)
    return first, second, payload[at:]


def parse_parts(payload: bytes) -> tuple[bytes, bytes, bytes]:
    """(statement name, query, the rest: parameter types) of a Parse payload."""
    return _two_strings(payload)


def parse_message(name: bytes, query: bytes, rest: bytes) -> bytes:
    return tagged(b"P", name + b"\0" + query + b"\0" + rest)


def bind_statement(payload: bytes) -> tuple[bytes, bytes, bytes]:
    """(portal, statement name, the rest) of a Bind payload."""
    return _two_strings(payload)


def bind_message(portal: bytes, statement: bytes, rest: bytes) -> bytes:
    return tagged(b"B", portal + b"\0" + statement + b"\0" + rest)


def bound_name(message: bytes) -> tuple[int, int]:
    """Where the statement name of a whole Bind message starts and ends: read in place, nothing copied
    (a transaction-pooled client's every Bind passes here)."""
    start = message.find(b"\0", 5) + 1
    end = message.find(b"\0", start) if start else -1
    if end < 0:
        raise RemoteProtocolError("a string in a message has no terminating NUL")
    return start, end


def rebound(message: bytes, start: int, end: int, statement: bytes) -> bytes:
    """The whole Bind message with the statement name at [start:end] replaced."""
    body = b"".join([message[5:start], statement, message[end:]])
    return b"B" + (len(body) + 4).to_bytes(4, "big") + body


def target(payload: bytes) -> tuple[bytes, bytes]:
    """(b"S" or b"P", name) of a Describe or Close payload."""
    if not payload:
        raise RemoteProtocolError("Describe or Close without a target")
    return payload[:1], _cstring(payload, 1)[0]


def target_message(type_: bytes, kind: bytes, name: bytes) -> bytes:
    return tagged(type_, kind + name + b"\0")
