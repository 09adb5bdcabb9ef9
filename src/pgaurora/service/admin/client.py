"""A blocking client of the admin API, with the token of the server it calls: the CLI's, the drill's, the tests'."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from typing import Any

from .auth import token_for


def _tls(url: str) -> ssl.SSLContext | None:
    """For https: the CA in $PGAURORA_ADMIN_CA_FILE (else the system's), and a client certificate from
    $PGAURORA_ADMIN_CERT_FILE and $PGAURORA_ADMIN_KEY_FILE when they are set."""
    if not url.startswith("https:"):
        return None
    context = ssl.create_default_context(cafile=os.environ.get("PGAURORA_ADMIN_CA_FILE"))
    if os.environ.get("PGAURORA_ADMIN_CERT_FILE"):
        context.load_cert_chain(os.environ["PGAURORA_ADMIN_CERT_FILE"], os.environ.get("PGAURORA_ADMIN_KEY_FILE"))
    return context


class AdminError(Exception):
    """The admin server answered with an error: its HTTP status, message and problems."""

    def __init__(self, status: int, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems


def call(
    url: str, path: str, method: str = "GET", body: Any = None, timeout: float = 120, token: str | None = None
) -> Any:
    """One request; the decoded JSON answer. AdminError for an error answer, OSError when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    token = token_for(url) if token is None else token  # "" sends none
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url.rstrip("/") + path, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_tls(url)) as response:
            raw = response.read()
            return json.loads(raw) if response.headers.get_content_type() == "application/json" else raw.decode()
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            doc = json.loads(text)
            raise AdminError(exc.code, str(doc.get("error", text)), list(doc.get("problems") or [])) from None
        except (ValueError, AttributeError):
            raise AdminError(exc.code, text, []) from None
