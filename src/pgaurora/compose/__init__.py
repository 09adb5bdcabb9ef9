"""Real PostgreSQL clusters, each node on its own loopback address: local processes or Docker containers, with
the etcd, certificates, image and pgBackRest they need."""

from .local import LocalCluster
from .node import LocalNode

__all__ = ["LocalCluster", "LocalNode"]
