"""The SSLContexts of `[tls]`: the endpoints' (reloadable), and the one pgaurora uses toward the nodes."""

from __future__ import annotations

import ssl
from pathlib import Path

from .config import BackendTls, ClientTls, TlsConfig
from .errors import ConfigError

ALPN = "postgresql"  # what PostgreSQL 17+ clients send with sslnegotiation=direct


class Contexts:
    """The SSLContexts of [tls]: `server` for the endpoints (swapped by reload()), `client` for the nodes."""

    def __init__(self, tls: TlsConfig) -> None:
        self.tls = tls
        self.server = server_context(tls) if tls.client_mode is not ClientTls.DISABLE else None
        self.certificate = _first_certificate(certificate_file(tls)) if self.server is not None else None
        self.client = client_context(tls) if tls.backend_tls is not BackendTls.DISABLE else None

    @property
    def required(self) -> bool:
        return self.tls.client_mode is ClientTls.REQUIRE

    def reload(self) -> bool:
        """Read the certificate and key again; new sessions use them, live ones keep theirs.
        Raises ConfigError, and keeps the old context, when the files are unusable."""
        if self.server is None:
            return False
        server = server_context(self.tls)
        self.server, self.certificate = server, _first_certificate(certificate_file(self.tls))
        return True


def certificate_file(tls: TlsConfig) -> str:
    """The certificate file, which the config requires wherever TLS is on."""
    if tls.cert_file is None:
        raise ConfigError(["tls: cert_file is required when TLS is on"])
    return tls.cert_file


def _first_certificate(path: str) -> bytes:
    """DER of the first certificate in a PEM file: the one the endpoints present."""
    text = Path(path).read_text()
    end = text.index(ssl.PEM_FOOTER) + len(ssl.PEM_FOOTER)
    return ssl.PEM_cert_to_DER_cert(text[text.index(ssl.PEM_HEADER) : end])


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols([ALPN])
    try:
        ctx.load_cert_chain(certificate_file(tls), tls.key_file)
        if tls.ca_file:
            ctx.load_verify_locations(tls.ca_file)
            ctx.verify_mode = ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"tls: cannot load {tls.cert_file} / {tls.key_file}: {exc}"]) from None
    return ctx


def admin_context(tls: TlsConfig, client_ca_file: str | None) -> ssl.SSLContext:
    """HTTPS for the admin port, with the endpoints' certificate; client certificates are asked for (and
    verified against client_ca_file) when there is one, never required: a bearer token does as well."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certificate_file(tls), tls.key_file)
        if client_ca_file:
            ctx.load_verify_locations(client_ca_file)
            ctx.verify_mode = ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            [f"admin.tls: cannot load {tls.cert_file} / {tls.key_file} / {client_ca_file}: {exc}"]
        ) from None
    return ctx


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """For the nodes: verify-full checks the chain and the host name, prefer and require encrypt only."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.backend_tls is BackendTls.VERIFY_FULL:
        try:
            ctx.load_verify_locations(tls.backend_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([f"tls.backend_ca_file: cannot load {tls.backend_ca_file}: {exc}"]) from None
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def node_ssl(tls: TlsConfig) -> bool | str | ssl.SSLContext:
    """asyncpg's `ssl` argument for the monitor's connections to the nodes, as backend_tls says."""
    match tls.backend_tls:
        case BackendTls.DISABLE:
            return False
        case BackendTls.PREFER:
            return "prefer"
    return client_context(tls)
