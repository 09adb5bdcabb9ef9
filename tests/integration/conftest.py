"""A real cluster (a primary and two streaming replicas) and a pgaurora Service in front of it."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import ServiceThread, make_cluster, service_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def cluster():
    c = make_cluster(replicas=2)
    yield c
    c.destroy()
    shutil.rmtree(c.root.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def proxy(cluster):
    svc = ServiceThread(
        service_config(cluster, monitor={"max_replica_lag": "1MB"}, proxy={"startup_timeout": 2.0}), cluster=cluster
    )
    svc.wait_ready()
    yield svc
    svc.stop()


@pytest.fixture
def fresh_cluster():
    """A cluster of its own, for tests that kill or promote nodes."""
    made = []

    def make(replicas: int = 2, **kwargs):
        c = make_cluster(replicas=replicas, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.destroy()
        shutil.rmtree(c.root.parent, ignore_errors=True)


@pytest.fixture
def service():
    """Start a ServiceThread for a config; stopped at teardown."""
    started = []

    def start(config, cluster=None):
        svc = ServiceThread(config, cluster=cluster)
        started.append(svc)
        svc.wait_ready()
        return svc

    yield start
    for svc in started:
        svc.stop()
