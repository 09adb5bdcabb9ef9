"""construct definitions of the PostgreSQL v3 messages pgaurora parses: the only home of construct."""

from construct import (
    Byte,
    Bytes,
    Computed,
    CString,
    GreedyBytes,
    GreedyRange,
    If,
    Int32sb,
    Int32ub,
    Prefixed,
    RepeatUntil,
    Struct,
    this,
)

PROTOCOL_3_0 = 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

HEADER_SIZE = 5  # 1-byte type + Int32 self-inclusive length
MAX_STARTUP_PACKET = 10_000  # as PostgreSQL's MAX_STARTUP_PACKET_LENGTH

# Untagged packets of the startup phase: Int32 length (counts itself), Int32 code, body.
StartupPacket = Struct(
    "length" / Int32sb,
    "code" / Int32ub,
    "body" / Bytes(this.length - 8),
)
# StartupMessage body: name\0value\0 ... \0
StartupParameters = GreedyRange(CString("utf8"))
# CancelRequest body: process id, then the secret key (4 bytes before protocol 3.2).
CancelBody = Struct("process_id" / Int32ub, "secret_key" / GreedyBytes)

# Tagged messages: Byte type + Int32 length that includes itself.
TaggedMessage = Struct(
    "type" / Bytes(1),
    "payload" / Prefixed(Int32ub, GreedyBytes, includelength=True),
)

Authentication = Struct("code" / Int32ub, "data" / GreedyBytes)
BackendKeyData = Struct("process_id" / Int32ub, "secret_key" / GreedyBytes)
ParameterStatus = Struct("name" / CString("utf8"), "value" / CString("utf8"))
ReadyForQuery = Struct("status" / Bytes(1))

# ErrorResponse / NoticeResponse: (Byte code, CString value)* terminated by a zero byte.
NoticeField = Struct(
    "code" / Byte,
    "value" / If(this.code != 0, CString("utf8")),
    "last" / Computed(this.code == 0),
)
NoticeFields = RepeatUntil(lambda obj, lst, ctx: obj["code"] == 0, NoticeField)
