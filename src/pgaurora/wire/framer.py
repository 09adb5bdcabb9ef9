"""Split a backend byte stream into tagged messages by reading only the 5-byte headers."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RemoteProtocolError
from .messages import HEADER_SIZE

DEFAULT_MAX_MESSAGE = 1 << 30  # PostgreSQL's own limit on a message


@dataclass(frozen=True, slots=True)
class Frame:
    """One tagged message: its type byte and a zero-copy view of its payload."""

    type: bytes
    payload: memoryview

    @property
    def wire_length(self) -> int:
        return HEADER_SIZE + len(self.payload)


class Framer:
    """feed(bytes) buffers; next_frame() returns a Frame or None when more bytes are needed.

    Payloads are memoryviews into the fed bytes: nothing is copied unless a message
    spans two feeds, in which case only the unconsumed tail is joined.
    """

    __slots__ = ("_buf", "_max", "_pos", "eof")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buf = b""
        self._pos = 0
        self._max = max_message
        self.eof = False

    def feed(self, data: bytes) -> None:
        if not data:
            self.eof = True
            return
        if self._pos >= len(self._buf):
            self._buf, self._pos = bytes(data), 0
        else:
            self._buf, self._pos = self._buf[self._pos :] + data, 0

    @property
    def pending(self) -> int:
        return len(self._buf) - self._pos

    def take_rest(self) -> bytes:
        """The bytes not yet returned as frames (a partial message), removing them."""
        rest = self._buf[self._pos :]
        self._buf, self._pos = b"", 0
        return rest

    def next_frame(self) -> Frame | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            self._check_eof()
            return None
        length = int.from_bytes(buf[pos + 1 : pos + 5], "big", signed=True)
        if length < 4 or length > self._max:
            raise RemoteProtocolError(f"invalid message length {length}")
        end = pos + 1 + length
        if end > len(buf):
            self._check_eof()
            return None
        self._pos = end
        return Frame(buf[pos : pos + 1], memoryview(buf)[pos + HEADER_SIZE : end])

    def _check_eof(self) -> None:
        if self.eof and self.pending:
            raise RemoteProtocolError("connection closed in the middle of a message")
