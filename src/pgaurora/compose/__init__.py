"""Start real PostgreSQL clusters: local processes, each node on its own loopback address."""

from .local import LocalCluster
from .node import LocalNode

__all__ = ["LocalCluster", "LocalNode"]
