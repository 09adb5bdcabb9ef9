"""pytest plugin: the `aurora_cluster` fixture, a pgaurora cluster per test.

The backend comes from `--pgaurora-backend local|docker`, else the PGAURORA_BACKEND environment
variable, else local. Installed with pgaurora through the pytest11 entry point.
"""

from __future__ import annotations

import os

import pytest

from . import AuroraCluster


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--pgaurora-backend",
        choices=("local", "docker"),
        default=None,
        help="where aurora_cluster runs its nodes (default: $PGAURORA_BACKEND, else local)",
    )


@pytest.fixture
def aurora_cluster(request):
    backend = request.config.getoption("--pgaurora-backend") or os.environ.get("PGAURORA_BACKEND", "local")
    with AuroraCluster(replicas=2, backend=backend) as cluster:
        yield cluster
