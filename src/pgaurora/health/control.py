"""NodeController: the node-level control the monitor may have (a composed cluster), to rejoin and switch over."""

from __future__ import annotations

from typing import Protocol


class NodeController(Protocol):
    """Node-level control the monitor may have (compose clusters): used to rejoin and switch over."""

    def rejoin(self, name: str, upstream: str) -> str: ...

    def stop_node(self, name: str) -> int: ...

    def start_node(self, name: str) -> None: ...
