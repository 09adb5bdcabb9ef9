"""Frozen dataclasses, one per protocol message, named as in the PostgreSQL docs. Don't subclass these."""

from __future__ import annotations

from dataclasses import dataclass, field

AUTH_NAMES = {
    0: "AuthenticationOk",
    2: "AuthenticationKerberosV5",
    3: "AuthenticationCleartextPassword",
    5: "AuthenticationMD5Password",
    7: "AuthenticationGSS",
    8: "AuthenticationGSSContinue",
    9: "AuthenticationSSPI",
    10: "AuthenticationSASL",
    11: "AuthenticationSASLContinue",
    12: "AuthenticationSASLFinal",
}


class Event:
    """Base of every wire event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class StartupMessage(Event):
    parameters: tuple[tuple[str, str], ...]
    protocol: int = 3 << 16

    @property
    def version(self) -> tuple[int, int]:
        return self.protocol >> 16, self.protocol & 0xFFFF

    def get(self, name: str, default: str | None = None) -> str | None:
        return dict(self.parameters).get(name, default)


@dataclass(frozen=True, slots=True)
class SSLRequest(Event):
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest(Event):
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest(Event):
    process_id: int
    secret_key: bytes


@dataclass(frozen=True, slots=True)
class Authentication(Event):
    code: int
    data: bytes = b""

    @property
    def name(self) -> str:
        return AUTH_NAMES.get(self.code, f"Authentication({self.code})")


@dataclass(frozen=True, slots=True)
class BackendKeyData(Event):
    process_id: int
    secret_key: bytes


@dataclass(frozen=True, slots=True)
class ParameterStatus(Event):
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ReadyForQuery(Event):
    status: bytes  # b"I" idle, b"T" in transaction, b"E" failed transaction


@dataclass(frozen=True, slots=True)
class _Fields(Event):
    fields: tuple[tuple[str, str], ...] = field(default=())

    def get(self, code: str, default: str = "") -> str:
        for key, value in self.fields:
            if key == code:
                return value
        return default

    @property
    def severity(self) -> str:
        return self.get("V") or self.get("S")

    @property
    def sqlstate(self) -> str:
        return self.get("C")

    @property
    def message(self) -> str:
        return self.get("M")


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Fields):
    pass


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Fields):
    pass


@dataclass(frozen=True, slots=True)
class UnknownMessage(Event):
    """A tagged message the proxy relays without understanding."""

    type: bytes
    payload: bytes
