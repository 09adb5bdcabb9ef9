"""DNS server glue: UDP and TCP listeners that answer from the hub's current Topology."""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct

from dnslib import DNSError, DNSRecord

from ..core.topology import TopologyHub
from .resolver import Zone, formerr, resolve

log = logging.getLogger("pgaurora.dns")
MAX_TCP_MESSAGE = 65535


class DnsServer:
    def __init__(self, hub: TopologyHub, zone: Zone, host: str, port: int) -> None:
        self.hub, self.zone, self.host, self.port = hub, zone, host, port
        self._turn = itertools.count()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def answer(self, packet: bytes) -> bytes | None:
        try:
            request = DNSRecord.parse(packet)
            if request.header.qr or len(request.questions) != 1:
                return formerr(packet)
            return resolve(request, self.hub.current, self.zone, next(self._turn)).pack()
        except (DNSError, ValueError, IndexError, UnicodeDecodeError, struct.error):
            return formerr(packet)
        except Exception:  # a query must never take the server down
            log.exception("DNS query could not be answered")
            return formerr(packet)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.host, self.port))
        self._tcp = await asyncio.start_server(self._serve_tcp, self.host, self.port, reuse_address=True)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(10):
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    packet = await reader.readexactly(size)
                reply = self.answer(packet)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport = None  # type: ignore[assignment]  # set by connection_made(), which asyncio calls first

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]  # UDP's transport
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        reply = self.server.answer(data)
        if reply is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS UDP error: %s", exc)
