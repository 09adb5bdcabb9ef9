"""mkdocs hook: the configuration and admin API references, generated from pgaurora's own models at build time.

A page holding `<!-- config-reference -->` gets one table per section. A setting without a description
fails the build, so the reference can neither drift from the code nor miss a key. A page holding
`<!-- api-reference -->` gets the admin routes from the route table's OpenAPI document, which the site
also serves as openapi.json.
"""

from __future__ import annotations

import json
from enum import Enum

from pydantic import BaseModel

from pgaurora.core.config import Config, LagLimit
from pgaurora.service.admin.routes import openapi

MARKER = "<!-- config-reference -->"
API_MARKER = "<!-- api-reference -->"


def _default(value: object) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, LagLimit):
        return f'`"{value.bytes // 1024**2}MB"`' if value.bytes else f'`"{value.seconds}s"`'
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def _rows(model: type[BaseModel]) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        if not field.description:
            raise ValueError(f"{model.__name__}.{name} has no description: write a docstring under it")
        default = "required" if field.is_required() else _default(field.default)
        rows.append(f"| `{name}` | {default} | {' '.join(field.description.split())} |")
    return rows


def reference() -> str:
    out = []
    top = {n: f for n, f in Config.model_fields.items() if not _section(f.annotation)}
    out += ["### Top level", "", "| key | default | meaning |", "|---|---|---|"]
    out += [r for r in _rows(Config) if r.split("`")[1] in top]
    for name, field in Config.model_fields.items():
        model = _section(field.annotation)
        if model is None:
            continue
        title = f"[[{name}]]" if name == "nodes" else f"[{name}]"
        out += [
            "",
            f"### `{title}`",
            "",
            " ".join((model.__doc__ or "").split()),
            "",
            "| key | default | meaning |",
            "|---|---|---|",
            *_rows(model),
        ]
    return "\n".join(out) + "\n"


def _section(annotation) -> type[BaseModel] | None:
    args = getattr(annotation, "__args__", ())
    for candidate in (annotation, *args):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _parameters(op: dict) -> list[str]:
    rows = [
        (p["name"], p["in"], p["schema"], p.get("description", ""), p.get("required", False))
        for p in op.get("parameters", [])
    ]
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    rows += [
        (n, "body", s, s.get("description", ""), n in body.get("required", []))
        for n, s in body.get("properties", {}).items()
    ]
    out = []
    for name, where, schema, text, required in rows:
        kind = schema.get("type") or "/".join(a.get("type", "?") for a in schema.get("anyOf", []))
        limits = ", ".join(f"{k} {schema[k]}" for k in ("minimum", "maximum", "enum", "pattern") if k in schema)
        default = "required" if required else f"default `{json.dumps(schema.get('default'))}`"
        out.append(f"| `{name}` | {where} | {kind}{' (' + limits + ')' if limits else ''} | {default} | {text} |")
    return out


def api_reference() -> str:
    doc, out = openapi("docs"), []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            out += [
                f"### `{method.upper()} {path}`",
                "",
                f"{op['summary']} Scope: **{op['x-pgaurora-scope']}**. " + op.get("description", ""),
                "",
            ]
            rows = _parameters(op)
            if rows:
                out += ["| parameter | in | type | default | meaning |", "|---|---|---|---|---|", *rows, ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    markdown = markdown.replace(MARKER, reference()) if MARKER in markdown else markdown
    return markdown.replace(API_MARKER, api_reference()) if API_MARKER in markdown else markdown


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, "openapi.json", content=json.dumps(openapi("docs"), indent=2)))
    return files
