"""ServerStream: the replies of a lent server connection, read by their headers only: what the client gets,
what is cut (replies to pgaurora's own messages), and where each ReadyForQuery falls."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ..wire import RemoteProtocolError

SWALLOW, PASS, SYNC = 0, 1, 2  # what becomes of the next ParseComplete/CloseComplete, or a Sync's place
_Z, _PARSED, _CLOSED, _COMMAND, _ERROR = 0x5A, 0x31, 0x33, 0x43, 0x45
_INSPECTED = frozenset({_Z, _PARSED, _CLOSED, _COMMAND, _ERROR})  # small messages read whole; others are skipped
_MAX_INSPECTED = 1 << 16


class ServerStream:
    """relay(data) -> the bytes to send the client. Pure: no I/O; table-tested in tests/unit."""

    def __init__(self, on_ready: Callable[[bytes, bool], None]) -> None:
        self.on_ready = on_ready  # (status, rolled_back) at each ReadyForQuery the client sees
        self.replies: deque[int] = deque()  # per ParseComplete/CloseComplete owed: SWALLOW or PASS; SYNC per Z
        self.hidden = 0  # ReadyForQuery of pgaurora's own queries still to come: everything until it is cut
        self.expected = 0  # ReadyForQuery messages owed for the client's Query, Sync and FunctionCall
        self.status = b"I"
        self.fatal: str | None = None  # a FATAL the server sent as it ended the connection: cut, and kept here
        self._rolled_back = False
        self._head = b""  # an inspected message, or a header, not yet whole
        self._skip = 0  # bytes of the current (uninspected) message still to come
        self._cutting = False  # those bytes are cut, not relayed

    def relay(self, data: bytes) -> bytes:
        if self._head:
            data, self._head = self._head + data, b""
        n = len(data)
        i = start = 0
        if self._skip:  # the rest of a message begun in an earlier chunk
            if self._skip >= n:
                self._skip -= n
                return b"" if self._cutting else data
            i, self._skip = self._skip, 0
            start = i if self._cutting else 0
        self._cutting = False
        pieces = []
        while i + 5 <= n:
            kind, length = data[i], int.from_bytes(data[i + 1 : i + 5], "big")
            if length < 4:
                raise RemoteProtocolError(f"invalid message length {length} from the node")
            end = i + 1 + length
            if kind in _INSPECTED and length < _MAX_INSPECTED:
                if end > n:
                    break  # read it whole with the next chunk
                if not self._keep(kind, data, i + 5, end):
                    pieces.append(data[start:i])
                    start = end
            elif self.hidden:  # a reply to pgaurora's own query: cut, however long
                pieces.append(data[start:i])
                start, self._cutting = min(end, n), end > n
            i = end
        if i > n:
            self._skip = i - n
            pieces.append(data[start:n])
        else:
            self._head = data[i:]
            pieces.append(data[start:i])
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _keep(self, kind: int, data: bytes, body: int, end: int) -> bool:
        """Account for one inspected message; False: cut it."""
        if self.hidden:
            if kind == _Z:
                self.hidden -= 1
            return False
        if kind == _Z:
            while self.replies and self.replies.popleft() != SYNC:
                pass
            self.expected = max(0, self.expected - 1)
            self.status = data[body : body + 1]
            rolled_back, self._rolled_back = self._rolled_back, False
            self.on_ready(self.status, rolled_back)
            return True
        if kind == _COMMAND:
            if data[body:end].startswith(b"ROLLBACK"):
                self._rolled_back = True
            return True
        if kind == _ERROR:
            fields = {part[:1]: part[1:] for part in data[body:end].split(b"\0") if part}
            if fields.get(b"V", fields.get(b"S")) in (b"FATAL", b"PANIC"):  # the server connection is ending:
                self.fatal = fields.get(b"M", b"").decode("utf-8", "replace")  # the client hears what was lost
                return False
            return True
        return not (self.replies and self.replies.popleft() == SWALLOW)
