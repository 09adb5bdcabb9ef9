"""Etcd: the few etcd v3 operations pgaurora needs, over aetcd, trying each endpoint in turn."""

from __future__ import annotations

import asyncio
import logging
import math
from urllib.parse import urlparse

import aetcd

log = logging.getLogger("pgaurora.dcs")


class DcsUnavailable(Exception):
    """No etcd endpoint answered in time."""


class Etcd:
    def __init__(self, endpoints: tuple[str, ...], username: str | None = None, password: str | None = None,
                 timeout: float = 1.0) -> None:
        self.urls = tuple(endpoints)
        self.endpoints = [urlparse(url) for url in endpoints]
        self.username, self.password, self.timeout = username, password, timeout
        self._index = 0
        self._client: aetcd.Client | None = None
        self._lock = asyncio.Lock()  # one call at a time: a failing call rotates the shared client

    @property
    def endpoint(self) -> str:
        url = self.endpoints[self._index]
        return f"{url.hostname}:{url.port}"

    async def _connected(self) -> aetcd.Client:
        if self._client is None:
            url = self.endpoints[self._index]
            self._client = aetcd.Client(host=url.hostname, port=url.port, username=self.username,
                                        password=self.password, timeout=self.timeout,
                                        connect_wait_timeout=max(1, math.ceil(self.timeout)))
            await self._client.connect()
        return self._client

    async def _call(self, operation):
        """operation(client), on the current endpoint, then on each other once; DcsUnavailable if none answers."""
        async with self._lock:
            return await self._try_each(operation)

    async def _try_each(self, operation):
        errors = []
        for _ in range(len(self.endpoints)):
            try:
                async with asyncio.timeout(self.timeout * 2):
                    return await operation(await self._connected())
            except (aetcd.ClientError, TimeoutError, OSError) as exc:
                if isinstance(exc, aetcd.PreconditionFailedError):
                    raise
                errors.append(f"{self.endpoint}: {type(exc).__name__} {exc}".strip())
                await self._rotate()
        raise DcsUnavailable("; ".join(errors))

    async def _rotate(self) -> None:
        client, self._client = self._client, None
        self._index = (self._index + 1) % len(self.endpoints)
        if client is not None:
            try:
                async with asyncio.timeout(self.timeout):
                    await client.close()
            except Exception:  # closing a broken channel may fail or hang in any way; it is gone either way
                pass

    async def grant(self, ttl: float) -> int:
        lease = await self._call(lambda c: c.lease(math.ceil(ttl)))
        return lease.id

    async def keepalive(self, lease_id: int) -> int:
        """The lease's remaining TTL in seconds; 0 or less: it expired."""
        reply = await self._call(lambda c: c.refresh_lease(lease_id))
        return reply.TTL if reply is not None else 0

    async def revoke(self, lease_id: int) -> None:
        await self._call(lambda c: c.revoke_lease(lease_id))

    async def get(self, key: str) -> bytes | None:
        got = await self._call(lambda c: c.get(key.encode()))
        return got.value if got is not None else None

    async def campaign(self, key: str, value: str, lease_id: int) -> bool:
        """Take key (bound to the lease) if nobody holds it."""
        async def txn(c):
            ok, _ = await c.transaction(compare=[c.transactions.create(key.encode()) == 0],
                                        success=[c.transactions.put(key.encode(), value.encode(), lease=lease_id)],
                                        failure=[])
            return ok
        return await self._call(txn)

    async def put_if(self, key: str, value: str, puts: dict[str, bytes]) -> bool:
        """Write every key of puts in one transaction, only if key still holds value."""
        async def txn(c):
            ok, _ = await c.transaction(compare=[c.transactions.value(key.encode()) == value.encode()],
                                        success=[c.transactions.put(k.encode(), v) for k, v in puts.items()],
                                        failure=[])
            return ok
        return await self._call(txn)

    async def put_with_lease(self, key: str, value: str, lease_id: int) -> None:
        await self._call(lambda c: c.put(key.encode(), value.encode(), lease=lease_id))

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        got = await self._call(lambda c: c.get_prefix(prefix.encode()))
        return {kv.key.decode(): kv.value for kv in got}

    async def close(self) -> None:
        if self._client is not None:
            await self._rotate()
