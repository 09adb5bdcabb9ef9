"""The pgaurora command line: up, proxy, status, events, switchover, rejoin."""

from .main import cli

__all__ = ["cli"]
