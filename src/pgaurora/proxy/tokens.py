"""Tokens: short-lived signed tokens (JWT, HMAC-SHA-256, through PyJWT) that a client sends instead of a password."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jwt

from ..core.config import TokensConfig

ALGORITHM = "HS256"


class TokenRefused(Exception):
    """A token that does not let this client in; the message says why, and never quotes the token."""


@dataclass(frozen=True)
class Issued:
    token: str
    role: str
    expires_at: float
    key_id: str


class Tokens:
    """Signs with the first configured key and verifies with every key; a key a reload removed keeps
    verifying until max_ttl has passed, so that no token it signed is cut short."""

    def __init__(self, config: TokensConfig, cluster: str, clock: Callable[[], float] = time.time) -> None:
        self.audience, self.clock = f"pgaurora:{cluster}", clock
        self.config = config
        self.keys: dict[str, bytes] = {}
        self.retired: dict[str, tuple[bytes, float]] = {}  # key id -> (key, verifies until)
        self.reload(config)

    def reload(self, config: TokensConfig) -> None:
        """Take the configured keys (read again from their files); keep the ones removed as retired."""
        keys = {k.id: Path(k.file).read_bytes().strip() for k in config.keys}
        now = self.clock()
        for key_id, key in self.keys.items():
            if keys.get(key_id) != key:
                self.retired[key_id] = (key, now + self.config.max_ttl)
        for key_id in keys:
            self.retired.pop(key_id, None)
        self.keys, self.config, self.signing = keys, config, config.keys[0].id if config.keys else None

    def issue(self, role: str, ttl: float | None = None, endpoints: tuple[str, ...] = ()) -> Issued:
        """A token for role, living ttl seconds (default_ttl; at most max_ttl), for the named endpoints (all)."""
        if self.signing is None:
            raise TokenRefused("no [tokens] keys are configured")
        life = self.config.default_ttl if ttl is None else ttl
        if not 0 < life <= self.config.max_ttl:
            raise TokenRefused(f"ttl must be above 0 and at most max_ttl ({self.config.max_ttl:g} s), not {life:g}")
        now = self.clock()
        expires = int(now + life)
        claims = {"sub": role, "aud": self.audience, "iat": int(now), "exp": expires, "jti": secrets.token_urlsafe(12)}
        if endpoints:
            claims["ep"] = list(endpoints)
        token = jwt.encode(claims, self.keys[self.signing], ALGORITHM, headers={"kid": self.signing})
        return Issued(token, role, expires, self.signing)

    def _key(self, token: str) -> bytes:
        try:
            key_id = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise TokenRefused("not a pgaurora token") from None
        if isinstance(key_id, str) and key_id in self.keys:
            return self.keys[key_id]
        key, until = self.retired.get(key_id, (b"", 0.0)) if isinstance(key_id, str) else (b"", 0.0)
        if self.clock() < until:
            return key
        raise TokenRefused("the token was signed by a key pgaurora does not hold (or no longer holds)")

    def verify(self, token: str, role: str, endpoint: str) -> dict:
        """The token's claims, when its signature, expiry, role and endpoint let this client in."""
        key = self._key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                options={"require": ["exp", "sub", "aud"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.InvalidSignatureError:
            raise TokenRefused("the token's signature does not verify") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("the token is for another cluster") from None
        except jwt.PyJWTError:
            raise TokenRefused("not a valid pgaurora token") from None
        if not isinstance(claims["exp"], int) or self.clock() >= claims["exp"]:  # on pgaurora's clock, not PyJWT's
            raise TokenRefused("the token has expired")
        if claims["sub"] != role:
            raise TokenRefused(f'the token is for another role, not "{role}"')
        if "ep" in claims and endpoint not in claims["ep"]:
            raise TokenRefused(f"the token is not for the {endpoint} endpoint")
        return claims
