"""Member: this instance in etcd: its lease, the leader key, the shared monitor state, the other instances."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..core.config import Config
from ..core.coordination import DcsUnavailable, InstanceRole
from ..core.eventlog import EventLog
from .etcd import Etcd, credentials
from .leadership import Heard, Standing, standing

log = logging.getLogger("pgaurora.dcs")


class Member:
    """Renews its lease and reads the leader key on its own task, every ttl/4, so that a long action of the
    monitor never lets the lease lapse; the monitor asks `leading()` before it acts, and makes every write
    of its memory a transaction conditioned on still holding the leader key."""

    def __init__(self, config: Config, events: EventLog, clock: Callable[[], float] = time.monotonic) -> None:
        dcs = config.dcs
        assert dcs is not None
        self.me, self.ttl, self.events, self.clock = config.instance, dcs.ttl, events, clock
        prefix = config.dcs_prefix
        self.prefix = prefix
        self.leader_key, self.state_key, self.intent_key = prefix + "leader", prefix + "state", prefix + "intent"
        self.members_prefix = prefix + "members/"
        timeout, tls = min(1.0, dcs.ttl / 3), credentials(dcs)
        self.etcd = Etcd(dcs.etcd, dcs.username, dcs.password, timeout, tls)
        self._watching = Etcd(dcs.etcd, dcs.username, dcs.password, timeout, tls)  # holds a stream open
        self._changed = asyncio.Event()
        self.on_change: Callable[[], None] | None = None  # called when a beat read a new shared state
        self.card = json.dumps(
            {
                "instance": self.me,
                "admin": f"http://{config.admin.host}:{config.admin.port}",
                "writer": f"{config.writer.host}:{config.writer.port}",
                "reader": f"{config.reader.host}:{config.reader.port}",
            }
        )
        self.lease: int | None = None
        self.heard = Heard(None, None, None)
        self.current = Standing(InstanceRole.CUT_OFF, "etcd not reached yet")
        self.leader_since: float | None = None  # wall clock, for /status
        self.leader_changes = 0
        self.members: dict[str, dict[str, Any]] = {}
        self.shared: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None)  # (state, intent) as last read
        self.last_error: str | None = None
        self.endpoint_health: dict[str, str] = {}
        self._tasks: list[asyncio.Task[Any]] = []

    # -- the lease loop ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.beat()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run()),
            loop.create_task(self._watch()),
            loop.create_task(self._check_endpoints()),
        ]

    async def _run(self) -> None:
        """A beat every ttl/4, and at once when the watch saw a change (a new leader, state or intent)."""
        while True:
            try:
                async with asyncio.timeout(self.ttl / 4):
                    await self._changed.wait()
            except TimeoutError:
                pass
            self._changed.clear()
            before = self.shared
            await self.beat()
            if self.shared != before and self.on_change is not None:
                self.on_change()

    async def _check_endpoints(self) -> None:
        """Every endpoint's health, every ttl, for /status (the beats use one endpoint at a time)."""
        while True:
            self.endpoint_health = await self.etcd.health()
            await asyncio.sleep(self.ttl)

    async def _watch(self) -> None:
        """Watch the prefix; when the stream breaks, the beats carry on alone until it is back."""
        while True:
            try:
                async for _ in self._watching.changes(self.prefix):
                    self._changed.set()
            except DcsUnavailable as exc:
                log.debug("dcs watch: %s", exc)
            await asyncio.sleep(self.ttl / 4)

    async def beat(self) -> Standing:
        """Renew (or get) the lease, take the leader key when nobody holds it, read who leads. Never raises."""
        sent = self.clock()
        try:
            lease = await self._renew()
            keys = await self.etcd.get_prefix(self.prefix)  # everything in one read
            if self.members_prefix + self.me not in keys:  # first beat, or its write failed
                await self.etcd.put_with_lease(self.members_prefix + self.me, self.card, lease)
                keys[self.members_prefix + self.me] = self.card.encode()
            holder = keys.get(self.leader_key)
            if (
                holder is None
                and self.lease is not None
                and await self.etcd.campaign(self.leader_key, self.me, self.lease)
            ):
                holder = self.me.encode()
            self.members = _cards(keys, self.members_prefix)
            self.shared = _documents(keys.get(self.state_key)), _documents(keys.get(self.intent_key))
            self.heard = Heard(sent, holder.decode() if holder else None, self.clock())
            self.last_error = None
        except DcsUnavailable as exc:
            self.last_error = str(exc)
        except Exception as exc:  # a probe never raises: anything etcd does wrong is an unreachable etcd
            self.last_error = f"{type(exc).__name__}: {exc}"
        self._judge()
        return self.current

    async def _renew(self) -> int:
        if self.lease is None or await self.etcd.keepalive(self.lease) <= 0:
            self.lease = await self.etcd.grant(self.ttl)  # the first, or the old one expired in etcd
        return self.lease

    def _judge(self) -> None:
        old, self.current = self.current, standing(self.clock(), self.heard, self.me, self.ttl)
        if (old.role is InstanceRole.LEADER) == (self.current.role is InstanceRole.LEADER):
            if old.role != self.current.role:
                log.info("dcs: %s", self.current.reason)
            return
        self.leader_changes += 1
        if self.current.role is InstanceRole.LEADER:
            self.leader_since = time.time()
            self.events.record("leader_acquired", self.current.reason, instance=self.me)
        else:
            self.leader_since = None
            self.events.record("leader_lost", self.current.reason, instance=self.me)

    def leading(self) -> bool:
        """Is this instance the leader right now? Judged on the clock now, not at the last beat: a process
        that was paused past its lease learns here that it no longer leads."""
        self._judge()
        return self.current.role is InstanceRole.LEADER

    @property
    def leader(self) -> str | None:
        return self.heard.holder

    def lease_left(self) -> float | None:
        if self.heard.renewed_at is None or self.current.role is not InstanceRole.LEADER:
            return None
        return max(0.0, self.heard.renewed_at + self.ttl - float(self.clock()))

    # -- the shared memory -------------------------------------------------------------------------
    async def load(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(state document, open failover intent) as etcd holds them now; DcsUnavailable when it cannot say."""
        state, intent = await self.etcd.get(self.state_key), await self.etcd.get(self.intent_key)
        self.shared = _documents(state), _documents(intent)
        return self.shared

    async def write(self, state: dict[str, Any] | None = None, intent: dict[str, Any] | bool | None = False) -> bool:
        """Write the state document and/or the intent (None clears it) in one transaction, only while this
        instance holds the leader key. False: it does not (any more), or etcd cannot be reached."""
        if not self.leading():
            return False
        puts: dict[str, bytes] = {}
        if state is not None:
            puts[self.state_key] = json.dumps(state).encode()
        if intent is not False:
            puts[self.intent_key] = json.dumps(intent).encode() if intent else b""
        try:
            done = await self.etcd.put_if(self.leader_key, self.me, puts)
        except DcsUnavailable as exc:
            self.last_error = str(exc)
            return False
        if not done:
            self.heard = replace(self.heard, holder=None)
            self._judge()
        return done

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self._watching.close()
        if self.lease is not None and self.current.role is not InstanceRole.CUT_OFF:
            try:  # hand the leadership over at once rather than after ttl
                await self.etcd.revoke(self.lease)
            except Exception:
                pass
        await self.etcd.close()

    def document(self) -> dict[str, Any]:
        """For /status."""
        left = self.lease_left()
        return {
            "instance": self.me,
            "role": self.current.role.value,
            "reason": self.current.reason,
            "leader": self.leader,
            "leader_since": self.leader_since,
            "ttl": self.ttl,
            "lease_left": None if left is None else round(left, 2),
            "endpoints": list(self.etcd.urls),
            "endpoint_in_use": self.etcd.endpoint,
            "endpoint_health": self.endpoint_health,
            "last_error": self.last_error,
            "instances": self.members,
        }


def _documents(value: bytes | None) -> dict[str, Any] | None:
    """A JSON document stored in etcd; None for a missing, empty or unreadable one."""
    if not value:
        return None
    try:
        document = json.loads(value)
    except ValueError:
        log.error("unreadable JSON in etcd: %r", value[:200])
        return None
    return document if isinstance(document, dict) else None


def _cards(keys: dict[str, bytes], prefix: str) -> dict[str, dict[str, Any]]:
    """The instances' cards, by name."""
    return {
        key.removeprefix(prefix): card
        for key, value in keys.items()
        if key.startswith(prefix) and (card := _documents(value)) is not None
    }
