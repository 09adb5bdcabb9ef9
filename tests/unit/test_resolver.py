"""resolve() maps a DNS question and a Topology to the authoritative answer."""

from __future__ import annotations

from dnslib import QTYPE, RCODE, DNSRecord

from pgaurora.core.topology import Health, NodeState, Role, Topology
from pgaurora.dns.resolver import Zone, formerr, resolve

ZONE = Zone("demo.pgaurora.internal", ttl=1)
NODES = (
    NodeState("n1", "127.0.0.11", 5432, Role.PRIMARY, Health.HEALTHY),
    NodeState("n2", "127.0.0.12", 5432, Role.REPLICA, Health.HEALTHY),
    NodeState("n3", "127.0.0.13", 5432, Role.REPLICA, Health.LAGGING),
)
TOPOLOGY = Topology("demo", NODES, writer="n1", readers=("n2",), epoch=3)


def _a(name, topology=TOPOLOGY, zone=ZONE, turn=0, qtype="A"):
    reply = resolve(DNSRecord.question(name, qtype), topology, zone, turn)
    return reply, [str(rr.rdata) for rr in reply.rr]


def test_writer_reader_and_instances():
    assert _a("writer.demo.pgaurora.internal")[1] == ["127.0.0.11"]
    assert _a("reader.demo.pgaurora.internal")[1] == ["127.0.0.12"]  # n3 lags: excluded
    assert _a("n3.demo.pgaurora.internal")[1] == ["127.0.0.13"]
    assert _a("WRITER.Demo.PGAurora.internal")[1] == ["127.0.0.11"]


def test_reader_rotates_and_falls_back_to_writer():
    two = Topology("demo", NODES, writer="n1", readers=("n2", "n3"))
    assert [_a("reader.demo.pgaurora.internal", two, turn=t)[1][0] for t in range(2)] == ["127.0.0.12", "127.0.0.13"]
    none = Topology("demo", NODES, writer="n1", readers=())
    assert _a("reader.demo.pgaurora.internal", none)[1] == ["127.0.0.11"]
    refuse = Zone("demo.pgaurora.internal", reader_fallback=False)
    reply, answers = _a("reader.demo.pgaurora.internal", none, zone=refuse)
    assert answers == [] and reply.header.rcode == RCODE.NOERROR


def test_writer_without_primary_is_nodata_not_nxdomain():
    reply, answers = _a("writer.demo.pgaurora.internal", Topology("demo", NODES))
    assert answers == [] and reply.header.rcode == RCODE.NOERROR and reply.auth


def test_rcodes_for_unknown_names_and_foreign_zones():
    assert _a("nope.demo.pgaurora.internal")[0].header.rcode == RCODE.NXDOMAIN
    assert _a("a.b.demo.pgaurora.internal")[0].header.rcode == RCODE.NXDOMAIN
    assert _a("example.com")[0].header.rcode == RCODE.REFUSED


def test_srv_and_soa_records():
    reply, _ = _a("_postgresql._tcp.reader.demo.pgaurora.internal", qtype="SRV")
    assert [(rr.rdata.port, str(rr.rdata.target)) for rr in reply.rr] == [(5432, "n2.demo.pgaurora.internal.")]
    reply, _ = _a("demo.pgaurora.internal", qtype="SOA")
    assert reply.rr[0].rtype == QTYPE.SOA and reply.rr[0].rdata.times[0] == 3  # serial = epoch


def test_formerr_keeps_id_and_ignores_responses_and_runts():
    packet = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00garbage"
    reply = formerr(packet)
    assert reply[:2] == b"\xab\xcd" and reply[2] & 0x80 and reply[3] & 0x0F == RCODE.FORMERR
    assert formerr(b"\x00\x01") is None
    assert formerr(b"\xab\xcd\x81\x80" + bytes(8)) is None


def test_proxy_name_lists_every_live_pgaurora_instance():
    from dataclasses import replace

    reply, answers = _a("proxy.demo.pgaurora.internal", replace(TOPOLOGY, proxies=("127.0.0.1", "127.0.0.2")))
    assert answers == ["127.0.0.1", "127.0.0.2"] and reply.header.rcode == RCODE.NOERROR
    reply, answers = _a("proxy.demo.pgaurora.internal")  # none known yet: NODATA, not NXDOMAIN
    assert answers == [] and reply.header.rcode == RCODE.NOERROR
