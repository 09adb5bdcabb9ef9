"""SharedHold: a switchover's hold of writes, told to the other instances, and their transactions counted."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol

from ..core.coordination import DcsUnavailable

log = logging.getLogger("pgaurora.monitor")

REPORT_EVERY = 0.01
"""Seconds between two looks at this instance's pooled transactions on a held writer."""
ASK_EVERY = 0.02
"""Seconds between two reads of the other instances' reports while the leader drains."""


class HoldBoard(Protocol):
    """What a shared hold uses of the DCS member (dcs.member.Member)."""

    @property
    def hold(self) -> dict[str, Any] | None: ...

    async def put_hold(self, hold: dict[str, Any]) -> None: ...

    async def clear_hold(self) -> None: ...

    async def report_in_flight(self, hold_id: str, count: int) -> None: ...

    async def in_flight_elsewhere(self, hold_id: str) -> int: ...


class SharedHold:
    """The leader writes the hold; every other instance stops lending the held writer (it publishes no
    writer) and reports the pooled transactions it still runs there, until they are done; the leader's
    drain waits for all of them. Without [dcs] it does nothing. Nothing here raises: etcd out of reach
    degrades to what one instance can see."""

    def __init__(self, board: HoldBoard | None, in_flight: Callable[[str], int]) -> None:
        self.board, self.in_flight = board, in_flight
        self.mine: dict[str, Any] | None = None  # the hold this instance leads, while it lasts
        self._reporter: asyncio.Task[None] | None = None
        self._heard: tuple[float, int] = (0.0, 1)  # (when, what) the others last reported, for the drain's loop

    # -- the leader ----------------------------------------------------------------------------
    async def begin(self, writer: str) -> None:
        if self.board is None:
            return
        self.mine, self._heard = {"id": secrets.token_hex(8), "writer": writer}, (0.0, 1)
        try:
            await self.board.put_hold(self.mine)
        except DcsUnavailable as exc:
            log.warning("could not tell the other instances that writes are held (%s): their pooled "
                        "transactions on %s may be cut when it stops", exc, writer)  # fmt: skip

    async def end(self) -> None:
        self.mine = None
        await self.tidy()

    async def tidy(self) -> None:
        """A hold in etcd that no switchover of this instance holds any more goes (an earlier delete failed)."""
        if self.board is None or self.mine is not None or self.board.hold is None:
            return
        try:
            await self.board.clear_hold()
        except DcsUnavailable as exc:
            log.warning("could not clear the switchover's hold in etcd (%s); tried again next tick", exc)

    async def elsewhere(self, writer: str) -> int:
        """Pooled transactions the other instances still run on the held writer (1 while etcd cannot say)."""
        if self.board is None or self.mine is None or self.mine["writer"] != writer:
            return 0
        now = asyncio.get_running_loop().time()
        if now - self._heard[0] < ASK_EVERY:
            return self._heard[1]
        try:
            count = await self.board.in_flight_elsewhere(self.mine["id"])
        except DcsUnavailable:
            count = 1
        self._heard = (now, count)
        return count

    # -- the other instances -------------------------------------------------------------------
    def holds(self, writer: str | None) -> bool:
        """Does the leader hold this writer now (so this instance must lend it nothing new)?"""
        hold = self.board.hold if self.board is not None else None
        return hold is not None and writer is not None and hold.get("writer") == writer

    def report(self) -> None:
        """Report, until the hold ends, what this instance runs on the held writer (call after publishing
        that it has no writer, so that the count can only fall)."""
        hold = self.board.hold if self.board is not None else None
        if hold is None or (self._reporter is not None and not self._reporter.done()):
            return
        self._reporter = asyncio.get_running_loop().create_task(self._report(dict(hold)))

    async def _report(self, hold: dict[str, Any]) -> None:
        assert self.board is not None
        said: int | None = None
        while self.board.hold is not None and self.board.hold.get("id") == hold["id"]:
            count = self.in_flight(hold["writer"])
            if count != said:
                try:
                    await self.board.report_in_flight(hold["id"], count)
                    said = count
                except DcsUnavailable as exc:
                    log.debug("in-flight report: %s", exc)
            await asyncio.sleep(REPORT_EVERY)

    async def stop(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
            await asyncio.gather(self._reporter, return_exceptions=True)
