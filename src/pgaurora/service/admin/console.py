"""The console: one static page, and the server-sent events that keep it current without a reload."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from ...core.eventlog import EventLog
    from ...core.topology import Topology, TopologyHub

COOKIE = "pgaurora_console"
HEADER = "X-Pgaurora-Console"  # sent by the page's own requests; a form on another site cannot send it
PUSH_EVERY = 0.25  # seconds between two looks at the status when nothing wakes the stream sooner
HEARTBEAT = 15.0  # seconds between two keep-alive comments on an idle stream
EVENTS_SENT = 100  # the latest events the page gets when it connects


class Watched(Protocol):
    """What the stream reads of the service: its topology (to wake on a change) and its event log."""

    @property
    def hub(self) -> TopologyHub: ...

    @property
    def events(self) -> EventLog: ...


@cache
def page() -> bytes:
    """The console's single page (HTML, its CSS and JavaScript inline), shipped in the package."""
    return files(__package__).joinpath("console.html").read_bytes()


def _frame(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n".encode()


def _newer_than(seen: Topology) -> Callable[[Topology], bool]:
    return lambda topology: topology.version != seen.version


def _newer(events: list[dict[str, Any]], after: float) -> list[dict[str, Any]]:
    return [e for e in events if e["ts"] > after and e["kind"] != "audit"]


async def stream(request: web.Request, service: Watched, status: Callable[[], dict[str, Any]]) -> web.StreamResponse:
    """`event: status` whenever the status document changes, `event: events` with each new event; woken at
    once by a new topology, else every PUSH_EVERY. Ends when the browser goes away."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    recent = service.events.recent()[-EVENTS_SENT:]
    last_status, last_ts, quiet = "", max((e["ts"] for e in recent), default=0.0), 0.0
    try:
        await response.write(_frame("events", _newer(recent, 0.0)))
        while True:
            seen: Topology = service.hub.current
            document = json.dumps(status(), default=str, sort_keys=True)
            if document != last_status:
                await response.write(b"event: status\ndata: " + document.encode() + b"\n\n")
                last_status, quiet = document, 0.0
            new = _newer(service.events.recent()[-EVENTS_SENT:], last_ts)
            if new:
                await response.write(_frame("events", new))
                last_ts, quiet = new[-1]["ts"], 0.0
            if quiet >= HEARTBEAT:
                await response.write(b": still here\n\n")
                quiet = 0.0
            await service.hub.wait_for(_newer_than(seen), PUSH_EVERY)
            quiet += PUSH_EVERY
    except ConnectionResetError:  # the browser went away (a reload, a closed tab)
        pass
    return response
