"""resolve(): a pure function from a DNS query and a Topology to the authoritative answer."""

from __future__ import annotations

from dataclasses import dataclass

from dnslib import NS, QTYPE, RCODE, RR, SOA, SRV, A, DNSLabel, DNSRecord

from ..core import custom_endpoints
from ..core.config import CustomEndpointConfig
from ..core.topology import NodeState, Topology


@dataclass(frozen=True)
class Zone:
    name: str  # e.g. demo.pgaurora.internal
    ttl: int = 1
    reader_fallback: bool = True  # answer reader.<zone> with the writer when no replica is eligible
    custom: tuple[CustomEndpointConfig, ...] = ()  # custom endpoints: <name>.<zone>

    @property
    def label(self) -> DNSLabel:
        return DNSLabel(self.name)


def _targets(kind: str, topology: Topology, zone: Zone, turn: int) -> list[NodeState] | None:
    """Nodes behind a name, or None when the name does not exist."""
    if kind == "writer":
        return [topology.writer_node] if topology.writer_node else []
    spec = next((e for e in zone.custom if e.name == kind), None)
    if spec is not None:
        return custom_endpoints.targets(spec, topology)
    if kind == "reader":
        readers = list(topology.reader_nodes)
        if not readers:
            return [topology.writer_node] if zone.reader_fallback and topology.writer_node else []
        start = turn % len(readers)
        return readers[start:] + readers[:start]
    node = topology.node(kind)
    return None if node is None else [node]


def _soa(zone: Zone, topology: Topology) -> RR:
    return RR(
        zone.label,
        QTYPE.SOA,
        ttl=zone.ttl,
        rdata=SOA(f"ns.{zone.name}", f"hostmaster.{zone.name}", (max(topology.epoch, 1), 60, 30, 86400, zone.ttl)),
    )


def resolve(request: DNSRecord, topology: Topology, zone: Zone, turn: int = 0) -> DNSRecord:
    reply = request.reply()
    reply.header.aa = 1
    q = request.q
    qname, qtype = q.qname, QTYPE[q.qtype]
    if not qname.matchSuffix(zone.label):
        reply.header.aa = 0
        reply.header.rcode = RCODE.REFUSED
        return reply
    relative = str(qname.stripSuffix(zone.label)).rstrip(".").lower()
    if relative in ("", "@"):
        return _apex(reply, qtype, zone, topology)
    if relative == "proxy":
        return _proxies(reply, qname, qtype, zone, topology)
    srv = relative.startswith("_postgresql._tcp.")
    name = relative.removeprefix("_postgresql._tcp.")
    nodes = _targets(name, topology, zone, turn) if "." not in name else None
    if nodes is None or (srv and qtype not in ("SRV", "ANY")):
        reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(_soa(zone, topology))
        return reply
    if srv:
        for node in nodes:
            target = f"{node.name}.{zone.name}"
            reply.add_answer(RR(qname, QTYPE.SRV, ttl=zone.ttl, rdata=SRV(0, 0, node.port, target)))
            reply.add_ar(RR(target, QTYPE.A, ttl=zone.ttl, rdata=A(node.host)))
    elif qtype in ("A", "ANY"):
        for node in nodes:
            reply.add_answer(RR(qname, QTYPE.A, ttl=zone.ttl, rdata=A(node.host)))
    if not reply.rr:
        reply.add_auth(_soa(zone, topology))  # NODATA
    return reply


def _proxies(reply: DNSRecord, qname, qtype: str, zone: Zone, topology: Topology) -> DNSRecord:
    """proxy.<zone>: an A record per live pgaurora instance, for multi-host connection strings."""
    if qtype in ("A", "ANY"):
        for host in topology.proxies:
            reply.add_answer(RR(qname, QTYPE.A, ttl=zone.ttl, rdata=A(host)))
    if not reply.rr:
        reply.add_auth(_soa(zone, topology))
    return reply


def _apex(reply: DNSRecord, qtype: str, zone: Zone, topology: Topology) -> DNSRecord:
    if qtype in ("SOA", "ANY"):
        reply.add_answer(_soa(zone, topology))
    if qtype in ("NS", "ANY"):
        reply.add_answer(RR(zone.label, QTYPE.NS, ttl=zone.ttl, rdata=NS(f"ns.{zone.name}")))
    if not reply.rr:
        reply.add_auth(_soa(zone, topology))
    return reply


def formerr(packet: bytes) -> bytes | None:
    """A FORMERR reply for an unparsable query, when at least its id and flags can be read."""
    if len(packet) < 12 or packet[2] & 0x80:  # too short, or itself a response: ignore
        return None
    header = bytearray(packet[:12])
    header[2] = 0x80 | (packet[2] & 0x79)  # QR=1, keep opcode and RD
    header[3] = RCODE.FORMERR
    header[4:12] = bytes(8)  # no sections
    return bytes(header)
