"""mkdocs hook: the configuration reference, generated from pgaurora's pydantic models at build time.

A page holding `<!-- config-reference -->` gets one table per section. A setting without a description
fails the build, so the reference can neither drift from the code nor miss a key.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel

from pgaurora.config import Config, LagLimit

MARKER = "<!-- config-reference -->"


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
        out += ["", f"### `{title}`", "", " ".join((model.__doc__ or "").split()), "",
                "| key | default | meaning |", "|---|---|---|", *_rows(model)]
    return "\n".join(out) + "\n"


def _section(annotation) -> type[BaseModel] | None:
    args = getattr(annotation, "__args__", ())
    for candidate in (annotation, *args):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace(MARKER, reference()) if MARKER in markdown else markdown
