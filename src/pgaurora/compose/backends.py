"""The cluster backends by name (local processes, Docker containers), and opening a cluster whichever made it."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import ClusterError
from .local import LocalCluster, read_spec

NAMES = ("local", "docker")


def cluster_class(backend: str) -> type[LocalCluster]:
    """The class of a backend; Docker's (and the docker library) loads only when it is asked for."""
    if backend == "local":
        return LocalCluster
    if backend == "docker":
        from .docker import DockerCluster

        return DockerCluster
    raise ClusterError(f"no backend named {backend!r} (backends: {', '.join(NAMES)})")


def open_cluster(state_dir: str | Path, bindir: str | None = None) -> LocalCluster:
    """A cluster previously created in state_dir, by whichever backend made it (recorded in cluster.json)."""
    return cluster_class(read_spec(state_dir).get("backend", "local")).open(state_dir, bindir)
