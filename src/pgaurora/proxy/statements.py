"""What a statement does to a transaction-pooled session: settings to carry, and what pins the client to its
server connection. A cheap look for a keyword first; PostgreSQL's own parser (pglast) only where it found one."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_MAYBE_SET = re.compile(rb"(^|;)\s*(set|reset)\s", re.IGNORECASE)
_MAYBE_PIN = re.compile(rb"advisory_lock|temp|listen|hold|prepare|set_config", re.IGNORECASE)

ADVISORY_LOCKS = frozenset(
    {"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"}
)
CURSOR_OPT_HOLD = 0x0020


class Pin:
    """Why a client keeps its server connection until it leaves (counted by reason in /metrics)."""

    ADVISORY_LOCK = "advisory_lock"
    TEMP_TABLE = "temp_table"
    LISTEN = "listen"
    WITH_HOLD_CURSOR = "with_hold_cursor"
    SQL_PREPARE = "sql_prepare"
    SET_CONFIG = "set_config"  # a setting changed by a function call: its value cannot be known to carry


@dataclass(frozen=True, slots=True)
class Effect:
    """pins: reasons to pin; settings: (name, the statement that sets it, or None for RESET); reset_all."""

    pins: tuple[str, ...] = ()
    settings: tuple[tuple[str, str | None], ...] = ()
    reset_all: bool = False


NOTHING = Effect()


def effect(sql: bytes | memoryview) -> Effect:
    """What sql (one or several statements) does to the session; NOTHING for the common case, cheaply."""
    if not _MAYBE_SET.search(sql) and not _MAYBE_PIN.search(sql):
        return NOTHING
    return _parsed(bytes(sql))


@lru_cache(maxsize=1024)  # applications send the same few statements again and again
def _parsed(sql: bytes) -> Effect:
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        statements = parse_sql(sql.decode("utf-8", "replace"))
    except ParseError:
        return NOTHING  # the server will say what is wrong with it
    pins: list[str] = []
    settings: list[tuple[str, str | None]] = []
    reset_all = False
    for raw in statements:
        text = _text(sql, raw.stmt_location or 0, raw.stmt_len or 0)
        reset_all |= _setting(raw.stmt, text, settings)
        pins += _pins(raw.stmt)
    return Effect(tuple(dict.fromkeys(pins)), tuple(settings), reset_all)


def _text(sql: bytes, start: int, length: int) -> str:
    return (sql[start : start + length] if length else sql[start:]).decode("utf-8", "replace").strip()


def _setting(stmt: Any, text: str, settings: list[tuple[str, str | None]]) -> bool:
    """Record a session-level SET or RESET of stmt into settings; True for RESET ALL."""
    from pglast.ast import VariableSetStmt
    from pglast.enums import VariableSetKind

    if not isinstance(stmt, VariableSetStmt) or stmt.is_local:
        return False
    if stmt.kind is VariableSetKind.VAR_RESET_ALL:
        settings.clear()
        return True
    name = (stmt.name or "").lower()
    if stmt.kind is VariableSetKind.VAR_SET_MULTI and name == "transaction":
        return False  # SET TRANSACTION: this transaction only
    settings.append((name, None if stmt.kind is VariableSetKind.VAR_RESET else text))
    return False


def _pins(stmt: Any) -> list[str]:
    from pglast.ast import ListenStmt, PrepareStmt
    from pglast.visitors import Visitor

    found: list[str] = []

    class Finder(Visitor):
        def visit_FuncCall(self, ancestors: object, node: object) -> None:
            name = node.funcname[-1].sval  # type: ignore[attr-defined]
            if name in ADVISORY_LOCKS:
                found.append(Pin.ADVISORY_LOCK)
            elif name == "set_config":
                found.append(Pin.SET_CONFIG)

        def visit_CreateStmt(self, ancestors: object, node: object) -> None:
            if node.relation.relpersistence == "t":  # type: ignore[attr-defined]
                found.append(Pin.TEMP_TABLE)

        def visit_IntoClause(self, ancestors: object, node: object) -> None:
            if node.rel.relpersistence == "t":  # type: ignore[attr-defined]
                found.append(Pin.TEMP_TABLE)

        def visit_DeclareCursorStmt(self, ancestors: object, node: object) -> None:
            if node.options & CURSOR_OPT_HOLD:  # type: ignore[attr-defined]
                found.append(Pin.WITH_HOLD_CURSOR)

    if isinstance(stmt, ListenStmt):
        found.append(Pin.LISTEN)
    elif isinstance(stmt, PrepareStmt):
        found.append(Pin.SQL_PREPARE)
    Finder()(stmt)
    return found


_SET_CONFIG = re.compile(r"set_config\('(?:[^']|'')*',\s*'((?:[^']|'')*)'", re.IGNORECASE)
_SET_VALUE = re.compile(r"(?:=|\bto\b)\s*(?:'((?:[^']|'')*)'|([\w.+-]+))\s*;?\s*$", re.IGNORECASE)


def setting_value(sql: str) -> str | None:
    """The value a carried setting's statement gives: `SELECT set_config('name', 'value', false)` (from the
    startup packet) or `SET name = value` / `SET name TO 'value'` (the client's own)."""
    found = _SET_CONFIG.search(sql) or _SET_VALUE.search(sql)
    if found is None:
        return None
    quoted, bare = found.group(1), found.group(2) if found.re is _SET_VALUE else None
    return quoted.replace("''", "'") if quoted is not None else bare
