"""Etcd: the few etcd v3 operations pgaurora needs, over aetcd, trying each endpoint in turn."""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # gRPC's own stderr lines: its failures reach our log anyway

import aetcd
import grpc
from aetcd import rpc
from aetcd.watcher import Watcher

from ..core.config import DcsConfig
from ..core.coordination import DcsUnavailable

log = logging.getLogger("pgaurora.dcs")


def credentials(dcs: DcsConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials for https:// endpoints: the CA to trust, and this instance's client certificate."""
    if not dcs.tls:
        return None

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(read(dcs.ca_file), read(dcs.key_file), read(dcs.cert_file))


class _TlsClient(aetcd.Client):  # type: ignore[misc]  # aetcd ships no type information
    """aetcd 1.0 opens plaintext channels only: this client opens a TLS one, then sets up the same stubs."""

    def __init__(self, tls: grpc.ChannelCredentials, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tls = tls

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        self.channel = grpc.aio.secure_channel(f"{self._host}:{self._port}", self._tls)
        if self._username is not None:
            reply = await rpc.AuthStub(self.channel).Authenticate(
                rpc.AuthenticateRequest(name=self._username, password=self._password), timeout=self._timeout
            )
            self.metadata = (("token", reply.token),)
        self.kvstub, self.leasestub = rpc.KVStub(self.channel), rpc.LeaseStub(self.channel)
        self.clusterstub, self.maintenancestub = rpc.ClusterStub(self.channel), rpc.MaintenanceStub(self.channel)
        self._watcher = Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata)
        self._connected.set()


class Etcd:
    def __init__(
        self,
        endpoints: tuple[str, ...],
        username: str | None = None,
        password: str | None = None,
        timeout: float = 1.0,
        tls: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.urls = tuple(endpoints)
        self.endpoints = [urlparse(url) for url in endpoints]
        self.username, self.password, self.timeout, self.tls = username, password, timeout, tls
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
            settings = dict(
                host=url.hostname,
                port=url.port,
                username=self.username,
                password=self.password,
                timeout=self.timeout,
                connect_wait_timeout=max(1, math.ceil(self.timeout)),
            )
            self._client = _TlsClient(self.tls, **settings) if self.tls else aetcd.Client(**settings)
            await self._client.connect()
        return self._client

    async def _call(self, operation: Callable[[Any], Awaitable[Any]]) -> Any:
        """operation(client), on the current endpoint, then on each other once; DcsUnavailable if none answers."""
        async with self._lock:
            return await self._try_each(operation)

    async def _try_each(self, operation: Callable[[Any], Awaitable[Any]]) -> Any:
        errors = []
        for _ in range(len(self.endpoints)):
            try:
                async with asyncio.timeout(self.timeout * 2):
                    return await operation(await self._connected())
            except (aetcd.ClientError, grpc.RpcError, TimeoutError, OSError) as exc:
                if isinstance(exc, aetcd.PreconditionFailedError):
                    raise
                errors.append(f"{self.endpoint}: {type(exc).__name__} {exc}".strip() + self._hint(str(exc)))
                await self._rotate()
        raise DcsUnavailable("; ".join(errors))

    def _hint(self, message: str) -> str:
        if self.tls is not None and ("TSI_" in message or "Tls handshake" in message):
            return " (the TLS handshake with etcd failed: check [dcs] ca_file, cert_file and key_file)"
        return ""

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
        return int(lease.id)

    async def keepalive(self, lease_id: int) -> int:
        """The lease's remaining TTL in seconds; 0 or less: it expired."""
        reply = await self._call(lambda c: c.refresh_lease(lease_id))
        return int(reply.TTL) if reply is not None else 0

    async def revoke(self, lease_id: int) -> None:
        await self._call(lambda c: c.revoke_lease(lease_id))

    async def get(self, key: str) -> bytes | None:
        got = await self._call(lambda c: c.get(key.encode()))
        return bytes(got.value) if got is not None else None

    async def campaign(self, key: str, value: str, lease_id: int) -> bool:
        """Take key (bound to the lease) if nobody holds it."""

        async def txn(c: Any) -> bool:
            ok, _ = await c.transaction(
                compare=[c.transactions.create(key.encode()) == 0],
                success=[c.transactions.put(key.encode(), value.encode(), lease=lease_id)],
                failure=[],
            )
            return bool(ok)

        return bool(await self._call(txn))

    async def put_if(self, key: str, value: str, puts: dict[str, bytes]) -> bool:
        """Write every key of puts in one transaction, only if key still holds value."""

        async def txn(c: Any) -> bool:
            ok, _ = await c.transaction(
                compare=[c.transactions.value(key.encode()) == value.encode()],
                success=[c.transactions.put(k.encode(), v) for k, v in puts.items()],
                failure=[],
            )
            return bool(ok)

        return bool(await self._call(txn))

    async def put_with_lease(self, key: str, value: str, lease_id: int) -> None:
        await self._call(lambda c: c.put(key.encode(), value.encode(), lease=lease_id))

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        got = await self._call(lambda c: c.get_prefix(prefix.encode()))
        return {kv.key.decode(): kv.value for kv in got}

    async def health(self) -> dict[str, str]:
        """Each endpoint's health: 'up' when its member answers a status request in time, else why not."""

        async def one(url: str) -> str:
            single = Etcd((url,), self.username, self.password, self.timeout, self.tls)
            try:
                async with asyncio.timeout(self.timeout * 2):
                    await (await single._connected()).status()
                return "up"
            except Exception as exc:  # whatever fails, this endpoint is not usable now
                return f"{type(exc).__name__} {exc}".strip()[:200] + single._hint(str(exc))
            finally:
                await single.close()

        results = await asyncio.gather(*(one(url) for url in self.urls))
        return dict(zip(self.urls, results, strict=True))

    async def changes(self, prefix: str) -> AsyncIterator[None]:
        """Yield once per batch of changes under prefix, until the stream breaks (DcsUnavailable). It holds
        its client for as long as it runs: give it an Etcd of its own."""
        try:
            watch = await (await self._connected()).watch_prefix(prefix.encode())
        except (aetcd.ClientError, grpc.RpcError, TimeoutError, OSError) as exc:
            await self._rotate()
            raise DcsUnavailable(f"{self.endpoint}: cannot watch: {type(exc).__name__} {exc}") from None
        try:
            async for _ in watch:
                yield
        except (aetcd.ClientError, grpc.RpcError, OSError) as exc:
            await self._rotate()
            raise DcsUnavailable(f"{self.endpoint}: the watch broke: {type(exc).__name__} {exc}") from None

    async def close(self) -> None:
        if self._client is not None:
            await self._rotate()
