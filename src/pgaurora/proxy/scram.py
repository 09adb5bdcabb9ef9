"""SCRAM-SHA-256 at the proxy: check a client against a stored secret, recover its ClientKey, log in with it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

MECHANISM = "SCRAM-SHA-256"
MOCK_ITERATIONS = 4096  # PostgreSQL's default, so a made-up secret costs what a real one does


class ScramFailed(Exception):
    """The exchange failed: a wrong password, a malformed message, or a server that did not prove itself."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A role's SCRAM-SHA-256 verifier, as pg_authid keeps it: never a password."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, text: str) -> Secret | None:
        """`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, or None for anything else (md5, plain)."""
        try:
            name, counts, keys = text.split("$")
            iterations, salt = counts.split(":")
            stored, server = keys.split(":")
            if name != MECHANISM:
                return None
            return cls(int(iterations), _b64d(salt), _b64d(stored), _b64d(server))
        except ValueError:
            return None

    @classmethod
    def mock(cls, user: str, seed: bytes) -> Secret:
        """A made-up secret for a role that does not exist: the exchange runs the same and fails the same."""
        salt = hmac.digest(seed, b"salt:" + user.encode(), "sha256")[:16]
        return cls(MOCK_ITERATIONS, salt, secrets.token_bytes(32), secrets.token_bytes(32))


def client_key_of(password: str, secret: Secret) -> bytes | None:
    """The ClientKey a password gives under this secret's salt and iterations, or None when it is not the
    role's password. (PostgreSQL prepares the password with SASLprep; a password of ASCII needs none.)"""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), secret.salt, secret.iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return client_key if hmac.compare_digest(hashlib.sha256(client_key).digest(), secret.stored_key) else None


def _b64d(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.digest(key, message.encode(), "sha256")


def _xor(a: bytes, b: bytes) -> bytes:
    if len(a) != len(b):
        raise ValueError("SCRAM proof of the wrong length")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


class ServerExchange:
    """The proxy as the SCRAM server for one client login; then client_key holds the ClientKey recovered from
    the proof, with which the proxy logs into nodes as that client.

    Written here rather than taken from scramp: PostgreSQL's clients send an empty SCRAM username (the role
    is the startup packet's), which scramp's server refuses as malformed."""

    def __init__(self, secret: Secret) -> None:
        self.secret = secret
        self.client_key: bytes | None = None
        self._bare = self._server_first = self._nonce = ""

    def first(self, client_first: str) -> str:
        gs2, _, bare = client_first.partition(",")
        authzid, _, bare = bare.partition(",")
        if gs2 not in ("n", "y") or authzid:
            raise ScramFailed("channel binding and authorization identities are not offered by pgaurora")
        client_nonce = _attributes(bare).get("r", "")
        if not client_nonce or "," in client_nonce:
            raise ScramFailed("malformed SCRAM client-first-message")
        self._bare, self._gs2 = bare, f"{gs2},,"
        self._nonce = client_nonce + secrets.token_urlsafe(18)
        self._server_first = f"r={self._nonce},s={_b64(self.secret.salt)},i={self.secret.iterations}"
        return self._server_first

    def final(self, client_final: str) -> str:
        without_proof, _, proof = client_final.rpartition(",p=")
        fields = _attributes(without_proof)
        if fields.get("r") != self._nonce or fields.get("c") != _b64(self._gs2.encode()):
            raise ScramFailed("malformed SCRAM client-final-message")
        auth_message = f"{self._bare},{self._server_first},{without_proof}"
        try:
            client_key = _xor(_b64d(proof), _hmac(self.secret.stored_key, auth_message))
        except ValueError:
            raise ScramFailed("malformed SCRAM proof") from None
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.secret.stored_key):
            raise ScramFailed("wrong password")
        self.client_key = client_key
        return "v=" + _b64(_hmac(self.secret.server_key, auth_message))


def _attributes(message: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in message.split(",") if "=" in part)


class ClientExchange:
    """The proxy as the SCRAM client of a node, with a ClientKey instead of a password."""

    def __init__(self, client_key: bytes, secret: Secret) -> None:
        self.client_key, self.secret = client_key, secret
        self._nonce = secrets.token_urlsafe(18)
        self._bare = f"n=,r={self._nonce}"
        self._auth_message = ""

    def first(self) -> str:
        return f"n,,{self._bare}"

    def final(self, server_first: str) -> str:
        fields = _attributes(server_first)
        nonce, salt, iterations = fields.get("r", ""), fields.get("s", ""), fields.get("i", "")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ScramFailed("the node's nonce does not extend ours")
        if salt != _b64(self.secret.salt) or iterations != str(self.secret.iterations):
            raise ScramFailed("the node's salt differs from the secret pgaurora holds (was the password changed?)")
        without_proof = f"c=biws,r={nonce}"
        self._auth_message = f"{self._bare},{server_first},{without_proof}"
        proof = _xor(self.client_key, _hmac(hashlib.sha256(self.client_key).digest(), self._auth_message))
        return f"{without_proof},p={_b64(proof)}"

    def verify(self, server_final: str) -> None:
        expected = "v=" + _b64(_hmac(self.secret.server_key, self._auth_message))
        if not hmac.compare_digest(server_final.encode(), expected.encode()):
            raise ScramFailed("the node did not prove that it knows the secret")
