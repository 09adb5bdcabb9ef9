"""The pgaurora command line (`pgaurora --help`; docs/cli.md is generated from the commands themselves)."""

from .main import cli

__all__ = ["cli"]
