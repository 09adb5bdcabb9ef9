"""The admin endpoint's HTTP API, as the CLI calls it: JSON in and out, one clear message on failure."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import click

from ..service.admin.client import AdminError
from ..service.admin.client import call as _call

if TYPE_CHECKING:  # the route models load pydantic: only commands that send parameters pay for it
    from ..service.admin.routes import Params


def call(url: str, path: str, method: str = "GET", timeout: float = 120, params: Params | None = None) -> Any:
    """One admin request with the local token (or $PGAURORA_ADMIN_TOKEN); one clear message on failure. The
    parameters are the route table's own models, so the CLI cannot send what the server would refuse."""
    body = (
        params.model_dump(mode="json", exclude_defaults=True, exclude=set(params.nodes) & {"node"})
        if params is not None
        else ({} if method != "GET" else None)
    )
    try:
        return _call(url, path, method, body, timeout)
    except AdminError as exc:
        detail = f": {'; '.join(exc.problems)}" if exc.problems and exc.status == 400 else ""
        hint = (
            "; set PGAURORA_ADMIN_TOKEN or PGAURORA_ADMIN_TOKEN_FILE, or run this on pgaurora's host as its user"
            if exc.status == 401
            else ""
        )
        raise click.ClickException(f"{method} {path}: {exc.message}{detail}{hint}") from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot reach the admin endpoint at {url}: {getattr(exc, 'reason', exc)}; is pgaurora running?"
        ) from None


def params(model: type[Params], **values: object) -> Params:
    """A route's parameters, checked here as the server checks them; one message naming each problem."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(problems) from None


def follow_events(url: str, path: str, body: Params, kind: str, timeout: float) -> dict:
    """POST body to path, printing each `kind` event as it is recorded until the answer comes."""
    seen = {(e["ts"], e["reason"]) for e in call(url, "/events?limit=200")}
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = call(url, path, "POST", timeout, body)
        except click.ClickException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while True:
        finished = not worker.is_alive()
        try:
            events = call(url, "/events?limit=200")
        except click.ClickException:
            events = []
        for event in events:
            if event["kind"] == kind and (event["ts"], event["reason"]) not in seen:
                seen.add((event["ts"], event["reason"]))
                click.echo(f"{event['time'][11:19]}  {event['reason']}")
        if finished:
            break
        worker.join(0.25)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
