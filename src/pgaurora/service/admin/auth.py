"""Admin credentials: bearer tokens with scopes, pgaurora's own token file, and where a client finds a token."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # the CLI reads tokens through this module: it must not load the whole config model
    from ...core.config import AdminScope, Config

LOCAL = "local"  # the name of the admin-scope token pgaurora keeps for the CLI on its own host


@dataclass(frozen=True)
class Credential:
    name: str
    scope: AdminScope
    digest: bytes  # sha256 of the token: tokens are compared as digests, in constant time
    cookie: bool = False  # a console session's cookie: a change also needs the console's own header (CSRF)


class Sessions:
    """Console sessions: short-lived tokens with the operate scope, minted for `pgaurora console --url` and
    traded by the browser for a cookie. Kept in memory: a restart of pgaurora ends them."""

    def __init__(self, clock=time.time) -> None:
        self.clock = clock
        self._live: dict[bytes, float] = {}  # sha256 of the token -> when it expires

    def mint(self, ttl: float) -> tuple[str, float]:
        token, expires = secrets.token_urlsafe(32), self.clock() + ttl
        self._live = {d: until for d, until in self._live.items() if until > self.clock()}
        self._live[_digest(token)] = expires
        return token, expires

    def identify(self, token: str | None, cookie: bool = True) -> Credential | None:
        if not token:
            return None
        presented, found = _digest(token), None
        for digest, until in list(self._live.items()):  # no early exit, as Authenticator.identify
            if hmac.compare_digest(presented, digest) and until > self.clock():
                found = Credential("console", _operate(), digest, cookie=cookie)
        return found

    def expires(self, token: str) -> float | None:
        return self._live.get(_digest(token))


def _operate() -> AdminScope:
    from ...core.config import AdminScope

    return AdminScope.OPERATE


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    """Checks a bearer token against every known credential, in time that does not depend on which matched;
    or takes a verified TLS client certificate by its common name."""

    def __init__(
        self, tokens: dict[str, tuple[AdminScope, str]], certificates: dict[str, AdminScope] | None = None
    ) -> None:
        self.credentials = tuple(Credential(name, scope, _digest(token)) for name, (scope, token) in tokens.items())
        self.certificates = certificates or {}

    def by_certificate(self, peercert: dict | None) -> Credential | None:
        """The credential of a client certificate the TLS handshake verified (ssl's getpeercert()), or None."""
        subject = dict(item for rdn in (peercert or {}).get("subject", ()) for item in rdn)
        name = subject.get("commonName")
        if name is None or name not in self.certificates:
            return None
        return Credential(f"cert:{name}", self.certificates[name], b"")

    def identify(self, authorization: str | None) -> Credential | None:
        """The credential an Authorization header carries, or None."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented, found = _digest(token.strip()), None
        for credential in self.credentials:  # no early exit: every comparison runs
            if hmac.compare_digest(presented, credential.digest):
                found = credential
        return found


def registry_path(host: str, port: int) -> Path:
    """Where clients on this host find the local token of the admin server at host:port."""
    base = os.environ.get("PGAURORA_RUNTIME_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "pgaurora"
    )
    return Path(base) / "admin" / f"{host}_{port}.token"


def _write_private(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)


def local_token_file(config: Config) -> Path | None:
    if config.admin.token_file:
        return Path(config.admin.token_file)
    return Path(config.state_dir) / "admin.token" if config.state_dir else None


def local_token(config: Config) -> str:
    """pgaurora's own admin token: the one in its token file when there is one, else a new one written there."""
    path = local_token_file(config)
    if path is not None and path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    if path is not None:
        _write_private(path, token)
    return token


def publish(host: str, port: int, token: str) -> Path:
    """Leave the token where this host's clients look for the admin server at host:port (mode 600)."""
    path = registry_path(host, port)
    _write_private(path, token)
    return path


def withdraw(path: Path, token: str) -> None:
    """Remove a published token, unless another server on the same address has replaced it since."""
    try:
        if path.read_text().strip() == token:
            path.unlink()
    except OSError:
        pass


def authenticator(config: Config, local: str) -> Authenticator:
    from ...core.config import AdminScope

    tokens = {t.name: (t.scope, Path(t.file).read_text().strip()) for t in config.admin.tokens}
    return Authenticator(
        {LOCAL: (AdminScope.ADMIN, local), **tokens}, {c.common_name: c.scope for c in config.admin.certificates}
    )


def token_for(url: str) -> str | None:
    """The token a client sends to the admin server at url: $PGAURORA_ADMIN_TOKEN, the file named by
    $PGAURORA_ADMIN_TOKEN_FILE, or the local token that server published on this host."""
    if os.environ.get("PGAURORA_ADMIN_TOKEN"):
        return os.environ["PGAURORA_ADMIN_TOKEN"].strip()
    named = os.environ.get("PGAURORA_ADMIN_TOKEN_FILE")
    parts = urlsplit(url)
    path = Path(named) if named else registry_path(parts.hostname or "127.0.0.1", parts.port or 6434)
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
