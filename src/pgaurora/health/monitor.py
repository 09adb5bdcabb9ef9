"""The monitor loop: each tick probes every node, decides, acts, then publishes one Topology."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from ..config import Config
from ..eventlog import EventLog
from ..topology import TopologyHub
from . import actions, snapshot
from .decide import ClusterState, Decision, Policy, decide, desired_sync_names
from .probe import NodeStatus, Prober, bounded

log = logging.getLogger("pgaurora.monitor")


class NodeController(Protocol):
    """Node-level control the monitor may have (compose clusters): used to rejoin and switch over."""

    def rejoin(self, name: str, upstream: str) -> str: ...

    def stop_node(self, name: str) -> int: ...

    def start_node(self, name: str) -> None: ...


class Monitor:
    def __init__(self, config: Config, hub: TopologyHub, events: EventLog,
                 controller: NodeController | None = None) -> None:
        self.config, self.hub, self.events, self.controller = config, hub, events, controller
        self.nodes = {n.name: n for n in config.nodes}
        self.probers = {n.name: Prober(n, config.monitor) for n in config.nodes}
        self.policy = Policy(
            addresses={n.name: n.replication_address for n in config.nodes},
            priorities={n.name: n.priority for n in config.nodes},
            failure_threshold=config.monitor.failure_threshold, failover=config.failover.enabled,
            sync_mode=config.failover.sync_mode,
            auto_rejoin=controller is not None and config.failover.auto_rejoin)
        self._state_file = Path(config.state_dir) / "monitor.json" if config.state_dir else None
        self.state = self._load_state()
        self.last_seen: dict[str, NodeStatus] = {}
        self.statuses: dict[str, NodeStatus] = {}
        self.decision: Decision | None = None
        self._requests: asyncio.Queue = asyncio.Queue()
        self._wake = asyncio.Event()
        self._rejoining: set[str] = set()

    # -- the one place the monitor's memory changes --------------------------------
    def _set_state(self, **changes) -> None:
        self.state = replace(self.state, **changes)
        if self._state_file is not None and set(changes) - {"failures"}:
            data = {"writer": self.state.writer, "epoch": self.state.epoch, "timeline": self.state.timeline,
                    "system_id": self.state.system_id, "fenced": sorted(self.state.fenced)}
            self._state_file.write_text(json.dumps(data) + "\n")

    def _new_epoch(self, writer: str, timeline: int | None, **changes) -> None:
        """Every change of writer goes through here, so every promotion starts a new epoch."""
        self._set_state(writer=writer, epoch=self.state.epoch + 1, timeline=timeline, **changes)

    def _load_state(self) -> ClusterState:
        if self._state_file is None or not self._state_file.exists():
            return ClusterState()
        data = json.loads(self._state_file.read_text())
        if data.get("writer") not in self.nodes:
            return ClusterState()
        return ClusterState(writer=data["writer"], epoch=data["epoch"], timeline=data.get("timeline"),
                            system_id=data.get("system_id"), fenced=frozenset(data.get("fenced", ())))

    # -- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        interval = self.config.monitor.probe_interval
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.tick()
            elapsed = loop.time() - started
            if elapsed > interval * 2:
                log.warning("monitor tick took %.2f s (probe_interval %.2f s)", elapsed, interval)
            self._wake.clear()
            try:
                async with asyncio.timeout(max(0.0, interval - elapsed)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def tick(self) -> Decision:
        await self._serve_requests()
        statuses = await self.probe_all()
        self._observe(statuses)
        decision = decide(self.state, statuses, self.policy)
        if self.decision is None or decision.reason != self.decision.reason:
            log.info("%s", decision.reason)
        self.decision = decision
        await self.act(decision, statuses)
        await self.publish(decision.reason)
        return decision

    async def probe_all(self) -> dict[str, NodeStatus]:
        results = await asyncio.gather(*(p.probe() for p in self.probers.values()))
        return {s.name: s for s in results}

    def _observe(self, statuses: dict[str, NodeStatus]) -> None:
        failures = {name: 0 if s.reachable else self.state.failures.get(name, 0) + 1
                    for name, s in statuses.items()}
        self.statuses = statuses
        self.last_seen.update({n: s for n, s in statuses.items() if s.reachable})
        self._set_state(failures=failures)

    async def publish(self, reason: str) -> None:
        topology = snapshot.build(self.config, self.state, self.statuses, self.last_seen, reason)
        old = self.hub.current
        if replace(topology, version=old.version, published_at=old.published_at) != old:
            await self.hub.publish(topology)

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.probers.values()))

    # -- acting ----------------------------------------------------------------------------
    async def act(self, decision: Decision, statuses: dict[str, NodeStatus]) -> None:
        handler = getattr(self, f"_act_{decision.action.value}", None)
        if handler is None:
            return
        failover = self.config.failover
        limit = failover.catchup_timeout + failover.promote_timeout + 4 * self.config.monitor.probe_timeout
        outcome = await bounded(handler(decision, statuses), limit)  # a frozen node never stalls the loop
        if isinstance(outcome, Exception):
            self.events.record("action_failed", f"{decision.action.value} {decision.target}: {outcome}",
                               decision=decision.reason)

    async def _act_elect(self, decision: Decision, statuses) -> None:
        chosen = statuses[decision.target]
        rivals = {s.name for s in statuses.values() if s.is_primary and s.name != chosen.name}
        self._new_epoch(chosen.name, chosen.timeline, system_id=chosen.system_id, fenced=self.state.fenced | rivals)
        self.events.record("elect", decision.reason, writer=chosen.name, epoch=self.state.epoch)

    async def _act_adopt(self, decision: Decision, statuses) -> None:
        old = self.state.writer
        fenced = self.state.fenced if statuses[old].is_replica else self.state.fenced | {old}
        chosen = statuses[decision.target]
        self._new_epoch(chosen.name, chosen.timeline, fenced=fenced - {chosen.name})
        self.events.record("adopt", decision.reason, writer=chosen.name, old_writer=old, epoch=self.state.epoch)

    async def _act_fence(self, decision: Decision, statuses) -> None:
        self._set_state(fenced=self.state.fenced | {decision.target})
        self.events.record("fence", decision.reason, node=decision.target, epoch=self.state.epoch)

    async def _act_unfence(self, decision: Decision, statuses) -> None:
        self._set_state(fenced=self.state.fenced - {decision.target})
        self.events.record("unfence", decision.reason, node=decision.target)

    async def _act_repoint(self, decision: Decision, statuses) -> None:
        await actions.repoint(self.config, self.nodes[decision.target], self.nodes[self.state.writer])
        self.events.record("repoint", decision.reason, node=decision.target, upstream=self.state.writer)

    async def _act_set_sync(self, decision: Decision, statuses) -> None:
        await actions.set_sync_names(self.config, self.nodes[decision.target], decision.value)
        self.events.record("sync_standbys", decision.reason, value=decision.value)

    async def _act_rejoin(self, decision: Decision, statuses) -> None:
        """Rewinding or re-cloning takes a while: do it beside the loop, which keeps probing."""
        name = decision.target
        if name in self._rejoining:
            return
        self._rejoining.add(name)
        task = asyncio.get_running_loop().create_task(self.rejoin(name, decision.reason))
        task.add_done_callback(lambda t: self._rejoined(name, t))

    def _rejoined(self, name: str, task: asyncio.Task) -> None:
        self._rejoining.discard(name)
        if not task.cancelled() and task.exception() is not None:
            self.events.record("action_failed", f"rejoin {name}: {task.exception()}")

    async def _act_promote(self, decision: Decision, statuses) -> None:
        await self._failover(decision, statuses)

    # -- failover, switchover, rejoin ---------------------------------------------------------
    async def _failover(self, decision: Decision, statuses) -> None:
        phases = {"detected": time.time()}
        old, target = self.state.writer, decision.target
        after = replace(self.state, writer=target, fenced=self.state.fenced | {old})
        sync = desired_sync_names(after, statuses, self.policy)
        phases["candidate_chosen"] = time.time()
        timeline = await actions.promote(self.config, self.nodes[target], sync, self.state.timeline)
        phases["promoted"] = time.time()
        self._new_epoch(target, timeline, fenced=(self.state.fenced | {old}) - {target})
        self.statuses = {**self.statuses, target: replace(statuses[target], in_recovery=False,
                                                          timeline=timeline, sync_names=sync)}
        await self.publish(decision.reason)
        phases["endpoints_switched"] = phases["dns_updated"] = time.time()
        repointed = await self._repoint_all(exclude={old, target})
        self.events.record("failover", decision.reason, old_writer=old, new_writer=target, epoch=self.state.epoch,
                           timeline=timeline, sync_standbys=sync, repointed=repointed,
                           phases={k: round(v, 3) for k, v in phases.items()},
                           downtime_from_detection=round(phases["endpoints_switched"] - phases["detected"], 3))

    async def _repoint_all(self, exclude: set[str]) -> list[str]:
        names = [n for n in self.nodes if n not in exclude and n not in self.state.fenced]
        writer = self.nodes[self.state.writer]
        limit = 2 * self.config.monitor.probe_timeout + 1
        results = await asyncio.gather(*(bounded(actions.repoint(self.config, self.nodes[n], writer), limit)
                                         for n in names))
        for name, result in zip(names, results):
            if isinstance(result, Exception):
                log.warning("could not re-point %s: %s", name, result)
        return [n for n, r in zip(names, results) if not isinstance(r, Exception)]

    async def rejoin(self, name: str, reason: str) -> str:
        if self.controller is None:
            raise actions.ActionFailed("rejoin needs a cluster started by pgaurora (compose)")
        how = await asyncio.to_thread(self.controller.rejoin, name, self.state.writer)
        self.events.record("rejoin", reason, node=name, upstream=self.state.writer, method=how)
        return how

    # -- requests from the admin endpoint ------------------------------------------------------
    async def request(self, kind: str, **args) -> dict:
        """Run a switchover or rejoin inside the loop, between ticks; returns its result."""
        future = asyncio.get_running_loop().create_future()
        await self._requests.put((kind, args, future))
        self._wake.set()
        return await future

    async def _serve_requests(self) -> None:
        while not self._requests.empty():
            kind, args, future = self._requests.get_nowait()
            try:
                result = await getattr(self, f"_request_{kind}")(**args)
                future.set_result(result)
            except Exception as exc:
                future.set_exception(exc)

    async def _request_rejoin(self, node: str) -> dict:
        if node not in self.nodes or node == self.state.writer:
            raise actions.ActionFailed(f"{node!r} is not a node that can rejoin (writer is {self.state.writer})")
        how = await self.rejoin(node, f"rejoin of {node} requested")
        return {"node": node, "method": how}

    async def _request_switchover(self, to: str | None = None) -> dict:
        from .switchover import switchover
        return await switchover(self, to)
