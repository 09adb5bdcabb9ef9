"""Credentials: roles' SCRAM secrets for logins at the proxy, from auth_file or auth_query (cached, bounded)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from ..core.config import PoolConfig, TlsConfig, TokensConfig
from ..core.errors import ConfigError
from ..core.sslcontexts import node_ssl
from ..core.topology import NodeState
from .scram import Secret, client_key_of
from .tokens import Tokens

log = logging.getLogger("pgaurora.proxy")


class LookupFailed(Exception):
    """auth_query could not be run (no node answered, or the query failed): the client gets 08006, not 28P01."""


def _quoted_pairs(path: str, what: str) -> tuple[dict[str, str], list[str]]:
    found, problems = {}, []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        try:
            role, text = shlex.split(line)[:2]
        except ValueError:
            problems.append(f"{path}:{number}: expected two quoted fields, a role and its {what}")
            continue
        found[role] = text
    return found, problems


def read_login_file(path: str) -> dict[str, str]:
    """[tokens] login_file: `"role" "password"` per line, for roles that log in by token alone."""
    logins, problems = _quoted_pairs(path, "password")
    if problems:
        raise ConfigError(problems, path)
    return logins


def read_auth_file(path: str) -> dict[str, Secret]:
    """PgBouncer's auth_file: `"role" "SCRAM-SHA-256$..."` per line; anything but a SCRAM secret is refused."""
    pairs, problems = _quoted_pairs(path, "SCRAM secret")
    secrets_by_role = {}
    for role, text in pairs.items():
        secret = Secret.parse(text)
        if secret is None:
            problems.append(f"{path}: {role}: not a SCRAM-SHA-256 secret (plain and md5 are refused)")
            continue
        secrets_by_role[role] = secret
    if problems:
        raise ConfigError(problems, path)
    return secrets_by_role


class Credentials:
    """secret(role): its Secret, a mock one when it does not exist (so the login fails the same way), from
    auth_file or from auth_query; forget(role) after a failed login, so that a changed password is read again."""

    def __init__(
        self,
        config: PoolConfig,
        tls: TlsConfig,
        nodes: Callable[[], list[NodeState]],
        tokens: TokensConfig | None = None,
        cluster: str = "demo",
    ) -> None:
        self.config, self.tls, self.nodes = config, tls, nodes
        self.tokens = Tokens(tokens, cluster) if tokens is not None and tokens.keys else None
        self._logins = read_login_file(tokens.login_file) if tokens is not None and tokens.login_file else {}
        self._keys: dict[str, bytes] = {}  # role -> the ClientKey of its last SCRAM login here, for token logins
        self._file = read_auth_file(config.auth_file) if config.auth_file else None
        self._cache: dict[str, tuple[float, Secret | None]] = {}
        self._pending: dict[str, asyncio.Future[Secret | None]] = {}
        self._seed = secrets.token_bytes(32)
        self.lookups = 0  # auth_query runs, for the metrics

    def mock(self, role: str) -> Secret:
        return Secret.mock(role, self._seed)

    def cached(self, role: str) -> bool:
        """Is the role's secret (or its absence) known now, without a lookup?"""
        if self._file is not None:
            return True
        found = self._cache.get(role)
        return found is not None and time.monotonic() - found[0] < self.config.auth_cache_seconds

    def secret_now(self, role: str) -> Secret | None:
        """The secret, when cached() says it is known."""
        if self._file is not None:
            return self._file.get(role)
        return self._cache[role][1]

    async def secret(self, role: str) -> Secret | None:
        """The role's secret, or None when no such role has one."""
        if self._file is not None:
            return self._file.get(role)
        cached = self._cache.get(role)
        if cached is not None and time.monotonic() - cached[0] < self.config.auth_cache_seconds:
            return cached[1]
        pending = self._pending.get(role)
        if pending is not None:  # one lookup per role at a time, however many clients log in at once
            return await asyncio.shield(pending)
        pending = asyncio.get_running_loop().create_future()
        self._pending[role] = pending
        try:
            found = await self._lookup(role)
        except BaseException as exc:
            pending.set_exception(exc if isinstance(exc, Exception) else LookupFailed("the lookup was interrupted"))
            pending.exception()  # retrieved here: the clients waiting on it raise it themselves
            raise
        finally:
            del self._pending[role]
        self._cache[role] = (time.monotonic(), found)
        pending.set_result(found)
        return found

    def forget(self, role: str) -> None:
        self._cache.pop(role, None)

    def remember(self, role: str, client_key: bytes) -> None:
        """A role logged in with SCRAM: its ClientKey can log a token client of that role into the nodes."""
        self._keys[role] = client_key

    def login_key(self, role: str, secret: Secret) -> bytes | None:
        """A ClientKey that logs role into the nodes under its current secret: remembered from a SCRAM login,
        or derived from [tokens] login_file; None when pgaurora holds neither (or they are out of date)."""
        remembered = self._keys.get(role)
        if remembered is not None and hashlib.sha256(remembered).digest() == secret.stored_key:
            return remembered
        password = self._logins.get(role)
        return client_key_of(password, secret) if password is not None else None

    def reload_tokens(self, tokens: TokensConfig, cluster: str) -> None:
        """[tokens] again (a reload): keys rotate, the login file is read again."""
        if self.tokens is None:
            self.tokens = Tokens(tokens, cluster) if tokens.keys else None
        else:
            self.tokens.reload(tokens)
        self._logins = read_login_file(tokens.login_file) if tokens.login_file else {}

    async def _lookup(self, role: str) -> Secret | None:
        errors = []
        for node in self.nodes():
            try:
                row = await self._query(node, role)
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                errors.append(f"{node.name}: {exc}")
                continue
            self.lookups += 1
            return Secret.parse(row[1]) if row is not None and row[1] else None
        raise LookupFailed("could not read the role's secret (auth_query): " + ("; ".join(errors) or "no node"))

    async def _query(self, node: NodeState, role: str) -> asyncpg.Record | None:
        conn = await asyncpg.connect(
            host=node.host,
            port=node.port,
            user=self.config.auth_user,
            password=self.config.auth_password,
            database=self.config.auth_dbname,
            timeout=5,
            ssl=node_ssl(self.tls),
            server_settings={"application_name": "pgaurora-auth"},
        )
        try:
            return await conn.fetchrow(self.config.auth_query, role, timeout=5)
        finally:
            await conn.close()
