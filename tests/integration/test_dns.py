"""Real DNS queries (dnspython, UDP and TCP) against the server fed by the monitor's topology."""

from __future__ import annotations

import socket

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest


def _ask(proxy, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, proxy.config.dns.host, port=proxy.config.dns.port, timeout=2)


def _addresses(reply) -> list[str]:
    return [r.address for rrset in reply.answer for r in rrset if rrset.rdtype == dns.rdatatype.A]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_writer_reader_and_instance_names_resolve(proxy, cluster, tcp):
    zone = proxy.config.zone
    writer = _ask(proxy, f"writer.{zone}", tcp=tcp)
    assert writer.flags & dns.flags.AA and _addresses(writer) == [cluster.primary.host]
    assert writer.answer[0].ttl == proxy.config.dns.ttl
    assert sorted(_addresses(_ask(proxy, f"reader.{zone}", tcp=tcp))) == sorted(r.host for r in cluster.replicas)
    for node in cluster.nodes:
        assert _addresses(_ask(proxy, f"{node.name}.{zone}", tcp=tcp)) == [node.host]


def test_reader_answers_rotate(proxy, cluster):
    firsts = {_addresses(_ask(proxy, f"reader.{proxy.config.zone}"))[0] for _ in range(6)}
    assert firsts == {r.host for r in cluster.replicas}


def test_srv_records_carry_ports(proxy, cluster):
    reply = _ask(proxy, f"_postgresql._tcp.writer.{proxy.config.zone}", "SRV")
    (srv,) = [r for rrset in reply.answer for r in rrset]
    assert srv.port == cluster.primary.port
    assert str(srv.target).rstrip(".") == f"n1.{proxy.config.zone}"
    assert [r.address for rrset in reply.additional for r in rrset] == [cluster.primary.host]


def test_unknown_name_is_nxdomain_and_other_zone_refused(proxy):
    assert _ask(proxy, f"nosuch.{proxy.config.zone}").rcode() == dns.rcode.NXDOMAIN
    assert _ask(proxy, "writer.example.com").rcode() == dns.rcode.REFUSED
    assert _ask(proxy, f"writer.{proxy.config.zone}", "AAAA").rcode() == dns.rcode.NOERROR


def test_malformed_packets_get_formerr_and_server_keeps_answering(proxy, cluster):
    address = (proxy.config.dns.host, proxy.config.dns.port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff\xff", address)
        reply = sock.recv(512)
        assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == dns.rcode.FORMERR
        sock.sendto(b"\x01", address)  # too short to answer: ignored
    assert _addresses(_ask(proxy, f"writer.{proxy.config.zone}")) == [cluster.primary.host]
