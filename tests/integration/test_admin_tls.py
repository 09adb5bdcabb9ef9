"""The admin API over HTTPS, with TLS client certificates as credentials beside bearer tokens."""

from __future__ import annotations

import os
import ssl
import subprocess
import urllib.error

import pytest
import trustme

from pgaurora.service.admin.client import AdminError, call
from tests.helpers import PGAURORA, service_config

pytestmark = pytest.mark.integration


@pytest.fixture
def https(fresh_cluster, service, tmp_path, monkeypatch):
    ca, foreign = trustme.CA(), trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    for name, issuer in (("ops-client", ca), ("stranger", ca), ("impostor", foreign)):
        cert = issuer.issue_cert(name, common_name="ops-client" if name == "impostor" else name)
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / f"{name}.pem"))
    pem, ca_file = str(tmp_path / "server.pem"), str(tmp_path / "ca.pem")
    svc = service(
        service_config(
            fresh_cluster(replicas=2),
            tls={"cert_file": pem, "key_file": pem},
            admin={
                "tls": True,
                "client_ca_file": ca_file,
                "certificates": [{"common_name": "ops-client", "scope": "operate"}],
            },
        )
    )
    monkeypatch.setenv("PGAURORA_ADMIN_CA_FILE", ca_file)
    svc.url = svc.admin_url.replace("http://", "https://")
    svc.dir = tmp_path
    return svc


def _as(monkeypatch, https, name: str | None) -> None:
    if name is None:
        monkeypatch.delenv("PGAURORA_ADMIN_CERT_FILE", raising=False)
    else:
        monkeypatch.setenv("PGAURORA_ADMIN_CERT_FILE", str(https.dir / f"{name}.pem"))


def test_the_admin_port_serves_https_only_with_a_token_or_a_mapped_client_certificate(https, monkeypatch):
    with pytest.raises((urllib.error.URLError, ConnectionError, AdminError)):
        call(https.admin_url, "/status", timeout=5)  # plain HTTP to the HTTPS port
    assert call(https.url, "/status")["writer"]["node"] == "n1"  # the local token, over HTTPS
    with pytest.raises(AdminError) as none:
        call(https.url, "/status", token="")
    assert none.value.status == 401
    _as(monkeypatch, https, "ops-client")
    assert call(https.url, "/status", token="")["writer"]["node"] == "n1"
    assert call(https.url, "/drain/n2", "POST", {}, token="")["drained"] == ["n2"]  # operate
    with pytest.raises(AdminError) as weak:
        call(https.url, "/nodes/n2", "DELETE", {}, token="")  # admin
    assert weak.value.status == 403 and "token 'cert:ops-client' has operate" in weak.value.message
    audit = [e for e in https.service.events.recent() if e["kind"] == "audit"]
    assert {e["token"] for e in audit} == {"cert:ops-client"}
    _as(monkeypatch, https, "stranger")  # signed by the right CA, but mapped to nothing
    with pytest.raises(AdminError) as stranger:
        call(https.url, "/status", token="")
    assert stranger.value.status == 401
    _as(monkeypatch, https, "impostor")  # the right name from another CA: the handshake itself fails
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        call(https.url, "/status", token="")


def test_the_cli_talks_https_with_the_ca_it_is_given(https):
    env = {**os.environ, "PGAURORA_ADMIN_CA_FILE": str(https.dir / "ca.pem")}
    out = subprocess.run(
        [*PGAURORA, "status", "--admin", https.url], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0 and "n1" in out.stdout, out.stderr
    env.pop("PGAURORA_ADMIN_CA_FILE")
    untrusted = subprocess.run(
        [*PGAURORA, "status", "--admin", https.url], capture_output=True, text=True, timeout=60, env=env
    )
    assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr, untrusted.stderr
