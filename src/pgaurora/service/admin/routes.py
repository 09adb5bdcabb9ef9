"""The admin API's one route table: each route's typed parameters, scope and meaning, and its OpenAPI document."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ...core.config import AdminScope
from ...core.errors import ClusterError

MAX_BODY_BYTES = 64 * 1024
"""Largest request body the admin server reads; a longer one gets 413 before anything runs."""

_NODE_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"


NodeName = Annotated[str, Field(pattern=_NODE_PATTERN, description="A node of the cluster, e.g. n2.")]
Seconds = Annotated[float, Field(ge=0, le=3600)]


class Params(BaseModel):
    """Parameters of one route, from its path, its query string and its JSON body; unknown ones are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    nodes: ClassVar[tuple[str, ...]] = ()  # the parameters that name a node: an unknown one gets 404

    def node_refs(self) -> dict[str, str]:
        """The parameters that name a node, with the names given."""
        return {name: getattr(self, name) for name in self.nodes if getattr(self, name) is not None}


class NoParams(Params):
    """This route takes no parameters."""


class EventsParams(Params):
    limit: Annotated[int, Field(ge=1, le=100_000, description="The latest N events (default: all kept).")] | None = None
    audit: Annotated[bool, Field(description="Only the audit trail: admin requests that change something.")] = False


class SwitchoverParams(Params):
    nodes = ("to",)
    to: Annotated[NodeName | None, Field(description="Replica to promote (default: the most advanced).")] = None


class FailoverParams(Params):
    nodes = ("to",)
    to: Annotated[NodeName | None, Field(description="Replica to promote (default: the most advanced).")] = None
    accept_data_loss: Annotated[
        bool,
        Field(
            description="Promote even when pgaurora cannot prove the node has "
            "every acknowledged commit (needs the admin scope)."
        ),
    ] = False


class NodeParams(Params):
    nodes = ("node",)
    node: NodeName


class AddNodesParams(Params):
    count: Annotated[int, Field(ge=1, le=15, description="Replicas to add.")] = 1


class RemoveNodeParams(Params):
    nodes = ("node",)
    node: NodeName
    drain_timeout: Annotated[Seconds, Field(description="Seconds its sessions get before they are ended.")] = 30.0


class RestartParams(Params):
    set: Annotated[
        dict[str, str], Field(description='Settings that need a restart, e.g. {"shared_buffers": "256MB"}.')
    ] = {}
    bindir: Annotated[
        str | None, Field(min_length=1, max_length=4096, description="PostgreSQL binaries of the same major version.")
    ] = None
    drain_timeout: Annotated[Seconds, Field(description="Seconds each node's reader sessions get.")] = 30.0

    @model_validator(mode="after")
    def _something(self) -> RestartParams:
        if not self.set and not self.bindir:
            raise ValueError("nothing to apply: give settings to set, a bindir, or both")
        return self


class BackupParams(Params):
    type: Annotated[Literal["full", "diff", "incr"], Field(description="Kind of backup.")] = "full"


class BacktrackParams(Params):
    to: Annotated[
        str, Field(max_length=64, description="The moment to rewind to, with its zone: '2026-11-28 10:15:00+00'.")
    ]

    @field_validator("to")
    @classmethod
    def _moment(cls, value: str) -> str:
        from ...compose.restore import parse_time  # the restore's own reading of a moment

        try:
            parse_time(value)
        except ClusterError as exc:
            raise ValueError(str(exc)) from None
        return value


class TokenParams(Params):
    user: Annotated[str, Field(min_length=1, max_length=63, description="The role the token logs in as.")]
    ttl: Annotated[
        float | None, Field(gt=0, le=86400, description="Seconds it lives (default: [tokens] default_ttl).")
    ] = None
    endpoints: Annotated[
        tuple[Annotated[str, Field(pattern=_NODE_PATTERN)], ...],
        Field(max_length=16, description="The endpoints it is good for (default: every one)."),
    ] = ()


class ConsoleParams(Params):
    token: Annotated[
        str | None, Field(max_length=200, description="A session token (pgaurora console --url), traded for a cookie.")
    ] = None


class SessionParams(Params):
    ttl: Annotated[float, Field(gt=0, le=7 * 86400, description="Seconds the console session lasts.")] = 43200.0


def _failover_scope(params: Params) -> AdminScope:
    return AdminScope.ADMIN if getattr(params, "accept_data_loss", False) else AdminScope.OPERATE


@dataclass(frozen=True)
class Route:
    """One admin route. Scope and parameters have no default: a route cannot be registered without them."""

    method: str
    path: str
    handler: str  # the AdminServer method that serves it, called with the validated Params
    scope: AdminScope
    params: type[Params]
    summary: str
    scope_for: Callable[[Params], AdminScope] | None = None  # a stronger scope for some parameters
    with_request: bool = False  # the handler also takes the request (the console: cookies, a stream)

    MUTATING: ClassVar[frozenset[str]] = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    @property
    def takes_body(self) -> bool:
        return self.method in self.MUTATING

    @property
    def path_names(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    def needed_scope(self, params: Params) -> AdminScope:
        return self.scope_for(params) if self.scope_for is not None else self.scope


RD, OP, AD = AdminScope.READ, AdminScope.OPERATE, AdminScope.ADMIN
ROUTES: tuple[Route, ...] = (
    Route("GET", "/", "console_page", RD, ConsoleParams, "The live console (HTML).", with_request=True),
    Route(
        "GET",
        "/console/stream",
        "console_stream",
        RD,
        NoParams,
        "Server-sent events: the status, and each new event, as they change.",
        with_request=True,
    ),
    Route("POST", "/console/sessions", "console_session", OP, SessionParams, "A console login URL (operate scope)."),
    Route("GET", "/status", "status", RD, NoParams, "Every node, its role, health and lag; where the endpoints point."),
    Route("GET", "/events", "events", RD, EventsParams, "The event log: failovers, switchovers, fences, the audit."),
    Route("GET", "/metrics", "scrape", RD, NoParams, "Prometheus metrics (text exposition format)."),
    Route("GET", "/openapi.json", "openapi", RD, NoParams, "This API's OpenAPI 3 document."),
    Route("POST", "/switchover", "switchover", OP, SwitchoverParams, "Planned switchover to a replica."),
    Route(
        "POST",
        "/failover",
        "failover",
        OP,
        FailoverParams,
        "Fail over from a writer that is down.",
        scope_for=_failover_scope,
    ),
    Route(
        "GET",
        "/rejoin/{node}",
        "rejoin_plan",
        RD,
        NodeParams,
        "The commands that make a fenced node a replica again, to run on its host.",
    ),
    Route("POST", "/rejoin/{node}", "rejoin", OP, NodeParams, "Rejoin a fenced former primary as a replica."),
    Route("POST", "/reload", "reload", OP, NoParams, "Reload the TLS certificate and the config file (as SIGHUP)."),
    Route("POST", "/drain/{node}", "drain", OP, NodeParams, "Take a replica out of the reader endpoint."),
    Route("POST", "/undrain/{node}", "undrain", OP, NodeParams, "Put a drained replica back in the reader endpoint."),
    Route("POST", "/nodes", "add_nodes", OP, AddNodesParams, "Add replicas; answers once each serves reads."),
    Route(
        "DELETE",
        "/nodes/{node}",
        "remove_node",
        AD,
        RemoveNodeParams,
        "Drain a replica, end its sessions after drain_timeout, remove it and its files.",
    ),
    Route(
        "POST",
        "/maintenance/restart",
        "rolling_restart",
        OP,
        RestartParams,
        "Rolling restart with new settings or binaries: replicas, a switchover, then the old primary.",
    ),
    Route("POST", "/tokens", "issue_token", OP, TokenParams, "A short-lived token a client sends as its password."),
    Route("POST", "/backups", "take_backup", OP, BackupParams, "A backup now, from a healthy replica if any."),
    Route("GET", "/backups", "list_backups", RD, NoParams, "The backups and the range a restore can reach."),
    Route("POST", "/backtrack", "backtrack", AD, BacktrackParams, "Rewind the cluster's data in place to a moment."),
    Route(
        "POST", "/backtrack/undo", "backtrack_undo", AD, NoParams, "Move back to the nodes the last backtrack replaced."
    ),
)


class Invalid(Exception):
    """A request refused before anything ran: its HTTP status, message and each problem found."""

    def __init__(self, status: int, error: str, problems: list[str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.problems = status, error, problems or []


def _problems(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()]


def validate(route: Route, query: list[tuple[str, str]], path: dict[str, str], body: bytes) -> Params:
    """The route's parameters from its path, query string and JSON body, or Invalid(400) naming each problem.
    The query string is text, parsed into the types; a JSON body is typed already and is taken strictly."""
    keys = [k for k, _ in query]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise Invalid(400, "a parameter is given more than once", [f"{k}: given more than once" for k in repeated])
    try:
        if not body.strip():
            return route.params.model_validate({**dict(query), **path})
        if not route.takes_body:
            raise Invalid(400, f"{route.method} {route.path} takes no body")
        return route.params.model_validate_json(_merge(json.loads(body), dict(query), path), strict=True)
    except ValidationError as exc:
        raise Invalid(400, f"invalid parameters for {route.method} {route.path}", _problems(exc)) from None
    except ValueError as exc:  # json.loads, and a body that is not UTF-8
        raise Invalid(400, "the body is not valid JSON", [str(exc)]) from None


def _merge(body: object, query: dict[str, str], path: dict[str, str]) -> str:
    if not isinstance(body, dict):
        raise Invalid(400, "the body must be a JSON object", [f"body: got {type(body).__name__}"])
    if query:
        raise Invalid(
            400,
            "give the parameters in the JSON body or in the query string, not both",
            [f"{k}: in the query string" for k in query],
        )
    clash = sorted(body.keys() & path.keys())
    if clash:
        raise Invalid(400, "a parameter of the path is given again in the body", [f"{k}: in the path" for k in clash])
    return json.dumps({**body, **path})


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "problems"],
    "properties": {"error": {"type": "string"}, "problems": {"type": "array", "items": {"type": "string"}}},
}
_ERRORS = {
    "400": "A parameter is unknown, malformed, of the wrong type or out of range; nothing ran.",
    "401": "No valid bearer token.",
    "403": "The token's scope does not allow this request.",
    "404": "No such route, or no such node.",
    "409": "Refused in the cluster's present state.",
    "413": f"The body is larger than {MAX_BODY_BYTES} bytes.",
    "500": "An unexpected failure.",
}


def _schema(params: type[Params], drop: list[str]) -> dict[str, Any]:
    schema = params.model_json_schema()
    schema.pop("title", None)
    props = {k: v for k, v in schema.get("properties", {}).items() if k not in drop}
    required = [k for k in schema.get("required", []) if k not in drop]
    out: dict[str, Any] = {**schema, "properties": props, "additionalProperties": False}
    out.pop("required", None)
    return {**out, "required": required} if required else out


def _operation(route: Route) -> dict[str, Any]:
    fields = route.params.model_fields
    parameters = [
        {
            "name": n,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": _NODE_PATTERN},
            "description": fields[n].description or n,
        }
        for n in route.path_names
    ]
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.handler,
        "x-pgaurora-scope": route.scope.value,
        "responses": {
            "200": {"description": "Done; the result as JSON."},
            **{
                code: {
                    "description": text,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
                for code, text in _ERRORS.items()
            },
        },
    }
    body = _schema(route.params, route.path_names)
    if route.takes_body:
        if body["properties"]:
            op["requestBody"] = {
                "required": bool(body.get("required")),
                "content": {"application/json": {"schema": body}},
            }
            op["description"] = "Parameters as a JSON body; the query string is accepted as an alias."
    else:
        parameters += [
            {
                "name": n,
                "in": "query",
                "required": n in body.get("required", []),
                "schema": s,
                **({"description": s["description"]} if "description" in s else {}),
            }
            for n, s in body["properties"].items()
        ]
    if route.scope_for is not None:
        op["description"] = (
            op.get("description", "") + " Some parameters need a stronger scope (accept_data_loss: admin)."
        ).strip()
    if parameters:
        op["parameters"] = parameters
    return op


def openapi(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ROUTES."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pgaurora admin API",
            "version": version,
            "description": "Every request carries `Authorization: Bearer TOKEN`; each route names the "
            "scope it needs (x-pgaurora-scope): read < operate < admin.",
        },
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR_SCHEMA},
        },
        "paths": paths,
    }
