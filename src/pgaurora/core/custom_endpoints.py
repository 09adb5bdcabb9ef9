"""Which nodes a custom endpoint serves under the current Topology (pure; the router and DNS read it)."""

from __future__ import annotations

from .config import CustomEndpointConfig, CustomRole, Fallback
from .topology import NodeState, Topology


def pool(spec: CustomEndpointConfig, topology: Topology) -> set[str]:
    """Its members: the static list, or every node but the excluded ones."""
    if spec.nodes is not None:
        return set(spec.nodes)
    return {n.name for n in topology.nodes} - set(spec.exclude)


def serving(spec: CustomEndpointConfig, topology: Topology) -> list[NodeState]:
    """Members that take sessions now: healthy, non-lagging, undrained replicas (the reader endpoint's
    rules); with role `any`, the writer too when it is a member."""
    members = pool(spec, topology)
    nodes = [n for n in topology.reader_nodes if n.name in members]
    writer = topology.writer_node
    if spec.role is CustomRole.ANY and writer is not None and writer.name in members:
        nodes.append(writer)
    return nodes


def targets(spec: CustomEndpointConfig, topology: Topology) -> list[NodeState]:
    """serving(), or the writer when none serves and the endpoint falls back to it."""
    nodes = serving(spec, topology)
    if not nodes and spec.fallback is Fallback.WRITER and topology.writer_node is not None:
        return [topology.writer_node]
    return nodes
