"""Typed errors of pgaurora; proxy errors carry the SQLSTATE the client receives."""

from __future__ import annotations


class PgAuroraError(Exception):
    """Root of every error pgaurora raises on purpose."""


class ProxyError(PgAuroraError):
    """An error a client receives as an ErrorResponse."""

    sqlstate = "XX000"

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class UpstreamUnavailable(ProxyError):
    sqlstate = "08006"  # connection_failure


class NodeTlsFailed(UpstreamUnavailable):
    """The node refused the TLS that backend_tls asks for, or its certificate did not verify: waiting for
    a failover would not change that."""

    sqlstate = "08001"  # sqlclient_unable_to_establish_sqlconnection


class NoWriterAvailable(ProxyError):
    sqlstate = "57P03"  # cannot_connect_now


class NoReaderAvailable(ProxyError):
    sqlstate = "57P03"


class ConfigError(PgAuroraError):
    """A configuration that cannot be used; lists every problem found."""

    def __init__(self, problems: list[str], source: str = "configuration") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid {source} ({len(problems)} problem{'s' * (len(problems) != 1)}):\n{lines}")


class ClusterError(PgAuroraError):
    """A local cluster could not be created or controlled."""


class StateError(PgAuroraError):
    """The monitor's durable state is missing, empty or unreadable; starting anyway could misroute."""


class ActionFailed(PgAuroraError):
    """A node, or an operation, did not do what was asked."""
