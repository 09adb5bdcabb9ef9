"""TLS for both legs of a session: ssl.SSLObject over MemoryBIO, driven by our own transport.

pgaurora never uses `loop.start_tls` or SSLProtocol: under uvloop they left sessions hanging. Here the
raw socket transport stays a plain one; `TlsTransport` sits on top of it as its protocol, feeds what
it receives into OpenSSL's memory BIO, hands the plaintext to the application protocol, and writes
what OpenSSL produced straight back to the raw transport. Closing never waits for the peer's
close_notify, so no TLS state can keep a session open.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import cast

log = logging.getLogger("pgaurora.proxy")
READ_SIZE = 16384 + 1024  # a TLS record holds at most 16 kB of plaintext; SSL_read returns one at a time
# Plaintext per TLS record, as PostgreSQL's own 8 kB send buffer makes it. libpq reads with 8 kB free in
# its buffer: a 16 kB record leaves the rest decrypted inside OpenSSL, where pgbench's poll() on the
# socket cannot see it, and pgbench then waits forever on a session that has sent everything.
MAX_RECORD = 8192
TLS_HANDSHAKE_RECORD = 0x16  # first byte of a direct TLS connection (sslnegotiation=direct)


class TlsTransport(asyncio.Transport):
    """A Transport that encrypts onto, and decrypts from, a raw transport it takes over as protocol.

    `on_handshake(exc)` is called once: with None when the handshake completed, or with the error
    that ended it. Plaintext that arrives with the handshake's last flight is delivered right after.
    """

    def __init__(
        self,
        raw: asyncio.Transport,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        app: asyncio.Protocol,
        on_handshake: Callable[[BaseException | None], None],
        server_hostname: str | None = None,
        early: bytes = b"",
    ) -> None:
        super().__init__()
        self._raw, self._app, self._on_handshake = raw, app, on_handshake
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname)
        self._handshaking, self._closing, self._lost = True, False, False
        self._handed_over = False  # a relay thread drives the TLS state now; never touch it here
        self._held: list[bytes] = []  # plaintext written before the handshake completed
        raw.set_protocol(_RawSide(self))
        if early:
            self._received(early)
        elif not server_side:
            self._handshake()  # the client speaks first

    # -- the raw side ------------------------------------------------------------------------
    def _received(self, data: bytes) -> None:
        if self._closing or self._handed_over:
            return
        self._in.write(data)
        if self._handshaking and not self._handshake():
            return
        self._read_plaintext()

    def _handshake(self) -> bool:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            self._flush()  # the alert that tells the peer why
            self._end_handshake(exc)
            self.abort()
            return False
        self._flush()
        self._end_handshake(None)
        for data in self._held:
            self.write(data)
        self._held.clear()
        return not self._closing

    def _end_handshake(self, exc: BaseException | None) -> None:
        if self._handshaking:
            self._handshaking = False
            self._on_handshake(exc)

    def _read_plaintext(self) -> None:
        """Deliver every record OpenSSL can decrypt, until it wants more input. Only SSLWantReadError
        says that: OpenSSL may hold records it has read but not decrypted, which neither the BIO's nor
        SSL_pending's count shows, and stopping on those counts left sessions waiting forever."""
        read = self._ssl.read
        while not self._closing:
            try:
                chunk = read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the peer's close_notify
                self.close()
                break
            except ssl.SSLError as exc:
                log.info("TLS error, closing the connection: %s", exc)
                self.abort()
                break
            if not chunk:
                self.close()
                break
            self._app.data_received(chunk)
        self._flush()  # session tickets, key updates

    def _flush(self) -> None:
        if self._out.pending and not self._lost and not self._handed_over:
            self._raw.write(self._out.read())

    def _raw_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._closing = True
        self._end_handshake(exc or ConnectionResetError("connection closed during the TLS handshake"))
        self._app.connection_lost(exc)

    # -- the asyncio.Transport the application sees ---------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._handed_over:
            return
        if self._handshaking:
            self._held.append(bytes(data))
            return
        if len(data) <= MAX_RECORD:
            self._ssl.write(data)
        else:
            view, write = memoryview(data), self._ssl.write
            for start in range(0, len(view), MAX_RECORD):
                write(view[start : start + MAX_RECORD])
        self._flush()

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        """Send close_notify and close; never wait for the peer's."""
        if self._closing:
            return
        self._closing = True
        if not self._handshaking and not self._handed_over:
            try:
                self._ssl.unwrap()
            except (ssl.SSLError, ValueError):
                pass
            self._flush()
        self._raw.close()

    def abort(self) -> None:
        self._closing = True
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._raw.is_closing()

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        if self._handed_over:  # the TLS state belongs to a relay thread now
            return self._raw.get_write_buffer_size()
        return self._raw.get_write_buffer_size() + self._out.pending

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = cast(asyncio.Protocol, protocol)  # a stream transport carries stream protocols

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app

    def get_extra_info(self, name: str, default=None):
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        return self._raw.get_extra_info(name, default)

    def tls_state(self):
        """The SSL state (ssl.SSLObject's _ssl._SSLSocket) for a relay thread to take over, or None while
        anything is still buffered in it or the handshake is not complete."""
        if self._handshaking or self._closing or self._in.pending or self._out.pending or self._ssl.pending():
            return None
        return self._ssl._sslobj

    def handed_over(self) -> None:
        """A relay thread drives the TLS state from now on: this transport only closes the socket."""
        self._handed_over = True

    @property
    def alpn(self) -> str | None:
        return self._ssl.selected_alpn_protocol()


class _RawSide(asyncio.Protocol):
    """The raw transport's protocol: everything goes to the TlsTransport above it."""

    __slots__ = ("tls",)

    def __init__(self, tls: TlsTransport) -> None:
        self.tls = tls

    def data_received(self, data: bytes) -> None:
        self.tls._received(data)

    def eof_received(self) -> bool:
        return False  # closes the raw transport, which reports connection_lost

    def pause_writing(self) -> None:
        self.tls._app.pause_writing()

    def resume_writing(self) -> None:
        self.tls._app.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tls._raw_lost(exc)
