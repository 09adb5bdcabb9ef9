"""Sans-IO PostgreSQL wire codec: bytes in, typed events out, bytes from encode(event)."""

from .codec import (
    NEED_DATA,
    StartupDecoder,
    decode_backend,
    encode,
    error_response,
)
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
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
from .framer import Frame, Framer

__all__ = [
    "NEED_DATA", "StartupDecoder", "decode_backend", "encode", "error_response",
    "LocalProtocolError", "ProtocolError", "RemoteProtocolError",
    "Authentication", "BackendKeyData", "CancelRequest", "ErrorResponse", "Event",
    "GSSENCRequest", "NoticeResponse", "ParameterStatus", "ReadyForQuery", "SSLRequest",
    "StartupMessage", "UnknownMessage", "Frame", "Framer",
]
