"""The admin endpoint's HTTP API, as the CLI calls it: JSON in and out, one clear message on failure."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request

import click


def call(url: str, path: str, method: str = "GET", timeout: float = 120, body: dict | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url.rstrip("/") + path, method=method, data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            text = json.loads(text).get("error", text)
        except (ValueError, AttributeError):
            pass
        raise click.ClickException(f"{path}: {text}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"cannot reach the admin endpoint at {url}: {getattr(exc, 'reason', exc)}; "
                                   "is pgaurora running?") from None


def follow_events(url: str, path: str, body: dict, kind: str, timeout: float) -> dict:
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
