"""Typed protocol errors, each carrying the SQLSTATE to report to the peer."""


class ProtocolError(Exception):
    """A violation of the wire protocol; `sqlstate` is what an ErrorResponse should carry."""

    sqlstate = "08P01"  # protocol_violation

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if sqlstate is not None:
            self.sqlstate = sqlstate


class LocalProtocolError(ProtocolError):
    """We were asked to encode something the protocol cannot carry."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not valid protocol."""
