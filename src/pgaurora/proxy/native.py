"""NativeRelay: hands established sessions to C relay threads (`_relay`) and hears when they end.

The C extension is built by the package's own install where a compiler is present; where it is
not, `NativeRelay.open()` returns None and sessions stay on the Python (or kernel) relay. Built with
OpenSSL's headers, the threads also carry TLS sessions, taking over the TLS state Python's handshake
made; otherwise TLS sessions stay in Python.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import struct
from typing import Protocol

from ..wire import error_response
from .tls import TlsTransport

try:
    from . import _relay  # type: ignore[attr-defined]  # the C extension, which has no stubs
except ImportError:  # built without a compiler: pure-Python fallback
    _relay = None


class _Leg(Protocol):
    @property
    def transport(self) -> asyncio.Transport: ...


class Adoptable(Protocol):
    """What the relay threads need of a session (relay.Session): its two transports, and whom to tell."""

    @property
    def client(self) -> _Leg: ...

    @property
    def server(self) -> _Leg: ...

    @property
    def lost_reason(self) -> tuple[str, str]: ...

    def relay_ended(self) -> None: ...


log = logging.getLogger("pgaurora.proxy")


def available() -> bool:
    return _relay is not None


def _tls_compatible() -> bool:
    """Was the extension built with OpenSSL, the very libssl that Python's ssl module uses?"""
    import _ssl

    return _relay is not None and _relay.tls_compatible(_ssl.__file__)


def default_threads() -> int:
    """One relay thread per core this process may run on, as HAProxy's nbthread."""
    return max(1, len(os.sched_getaffinity(0)))


class NativeRelay:
    """Owns the relay threads; the session table maps the ids they report back to Sessions."""

    def __init__(self, threads: int) -> None:
        self._relay = _relay.Relay(threads)
        self.tls = _tls_compatible()  # the threads can carry TLS sessions too
        self._sessions: dict[int, Adoptable] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def open(cls, threads: int = 0) -> NativeRelay | None:
        if _relay is None:
            return None
        return cls(threads or default_threads())

    @property
    def threads(self) -> int:
        return self._relay.threads

    def adopt(self, session: Adoptable) -> int | None:
        """Stop reading both transports in Python and let a relay thread carry the session's bytes.
        Returns the session's id, or None when the threads cannot take it (it stays in Python)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._relay.notify_fd, self._drain)
        client, server = session.client.transport, session.server.transport
        encrypted = [t for t in (client, server) if isinstance(t, TlsTransport)]
        states = [t.tls_state() if isinstance(t, TlsTransport) else None for t in (client, server)]
        if encrypted and (not self.tls or sum(s is not None for s in states) < len(encrypted)):
            return None  # the session stays on the Python path
        client.pause_reading()
        server.pause_reading()
        session_id = next(self._ids)
        try:
            self._relay.add(
                session_id,
                client.get_extra_info("socket").fileno(),
                server.get_extra_info("socket").fileno(),
                error_response(*session.lost_reason),
                *states,
            )
        except (OSError, RuntimeError, TypeError, ValueError) as exc:  # out of descriptors, shutting down
            log.warning("native relay refused a session (%s); relaying it in Python", exc)
            client.resume_reading()
            server.resume_reading()
            return None
        for transport in encrypted:
            transport.handed_over()
        self._sessions[session_id] = session
        return session_id

    def terminate(self, session_id: int, sqlstate: str, message: str) -> None:
        """End a session; the client hears why when the server is between messages."""
        if self._sessions.pop(session_id, None) is not None:
            self._relay.terminate(session_id, error_response(sqlstate, message))

    def _drain(self) -> None:
        try:
            data = os.read(self._relay.notify_fd, 8 * 4096)
        except BlockingIOError:
            return
        for (session_id,) in struct.iter_unpack("=Q", data):
            session = self._sessions.pop(session_id, None)
            if session is not None:
                session.relay_ended()

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._relay.notify_fd)
        self._relay.close()
        self._sessions.clear()
