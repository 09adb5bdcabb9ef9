"""Sans-IO PostgreSQL wire codec: bytes in, typed events out, bytes from encode(event)."""

from .codec import (
    NEED_DATA,
    StartupDecoder,
    decode_backend,
    encode,
    error_response,
    sasl_initial_flag,
    sasl_mechanisms,
    without_channel_binding,
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
    "NEED_DATA",
    "Authentication",
    "BackendKeyData",
    "CancelRequest",
    "ErrorResponse",
    "Event",
    "Frame",
    "Framer",
    "GSSENCRequest",
    "LocalProtocolError",
    "NoticeResponse",
    "ParameterStatus",
    "ProtocolError",
    "ReadyForQuery",
    "RemoteProtocolError",
    "SSLRequest",
    "StartupDecoder",
    "StartupMessage",
    "UnknownMessage",
    "decode_backend",
    "encode",
    "error_response",
    "sasl_initial_flag",
    "sasl_mechanisms",
    "without_channel_binding",
]
