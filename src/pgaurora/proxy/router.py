"""Pick the node for a new connection from the current Topology: writer, or a reader by policy."""

from __future__ import annotations

import itertools
from enum import Enum

from ..core import custom_endpoints
from ..core.config import Config, CustomEndpointConfig, Fallback, ReaderPolicy
from ..core.errors import NoReaderAvailable, NoWriterAvailable
from ..core.topology import NodeState, Role, Topology, TopologyHub
from .state import ProxyState


class EndpointKind(str, Enum):
    WRITER = "writer"
    READER = "reader"


class Router:
    def __init__(self, hub: TopologyHub, config: Config, state: ProxyState) -> None:
        self.hub, self.config, self.state = hub, config, state
        self._turn = itertools.count()

    def candidates(
        self, kind: EndpointKind, topology: Topology | None = None, custom: CustomEndpointConfig | None = None
    ) -> list[NodeState]:
        """Nodes to try, best first; raises a ProxyError when there is none."""
        topology = topology or self.hub.current
        if custom is not None:
            return self._custom(custom, topology)
        if kind is EndpointKind.WRITER:
            writer = topology.writer_node
            if writer is None:
                raise NoWriterAvailable("no primary is known for the writer endpoint", detail=topology.reason)
            return [writer]
        return self._readers(topology)

    def _readers(self, topology: Topology) -> list[NodeState]:
        readers = list(topology.reader_nodes)
        if readers:
            return self._ordered(readers)
        writer = topology.writer_node
        if self.config.reader.fallback is Fallback.WRITER and writer is not None:
            return [writer]
        raise NoReaderAvailable(
            "no replica is available for the reader endpoint", detail="every replica is down, lagging or fenced"
        )

    def _custom(self, spec: CustomEndpointConfig, topology: Topology) -> list[NodeState]:
        nodes = custom_endpoints.targets(spec, topology)
        if not nodes:
            members = ", ".join(sorted(custom_endpoints.pool(spec, topology)))
            raise NoReaderAvailable(
                f"custom endpoint {spec.name}: none of its nodes is available",
                detail=f"members: {members}; each is down, lagging, drained or fenced",
            )
        return self._ordered(nodes)

    def _ordered(self, readers: list[NodeState]) -> list[NodeState]:
        if self.config.reader.policy is ReaderPolicy.LEAST_CONNECTIONS:
            start = next(self._turn) % len(readers)  # rotate ties
            rotated = readers[start:] + readers[:start]
            return sorted(rotated, key=lambda n: self.state.count(n.name))
        start = next(self._turn) % len(readers)
        return readers[start:] + readers[:start]

    def still_valid(self, kind: EndpointKind, node: str, topology: Topology) -> bool:
        """May an established session on node stay open under this topology?"""
        if kind is EndpointKind.WRITER:
            return topology.writer == node
        state = topology.node(node)
        return state is not None and state.role is not Role.FENCED
