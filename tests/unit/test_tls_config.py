"""[tls] is validated at load, and the SASL helpers that keep channel binding honest through the proxy."""

from __future__ import annotations

import pytest
import trustme

from pgaurora.core.config import BackendTls, ClientTls, build
from pgaurora.core.errors import ConfigError
from pgaurora.core.sslcontexts import Contexts, node_ssl
from pgaurora.wire import Framer, sasl_initial_flag, sasl_mechanisms, without_channel_binding

NODES = [{"name": "n1", "host": "127.0.0.11"}]


@pytest.fixture
def pem(tmp_path):
    ca = trustme.CA()
    path = tmp_path / "proxy.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(path))
    return str(path)


def test_without_tls_section_nothing_is_encrypted():
    cfg = build({"nodes": NODES})
    assert cfg.tls.client_mode is ClientTls.DISABLE and cfg.tls.backend_tls is BackendTls.DISABLE
    contexts = Contexts(cfg.tls)
    assert contexts.server is None and contexts.client is None and node_ssl(cfg.tls) is False


def test_a_certificate_turns_client_tls_on_as_allow(pem):
    cfg = build({"nodes": NODES, "tls": {"cert_file": pem, "key_file": pem}})
    assert cfg.tls.client_mode is ClientTls.ALLOW
    contexts = Contexts(cfg.tls)
    assert contexts.server is not None and not contexts.required and contexts.certificate.startswith(b"\x30")


def test_every_tls_problem_is_listed_at_once(tmp_path):
    with pytest.raises(ConfigError) as info:
        build(
            {
                "nodes": NODES,
                "tls": {
                    "cert_file": str(tmp_path / "missing.pem"),
                    "client_tls": "require",
                    "backend_tls": "verify-full",
                    "ca_file": str(tmp_path / "nope"),
                },
            }
        )
    (problem,) = info.value.problems
    for part in (
        "cert_file and key_file go together",
        "backend_tls = 'verify-full' needs backend_ca_file",
        "cert_file: no such file",
        "ca_file: no such file",
    ):
        assert part in problem, problem


def test_client_tls_without_a_certificate_is_refused():
    with pytest.raises(ConfigError, match="client_tls = 'require' needs cert_file and key_file"):
        build({"nodes": NODES, "tls": {"client_tls": "require"}})


def test_an_unusable_key_is_named_at_start(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("nothing here\n")
    cfg = build({"nodes": NODES, "tls": {"cert_file": str(bad), "key_file": str(bad)}})
    with pytest.raises(ConfigError, match="tls: cannot load"):
        Contexts(cfg.tls)


@pytest.mark.parametrize("mode, expected", [("prefer", "prefer"), ("require", "context")])
def test_the_monitor_encrypts_as_backend_tls_says(mode, expected):
    ssl_arg = node_ssl(build({"nodes": NODES, "tls": {"backend_tls": mode}}).tls)
    assert (ssl_arg if isinstance(ssl_arg, str) else "context") == expected


def _frame(data: bytes):
    framer = Framer()
    framer.feed(data)
    return framer.next_frame()


def test_scram_plus_is_dropped_from_the_mechanisms_offered():
    payload = (10).to_bytes(4, "big") + b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
    assert sasl_mechanisms(payload) == [b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"]
    frame = _frame(without_channel_binding(sasl_mechanisms(payload)))
    assert frame.type == b"R" and sasl_mechanisms(frame.payload) == [b"SCRAM-SHA-256"]


def test_other_authentication_requests_are_not_sasl():
    assert sasl_mechanisms((5).to_bytes(4, "big") + b"salt") is None  # MD5
    assert sasl_mechanisms((0).to_bytes(4, "big")) is None  # AuthenticationOk


@pytest.mark.parametrize("flag", [b"n", b"y", b"p"])
def test_the_channel_binding_flag_of_a_sasl_initial_response(flag):
    data = flag + b",,n=,r=abc"
    payload = b"SCRAM-SHA-256\0" + len(data).to_bytes(4, "big") + data
    assert sasl_initial_flag(payload) == (b"SCRAM-SHA-256", flag)
    assert sasl_initial_flag(b"\0") is None and sasl_initial_flag(b"SCRAM") is None


def test_etcd_over_https_takes_a_ca_and_a_client_certificate(pem):
    cfg = build(
        {
            "nodes": NODES,
            "dcs": {"etcd": ["https://127.0.0.51:2379"], "ca_file": pem, "cert_file": pem, "key_file": pem},
        }
    )
    assert cfg.dcs.tls and cfg.dcs.ca_file == pem


@pytest.mark.parametrize(
    "dcs, problem",
    [
        ({"etcd": ["http://127.0.0.51:2379", "https://127.0.0.52:2379"]}, "mix http:// and https://"),
        ({"etcd": ["http://127.0.0.51:2379"], "ca_file": "PEM"}, "ca_file need https:// etcd endpoints"),
        ({"etcd": ["https://127.0.0.51:2379"], "cert_file": "PEM"}, "cert_file and key_file go together"),
        ({"etcd": ["https://127.0.0.51:2379"], "ca_file": "/nonexistent.pem"}, "ca_file: no such file"),
    ],
)
def test_a_bad_etcd_tls_setting_is_named(pem, dcs, problem):
    dcs = {k: pem if v == "PEM" else v for k, v in dcs.items()}
    with pytest.raises(ConfigError) as info:
        build({"nodes": NODES, "dcs": dcs})
    assert problem in str(info.value)
