"""Stopping pgaurora while a request is under way answers the request; a startup self-check survives a switchover."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import operator
import threading

from pgaurora.cli.runtime import check_endpoint
from pgaurora.core.errors import ActionFailed
from pgaurora.health.commands import Switchover
from tests.helpers import ServiceThread, service_config


def test_a_switchover_under_way_when_pgaurora_stops_is_answered_not_left_hanging(fresh_cluster):
    cluster = fresh_cluster(replicas=1)
    svc = ServiceThread(service_config(cluster), cluster=cluster)
    svc.wait_ready()
    pending = asyncio.run_coroutine_threadsafe(svc.service.monitor.request(Switchover()), svc.loop)
    svc.stop()
    try:
        result = pending.result(timeout=30)  # done before the stop, or interrupted by it: never a hang
        assert result["new_writer"] == "n2"
    except ActionFailed as exc:
        assert "pgaurora is stopping" in str(exc)
    except concurrent.futures.TimeoutError:
        raise AssertionError("the switchover request was left hanging after pgaurora stopped") from None


def test_the_startup_self_check_tries_again_when_its_session_is_lost(fresh_cluster, service):
    """A switchover or a failover at startup takes the self-check's session; the check must not fail for it."""
    cluster = fresh_cluster(replicas=1)
    svc = service(service_config(cluster), cluster=cluster)
    host, port = svc.writer
    stop = threading.Event()

    def terminate_sessions() -> None:  # what a writer going away does to the sessions on it
        while not stop.is_set():
            cluster.node("n1").sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = "
                "'client backend' AND pid <> pg_backend_pid() AND query LIKE '%pg_is_in_recovery%'"
            )

    async def loop() -> list[bool]:
        return [await check_endpoint(host, port, "postgres", cluster.password) for _ in range(20)]

    async def checks() -> list[bool]:
        return functools.reduce(operator.iadd, await asyncio.gather(*(loop() for _ in range(8))), [])

    killer = threading.Thread(target=terminate_sessions, daemon=True)
    killer.start()
    try:
        results = asyncio.run(checks())
    finally:
        stop.set()
        killer.join(30)
    assert results == [False] * 160  # every check reached the writer in the end; none failed
