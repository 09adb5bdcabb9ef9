"""The monitor loop: each tick probes every node, decides, acts, then publishes one Topology."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, Protocol

from ..core.config import Config
from ..core.coordination import DcsUnavailable, InstanceRole
from ..core.errors import ActionFailed, ConfigError, StateError
from ..core.eventlog import EventLog
from ..core.faultpoints import crash_point
from ..core.sslcontexts import node_ssl
from ..core.topology import TopologyHub
from . import actions, intents, snapshot
from .commands import Command, Reconfigure, Switchover, arguments
from .control import NodeController
from .decide import (
    Action,
    ClusterState,
    Decision,
    Policy,
    behind_timeline,
    decide,
    desired_sync_names,
    hearing_writer,
    known_writer,
    parse_voters_value,
    promotion_verdict,
)
from .probe import NodeStatus, Prober, bounded
from .store import StateFile, from_document, to_document

log = logging.getLogger("pgaurora.monitor")


class Standing(Protocol):
    """An instance's standing as its coordinator last judged it."""

    @property
    def role(self) -> InstanceRole: ...

    @property
    def reason(self) -> str: ...


class Coordinator(Protocol):
    """What the monitor uses of the DCS member (dcs.member.Member) when several instances share a cluster."""

    @property
    def me(self) -> str: ...

    @property
    def state_key(self) -> str: ...

    @property
    def current(self) -> Standing: ...

    @property
    def members(self) -> dict[str, dict[str, Any]]: ...

    @property
    def shared(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]: ...

    @property
    def leader(self) -> str | None: ...

    def leading(self) -> bool: ...

    async def load(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]: ...

    async def write(
        self, state: dict[str, Any] | None = None, intent: dict[str, Any] | bool | None = False
    ) -> bool: ...


def policy_for(config: Config, controller: NodeController | None) -> Policy:
    f, m = config.failover, config.monitor
    return Policy(
        addresses={n.name: n.replication_address for n in config.nodes},
        priorities={n.name: n.priority for n in config.nodes},
        failure_threshold=m.failure_threshold,
        failover=f.enabled,
        sync_mode=f.sync_mode,
        sync_acks=f.sync_acks,
        auto_rejoin=controller is not None and f.auto_rejoin,
        max_data_loss=f.data_loss_limit,
        witness_window=m.witness_window,
    )


class Monitor:
    def __init__(
        self,
        config: Config,
        hub: TopologyHub,
        events: EventLog,
        controller: NodeController | None = None,
        reset_state: bool = False,
        member: Coordinator | None = None,
    ) -> None:
        self.config, self.hub, self.events, self.controller = config, hub, events, controller
        self.nodes = {n.name: n for n in config.nodes}
        self.probers = {n.name: Prober(n, config.monitor, node_ssl(config.tls)) for n in config.nodes}
        self.policy = policy_for(config, controller)
        self.member = member  # with [dcs]: the memory lives in etcd, and only its leader acts
        self._store = (
            StateFile(Path(config.state_dir) / "monitor.json") if config.state_dir and member is None else None
        )
        self.state = self._load_state(reset_state)
        self._dirty = False  # with [dcs]: the memory changed since it was last written to etcd
        self._intent_closed = False  # with [dcs]: an intent read from etcd was reconciled; clear it there
        self._led = False  # with [dcs]: this instance led at the last tick
        self.last_seen: dict[str, NodeStatus] = {}
        self.statuses: dict[str, NodeStatus] = {}
        self.decision: Decision | None = None
        self._last_answer: dict[str, float] = {}
        self._intents = intents.open_intents(events.recent())
        self._own_intents: set[str] = set()
        self._requests: asyncio.Queue[tuple[Command, asyncio.Future[dict[str, Any]]]] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._rejoining: set[str] = set()
        self._blocked_reason: str | None = None
        self._held: str | None = None  # why writes are held (a switchover): the tick probes and routes, never acts
        self._switchover: asyncio.Task[Any] | None = None
        self._probed_at: float | None = None
        self._besides: set[asyncio.Task[Any]] = set()  # work the ticks do not wait for
        self._repointing: set[str] = set()  # replicas a failover re-points beside the loop
        self._acting: set[str] = set()  # actions under way beside the loop ("sync", "repoint n2")
        self.in_flight: Callable[[str], int] = lambda node: 0  # pooled transactions running on a node (the proxy's)

    # -- the one place the monitor's memory changes --------------------------------
    def _set_state(self, **changes: Any) -> None:
        old, self.state = self.state, replace(self.state, **changes)
        if to_document(self.state) == to_document(old):
            return
        if self._store is not None:
            self._store.save(self.state)
        self._dirty = True

    def _new_epoch(self, writer: str, timeline: int | None, **changes: Any) -> None:
        """Every change of writer goes through here, so every promotion starts a new epoch. The new
        writer's standbys have proven nothing yet, so the voters start empty (quorum.py)."""
        changes.setdefault("voters", frozenset())
        self._set_state(writer=writer, epoch=self.state.epoch + 1, timeline=timeline, **changes)

    def _load_state(self, reset: bool) -> ClusterState:
        if self._store is None:
            return ClusterState()
        if reset:
            log.warning("--reset-state: ignoring %s; the writer and epoch are rebuilt from the nodes", self._store.path)
            return ClusterState(epoch=self._reset_epoch_floor())
        state = self._store.load(self.nodes)
        if state is None and self.events.has_history:
            raise StateError(
                f"the monitor's state file {self._store.path} is missing, but {self.events.path} "
                "holds this cluster's history; start with --reset-state to rebuild it from the "
                "nodes, or restore the file from a backup"
            )
        return state or ClusterState()

    def _reset_epoch_floor(self) -> int:
        """The highest epoch the event log remembers: a rebuilt epoch never goes back below it."""
        return max((e.get("epoch") or 0 for e in self.events.recent() if isinstance(e.get("epoch"), int)), default=0)

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
        if self._held is not None:
            return await self._watch(self._held)
        if self.member is not None and not await self._lead():
            return await self._follow()
        await self._serve_requests()
        if self._held is not None:  # a switchover began: this tick only watches
            return await self._watch(self._held)
        statuses = await self.probe_all()
        self._observe(statuses)
        self._reconcile_intents()
        decision = decide(self.state, statuses, self.policy)
        if self.decision is None or decision.reason != self.decision.reason:
            log.info("%s", decision.reason)
        self.decision = decision
        await self.act(decision, statuses)
        await self.publish(decision.reason)
        await self._persist()
        return decision

    # -- several instances (with [dcs]) ------------------------------------------------------
    @property
    def _coordinator(self) -> Coordinator:
        """The DCS member, on the paths that run only with several instances."""
        if self.member is None:
            raise StateError("this path needs [dcs], and pgaurora runs as one instance")
        return self.member

    async def _lead(self) -> bool:
        """Does this instance lead? On taking the lead, etcd's memory replaces this one's first."""
        if not self._coordinator.leading():
            self._led = False
            return False
        if not self._led:
            try:
                self._adopt_shared(*await self._coordinator.load(), with_intent=True)
            except DcsUnavailable:
                return False
            self._led = True
        return True

    def _adopt_shared(
        self, document: dict[str, Any] | None, intent: dict[str, Any] | None, with_intent: bool = False
    ) -> None:
        """The memory etcd holds (the failure counts stay this instance's own)."""
        try:
            shared = from_document(document, self.nodes) if document else ClusterState()
        except ValueError as exc:
            raise StateError(
                f"the monitor's state in etcd ({self._coordinator.state_key}) is unreadable: {exc}"
            ) from None
        self.state = replace(shared, failures=self.state.failures, writer_lsn=self.state.writer_lsn)
        self._dirty = False
        if with_intent:
            self._intents = [intent] if intent else []

    async def _follow(self) -> Decision:
        """Another instance leads, or etcd is out of reach: probe and route, never act. Cut off from etcd,
        keep the last writer known only while it still answers as primary."""
        standing = self._coordinator.current
        self._refuse_requests(standing.reason)
        if self._coordinator.shared[0] is not None:
            self._adopt_shared(*self._coordinator.shared)  # as the member's last read of etcd left it
        statuses = await self.probe_all()
        self._observe(statuses)
        shown = self.state
        writer = statuses.get(self.state.writer) if self.state.writer else None
        if standing.role is InstanceRole.CUT_OFF and (writer is None or not writer.is_primary):
            shown = replace(self.state, writer=None)
        self.decision = Decision(Action.NONE, f"{standing.reason}; this instance does not act")
        await self.publish(self.decision.reason, shown)
        return self.decision

    async def _watch(self, held: str) -> Decision:
        """While a switchover holds writes: probe and route the readers, decide nothing (the switchover acts)."""
        statuses = await self.probe_all()
        self._observe(statuses)
        self.decision = Decision(Action.NONE, f"{held}; the monitor probes and routes, and acts again after it")
        await self.publish(self.decision.reason)
        return self.decision

    def probe_age(self) -> float | None:
        """Seconds since the last round of probes began (None before the first): a stuck monitor shows here."""
        return None if self._probed_at is None else time.monotonic() - self._probed_at

    def _refuse_requests(self, why: str) -> None:
        while not self._requests.empty():
            command, future = self._requests.get_nowait()
            if isinstance(command, Reconfigure):  # every instance takes a reloaded file, leader or not
                self._take(future, self._request_reconfigure, arguments(command))
                continue
            leader = self._coordinator.members.get(self._coordinator.leader or "", {}).get("admin", "the leader")
            future.set_exception(
                ActionFailed(f"this instance ({self._coordinator.me}) does not act ({why}); ask {leader}")
            )

    async def _persist(self) -> bool:
        """With [dcs]: write the memory to etcd if it changed, conditioned on still leading."""
        if self.member is None or not (self._dirty or self._intent_closed):
            return True
        if await self.member.write(state=to_document(self.state), intent=None if self._intent_closed else False):
            self._dirty = self._intent_closed = False
            return True
        return False

    async def probe_all(self) -> dict[str, NodeStatus]:
        self._probed_at = time.monotonic()
        statuses = await self._probe(self.probers)
        writer = self.state.writer
        if writer is not None and not statuses[writer].reachable:
            # The writer's probe may have hung for probe_timeout: ask the others again, so that the
            # witness check judges how recently they heard from the writer now, not a second ago.
            statuses.update(await self._probe([n for n in self.probers if n != writer and statuses[n].reachable]))
        return statuses

    async def _probe(self, names: Iterable[str]) -> dict[str, NodeStatus]:
        results = await asyncio.gather(*(self.probers[n].probe() for n in names))
        return {s.name: s for s in results}

    def _observe(self, statuses: dict[str, NodeStatus]) -> None:
        """Count failures in probe intervals without an answer, so that a probe that hangs until its
        timeout counts for the time it cost, as a refused one counts for one interval."""
        now, interval = time.monotonic(), self.config.monitor.probe_interval
        failures = {}
        for name, s in statuses.items():
            if s.reachable:
                self._last_answer[name] = now
                failures[name] = 0
            else:
                silent = now - self._last_answer.get(name, now)
                failures[name] = max(self.state.failures.get(name, 0) + 1, int(silent / interval + 0.05))
        self.statuses = statuses
        self.last_seen.update({n: s for n, s in statuses.items() if s.reachable})
        writer = statuses.get(self.state.writer) if self.state.writer else None
        writer_lsn = writer.current_lsn if writer is not None and writer.is_primary else self.state.writer_lsn
        timelines = dict(self.state.timelines)
        for name, s in statuses.items():
            if s.is_replica and s.timeline is not None:
                timelines[name] = max(timelines.get(name, 0), s.timeline)
        self._set_state(failures=failures, writer_lsn=writer_lsn, timelines=timelines)
        stuck = {
            name: self.state.stuck.get(name, 0) + 1
            for name, s in statuses.items()
            if s.is_replica and s.receiver_status != "streaming" and behind_timeline(self.state, s)
        }
        self._set_state(stuck=stuck)

    def failover_outlook(self) -> tuple[bool, str]:
        """Would a failover right now keep every acknowledged commit? (for /status and /metrics)"""
        if self.state.writer is None:
            return False, "no writer yet"
        verdict = promotion_verdict(self.state, self.statuses, self.policy)
        if verdict.safe and verdict.loss_bound == 0:
            return True, f"{verdict.candidate}: {verdict.proof}"
        return False, f"{verdict.candidate}: {verdict.proof}" if verdict.candidate else verdict.proof

    async def publish(self, reason: str, state: ClusterState | None = None) -> None:
        safe, outlook = self.failover_outlook()
        topology = snapshot.build(
            self.config,
            state or self.state,
            self.statuses,
            self.last_seen,
            reason,
            failover_safe=safe,
            failover_outlook=outlook,
            proxies=self._proxies(),
        )
        old = self.hub.current
        if replace(topology, version=old.version, published_at=old.published_at) != old:
            await self.hub.publish(topology)

    def _proxies(self) -> tuple[str, ...]:
        """Hosts of the live instances' endpoints: this one alone, or every one whose lease etcd keeps."""
        if self.member is None:
            return (self.config.writer.host,)
        hosts = {card["writer"].rpartition(":")[0] for card in self.member.members.values() if "writer" in card}
        return tuple(sorted(hosts | {self.config.writer.host}))

    async def close(self) -> None:
        for task in list(self._besides):
            task.cancel()
        await asyncio.gather(*self._besides, return_exceptions=True)
        if self._switchover is not None and not self._switchover.done():
            self._switchover.cancel()  # its caller hears that pgaurora is stopping
            await asyncio.gather(self._switchover, return_exceptions=True)
        while not self._requests.empty():  # requests nobody will serve any more: answered, not left hanging
            command, future = self._requests.get_nowait()
            if not future.done():
                future.set_exception(ActionFailed(f"pgaurora is stopping; the {command.kind} was not started"))
        await asyncio.gather(*(p.close() for p in self.probers.values()))

    # -- write-ahead intents -------------------------------------------------------------
    def _reconcile_intents(self) -> None:
        """Close each open failover intent by what the nodes now say (before decide, so that a promotion
        pgaurora made is never recorded as adopted from outside)."""
        for intent in list(self._intents):
            found = intents.reconcile(intent, self.state, self.statuses)
            if found is None:
                continue
            self._intents.remove(intent)
            self._intent_closed = self.member is not None and not self._intents
            if found.follow:
                old = intent["old_writer"]
                self._new_epoch(
                    intent["candidate"], found.timeline, fenced=(self.state.fenced | {old}) - {intent["candidate"]}
                )
            late = "late" if intent["intent"] in self._own_intents else "after_restart"
            kind = f"failover_completed_{late}" if found.completed else "failover_abandoned"
            self.events.record(
                kind,
                found.found,
                intent=intent["intent"],
                old_writer=intent.get("old_writer"),
                new_writer=intent["candidate"] if found.completed else None,
                epoch=self.state.epoch,
            )

    # -- acting ----------------------------------------------------------------------------
    async def act(self, decision: Decision, statuses: dict[str, NodeStatus]) -> None:
        if decision.action is not Action.NO_CANDIDATE:
            self._blocked_reason = None
        handler = getattr(self, f"_act_{decision.action.value}", None)
        if handler is None:
            return
        if self.member is not None:
            self._dirty = True  # write even an unchanged memory: the conditioned write proves the lead now
            if not await self._persist():
                return  # not the leader any more (or etcd is gone): act on nothing
        failover = self.config.failover
        limit = failover.catchup_timeout + failover.promote_timeout + 4 * self.config.monitor.probe_timeout
        outcome = await bounded(handler(decision, statuses), limit)  # a frozen node never stalls the loop
        if isinstance(outcome, Exception):
            self.events.record(
                "action_failed", f"{decision.action.value} {decision.target}: {outcome}", decision=decision.reason
            )

    async def _act_no_candidate(self, decision: Decision, statuses: dict[str, NodeStatus]) -> None:
        """Record each distinct refusal to promote once, not every tick."""
        if decision.reason != self._blocked_reason:
            self._blocked_reason = decision.reason
            self.events.record(
                "failover_blocked",
                decision.reason,
                writer=self.state.writer,
                candidate=decision.target,
                voters=sorted(self.state.voters),
            )

    async def _act_elect(self, decision: Decision, statuses: dict[str, NodeStatus]) -> None:
        chosen = statuses[decision.node]
        rivals = {s.name for s in statuses.values() if s.is_primary and s.name != chosen.name}
        epoch = max(self.state.epoch + 1, chosen.timeline or 0)  # never below what the timelines show
        self._set_state(
            writer=chosen.name,
            epoch=epoch,
            timeline=chosen.timeline,
            system_id=chosen.system_id,
            fenced=self.state.fenced | rivals,
            voters=frozenset(),
        )
        self.events.record("elect", decision.reason, writer=chosen.name, epoch=self.state.epoch)

    async def _act_adopt(self, decision: Decision, statuses: dict[str, NodeStatus]) -> None:
        old = known_writer(self.state)
        fenced = self.state.fenced if statuses[old].is_replica else self.state.fenced | {old}
        chosen = statuses[decision.node]
        self._new_epoch(chosen.name, chosen.timeline, fenced=fenced - {chosen.name})
        self.events.record("adopt", decision.reason, writer=chosen.name, old_writer=old, epoch=self.state.epoch)

    async def _act_fence(self, decision: Decision, statuses: dict[str, NodeStatus]) -> None:
        self._set_state(fenced=self.state.fenced | {decision.node})
        self.events.record("fence", decision.reason, node=decision.node, epoch=self.state.epoch)

    async def _act_unfence(self, decision: Decision, statuses: dict[str, NodeStatus]) -> None:
        self._set_state(fenced=self.state.fenced - {decision.node})
        self.events.record("unfence", decision.reason, node=decision.node)

    async def _act_repoint(self, decision: Decision, statuses: dict[str, NodeStatus]) -> None:
        """Beside the loop (a replica that hangs must not hold up the ticks); decide asks again until the
        probes show it done, and a request already under way is not repeated."""
        if decision.node in self._repointing or f"repoint {decision.node}" in self._acting:
            return  # the failover's own re-pointing, or an earlier tick's, is still at it
        node, writer = self.nodes[decision.node], self.nodes[known_writer(self.state)]

        async def repoint() -> None:
            await actions.repoint(self.config, node, writer)
            self.events.record("repoint", decision.reason, node=node.name, upstream=writer.name)

        self._act_beside(f"repoint {decision.node}", repoint())

    async def _act_set_sync(self, decision: Decision, statuses: dict[str, NodeStatus]) -> None:
        """Beside the loop, as a re-point: a writer that hangs right then must not delay its own failover."""
        if "sync" in self._acting:
            return
        node, value = self.nodes[decision.node], decision.value or ""

        async def set_sync() -> None:
            await actions.set_sync_names(self.config, node, value)
            self.events.record("sync_standbys", decision.reason, value=decision.value)

        self._act_beside("sync", set_sync())

    def _act_beside(self, what: str, work: Coroutine[Any, Any, None]) -> None:
        self._acting.add(what)

        async def bounded_work() -> None:
            try:
                outcome = await bounded(work, 2 * self.config.monitor.probe_timeout + 1)
                if isinstance(outcome, Exception):
                    raise outcome
            finally:
                self._acting.discard(what)

        self._beside(bounded_work(), what)

    async def _act_set_voters(self, decision: Decision, statuses: dict[str, NodeStatus]) -> None:
        """Record the voters; when they shrink, are first set or rely on more acknowledgements, only once that
        many of them have caught up."""
        voters, proven = parse_voters_value(decision.value)
        stricter = bool(self.state.voters) and voters >= self.state.voters and proven <= self.state.proven
        if voters and not stricter:
            wait = max(self.config.monitor.probe_interval, 0.1)
            writer = self.nodes[known_writer(self.state)]
            if not await actions.caught_up(self.config, writer, voters, wait, needed=proven):
                return  # the decision stays the same; the next tick checks again
        self._set_state(voters=voters, proven=proven)
        self.events.record("voters", decision.reason, voters=sorted(voters), proven=proven, epoch=self.state.epoch)

    async def _act_rejoin(self, decision: Decision, statuses: dict[str, NodeStatus]) -> None:
        """Rewinding or re-cloning takes a while: do it beside the loop, which keeps probing."""
        name = decision.node
        if name in self._rejoining:
            return
        self._rejoining.add(name)
        task = asyncio.get_running_loop().create_task(self.rejoin(name, decision.reason))
        self._besides.add(task)  # kept, and cancelled when the monitor stops
        task.add_done_callback(lambda t: self._rejoined(name, t))

    def _rejoined(self, name: str, task: asyncio.Task[Any]) -> None:
        self._rejoining.discard(name)
        self._besides.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.events.record("action_failed", f"rejoin {name}: {task.exception()}")

    async def _act_promote(self, decision: Decision, statuses: dict[str, NodeStatus]) -> None:
        await self._failover(decision.node, decision.reason, statuses, loss_bound=decision.loss_bound)

    # -- failover, switchover, rejoin ---------------------------------------------------------
    async def _failover(
        self, target: str, reason: str, statuses: dict[str, NodeStatus], *, loss_bound: int | None, forced: bool = False
    ) -> dict[str, Any]:
        """Promote target with a write-ahead intent, so that a crash at any step leaves a true history."""
        phases = {"detected": time.time()}
        old = known_writer(self.state)
        intent = self.events.record(
            "failover_started",
            reason,
            intent=uuid.uuid4().hex[:12],
            old_writer=old,
            candidate=target,
            epoch=self.state.epoch + 1,
            timeline=self.state.timeline,
            forced=forced,
            loss_bound_bytes=loss_bound,
        )
        self._intents.append(intent)
        self._own_intents.add(intent["intent"])
        if self.member is not None and not await self.member.write(state=to_document(self.state), intent=intent):
            self._abandon(
                intent, f"not promoting {target}: this instance no longer leads ({self.member.current.reason})"
            )
        crash_point("after_intent")
        phases["candidate_chosen"] = time.time()
        moved = await self._detach_followers(old, target, statuses)
        phases["followers_detached"] = time.time()
        if moved and not forced:
            if self.member is not None:
                await self.member.write(intent=None)
            self._abandon(
                intent,
                f"not promoting {target}: {', '.join(moved)} received WAL past it after the decision (the old "
                f"writer {old} answered late); deciding again on the WAL they hold now that they are detached",
            )
        after = replace(self.state, writer=target, fenced=self.state.fenced | {old})
        sync = desired_sync_names(after, statuses, self.policy)
        timeline = await actions.promote(self.config, self.nodes[target], sync, self.state.timeline)
        phases["promoted"] = time.time()
        crash_point("after_promote")
        self._new_epoch(target, timeline, fenced=(self.state.fenced | {old}) - {target})
        await self._persist()
        crash_point("after_epoch")
        self.statuses = {
            **self.statuses,
            target: replace(statuses[target], in_recovery=False, timeline=timeline, sync_names=sync),
        }
        await self.publish(reason)
        phases["endpoints_switched"] = phases["dns_updated"] = time.time()
        self._intents.remove(intent)
        if self.member is not None:
            await self.member.write(intent=None)
        repointing = [n for n in self.nodes if n not in {old, target} and n not in self.state.fenced]
        self._repointing = set(repointing)
        self._beside(self._repoint_after_failover(old, target), f"re-point the replicas at {target}")
        return self.events.record(
            "failover",
            reason,
            intent=intent["intent"],
            old_writer=old,
            new_writer=target,
            epoch=self.state.epoch,
            timeline=timeline,
            sync_standbys=sync,
            repointing=repointing,
            forced=forced,
            loss_bound_bytes=loss_bound,
            phases={k: round(v, 3) for k, v in phases.items()},
            downtime_from_detection=round(phases["endpoints_switched"] - phases["detected"], 3),
        )

    def _abandon(self, intent: dict[str, Any], why: str) -> NoReturn:
        self._intents.remove(intent)
        self.events.record(
            "failover_abandoned",
            why,
            intent=intent["intent"],
            old_writer=intent["old_writer"],
            new_writer=None,
            epoch=self.state.epoch,
        )
        raise ActionFailed(why)

    async def _detach_followers(self, old: str, target: str, statuses: dict[str, NodeStatus]) -> list[str]:
        """Before a promotion, stop every other reachable replica streaming, so that an old writer that wakes up
        (a paused host) cannot hand one WAL the candidate lacks. Returns those whose WAL went, by then, past both
        what the decision saw of them and the candidate: the decision's premise no longer holds."""
        names = sorted(n for n, s in statuses.items() if s.is_replica and n not in {old, target, *self.state.fenced})
        timeout = self.config.monitor.probe_timeout
        results = await asyncio.gather(
            *(bounded(actions.detach(self.config, self.nodes[n], timeout), 2 * timeout) for n in names)
        )
        moved = []
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("could not detach %s before promoting %s: %s", name, target, result)
            elif result is not None and result > max(statuses[name].wal_position, statuses[target].wal_position):
                moved.append(name)
        return moved

    async def _repoint_after_failover(self, old: str, target: str) -> None:
        """Beside the loop: a replica that hangs must not hold up the ticks (and decide re-points one it missed)."""
        try:
            repointed = await self.repoint_all(exclude={old, target})
        finally:
            self._repointing = set()
        crash_point("after_repoint")
        if repointed:
            self.events.record(
                "repoint", f"after the failover: {', '.join(repointed)} follow {target}", nodes=repointed
            )

    def _beside(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run work beside the loop; a failure is an event, a task is kept until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._besides.add(task)

        def ended(t: asyncio.Task[None]) -> None:
            self._besides.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.events.record("action_failed", f"{what}: {t.exception()}")

        task.add_done_callback(ended)

    async def repoint_all(self, exclude: set[str]) -> list[str]:
        """Point every replica but exclude (and the fenced) at the writer; returns those that took it."""
        names = [n for n in self.nodes if n not in exclude and n not in self.state.fenced]
        writer = self.nodes[known_writer(self.state)]
        limit = 2 * self.config.monitor.probe_timeout + 1
        results = await asyncio.gather(
            *(bounded(actions.repoint(self.config, self.nodes[n], writer), limit) for n in names)
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, Exception):
                log.warning("could not re-point %s: %s", name, result)
        return [n for n, r in zip(names, results, strict=True) if not isinstance(r, Exception)]

    async def rejoin_once(self, name: str, reason: str) -> str:
        """Rejoin a fenced node unless a rejoin of it is under way already (self-healing calls this)."""
        if name in self._rejoining:
            raise ActionFailed(f"a rejoin of {name} is under way already")
        self._rejoining.add(name)
        try:
            return await self.rejoin(name, reason)
        finally:
            self._rejoining.discard(name)

    async def rejoin(self, name: str, reason: str) -> str:
        if self.controller is None:
            raise ActionFailed(
                f"rejoin needs a cluster started by pgaurora (compose); for this cluster, "
                f"run `pgaurora rejoin {name} --print` and the commands it prints "
                f"on {name}'s host"
            )
        how = await asyncio.to_thread(self.controller.rejoin, name, known_writer(self.state))
        self.events.record("rejoin", reason, node=name, upstream=self.state.writer, method=how)
        return how

    # -- the writer during a switchover (switchover.py drives these) ---------------------------
    async def hold_writes(self, reason: str) -> None:
        """No writer until resume_writer() or install_writer(): new writer sessions wait, and the ticks
        between only probe and route."""
        self._held = reason
        self._set_state(writer=None)
        await self.publish(reason)

    async def resume_writer(self, name: str, reason: str) -> None:
        self._held = None
        self._set_state(writer=name)
        await self.publish(reason)

    async def install_writer(self, name: str, timeline: int, reason: str) -> None:
        self._held = None
        self._new_epoch(name, timeline)
        await self._persist()
        await self.publish(reason)

    def wake(self) -> None:
        """Run the next tick now (etcd's shared state changed, for instance), not at the next interval."""
        self._wake.set()

    # -- requests from the admin endpoint ------------------------------------------------------
    async def request(self, command: Command) -> dict[str, Any]:
        """Run a command inside the loop, between ticks; returns its result."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await self._requests.put((command, future))
        self._wake.set()
        return await future

    async def _serve_requests(self) -> None:
        while not self._requests.empty():
            command, future = self._requests.get_nowait()
            if isinstance(command, Reconfigure):
                self._take(future, self._request_reconfigure, arguments(command))
                continue
            if isinstance(command, Switchover):
                self._begin_switchover(command, future)
                if self._held is not None:
                    return  # later commands wait for the switchover's next ticks
                continue
            try:
                result = await getattr(self, f"_request_{command.kind}")(**arguments(command))
                future.set_result(result)
            except Exception as exc:
                future.set_exception(exc)
            except asyncio.CancelledError:  # the service is stopping: the caller hears so, now
                if not future.done():
                    future.set_exception(ActionFailed(f"pgaurora is stopping; the {command.kind} was interrupted"))
                raise

    @staticmethod
    def _take(future: asyncio.Future[Any], handler: Callable[..., Any], args: dict[str, Any]) -> None:
        try:
            future.set_result(handler(**args))
        except Exception as exc:
            future.set_exception(exc)

    def _request_reconfigure(self, config: Config, added: tuple[str, ...], removed: tuple[str, ...]) -> dict[str, Any]:
        """Take a reloaded configuration between ticks: probe added nodes, forget removed ones (never the
        writer or a voter), and decide by the new settings from the next tick on."""
        refused = [
            f"nodes: {name} is the writer: switch over first, then remove it"
            for name in removed
            if name == self.state.writer
        ]
        refused += [
            f"nodes: {name} is a voter of quorum commit: stop or drain it, wait until the voters "
            "narrow without it (pgaurora status), then remove it"
            for name in removed
            if name in self.state.voters
        ]
        if refused:
            raise ConfigError(refused, "the reloaded configuration")
        for name in removed:
            asyncio.get_running_loop().create_task(self.probers.pop(name).close())
        nodes = {n.name: n for n in config.nodes}
        for prober in self.probers.values():
            prober.monitor = config.monitor
        for name in added:
            self.probers[name] = Prober(nodes[name], config.monitor, node_ssl(config.tls))
        leaving = self.policy.leaving & nodes.keys()
        self.config, self.nodes = config, nodes
        self.policy = replace(policy_for(config, self.controller), leaving=leaving)
        self.statuses = {n: s for n, s in self.statuses.items() if n in nodes}
        self.last_seen = {n: s for n, s in self.last_seen.items() if n in nodes}
        self._set_state(fenced=self.state.fenced & nodes.keys(), drained=self.state.drained & nodes.keys())
        return {"added": list(added), "removed": list(removed)}

    async def _request_replace(
        self, config: Config, writer: str, reason: str, stop_leaving: Callable[[], Awaitable[None]] | None = None
    ) -> dict[str, Any]:
        """Serve another set of nodes (a backtrack or its undo): `writer`, a primary of the new set, becomes the
        writer in a new epoch. With stop_leaving: writes are held first (new transactions wait), transactions
        in flight on pooled endpoints get drain_timeout to finish, and then the nodes leaving are stopped."""
        if writer not in {n.name for n in config.nodes}:
            raise ActionFailed(f"{writer} is not one of the new nodes")
        prober = Prober(next(n for n in config.nodes if n.name == writer), config.monitor, node_ssl(config.tls))
        status = await prober.probe()  # before anything changes: a refusal here leaves the old nodes serving
        if not status.is_primary:
            await prober.close()
            raise ActionFailed(f"{writer} does not answer as a primary: {status.error or 'in recovery'}")
        try:
            unfinished = await self._leave(stop_leaving, reason) if stop_leaving is not None else 0
        except BaseException:
            await prober.close()
            raise
        await asyncio.gather(*(p.close() for p in self.probers.values()))
        self.probers = {
            n.name: Prober(n, config.monitor, node_ssl(config.tls)) for n in config.nodes if n.name != writer
        }
        self.probers[writer] = prober
        self.config, self.nodes = config, {n.name: n for n in config.nodes}
        self.policy = policy_for(config, self.controller)
        self.statuses, self.last_seen, self._last_answer = {}, {}, {}
        self._held = None
        self._new_epoch(
            writer, status.timeline, fenced=frozenset(), drained=frozenset(), failures={}, system_id=status.system_id
        )
        self.events.record(
            "writer_replaced", reason, new_writer=writer, epoch=self.state.epoch, nodes=sorted(self.nodes)
        )
        statuses = await self.probe_all()
        self._observe(statuses)
        await self._persist()
        await self.publish(reason)
        nodes = sorted(self.nodes)
        return {"writer": writer, "epoch": self.state.epoch, "nodes": nodes, "unfinished_transactions": unfinished}

    async def _leave(self, stop_leaving: Callable[[], Awaitable[None]], reason: str) -> int:
        """Hold writes, let pooled transactions on the writer finish (drain_timeout), stop the nodes leaving.
        How many transactions were still running. If the stop fails, the writer is given back."""
        from .switchover import drain

        old = self.state.writer
        await self.hold_writes(f"{reason}: writes paused")
        unfinished = await drain(self, old) if old is not None else 0
        try:
            await stop_leaving()
        except Exception:
            if old is not None:
                await self.resume_writer(old, f"{reason}: failed to stop the nodes leaving; {old} writes again")
            raise
        return unfinished

    async def _request_rejoin(self, node: str) -> dict[str, Any]:
        if node not in self.nodes or node == self.state.writer:
            raise ActionFailed(f"{node!r} is not a node that can rejoin (writer is {self.state.writer})")
        how = await self.rejoin(node, f"rejoin of {node} requested")
        return {"node": node, "method": how}

    async def _request_drain(self, node: str) -> dict[str, Any]:
        """Take a replica out of the reader endpoint without stopping it: no new reader session goes there;
        the sessions already on it go on."""
        if node not in self.nodes:
            raise ActionFailed(f"no node named {node!r} (nodes: {', '.join(self.nodes)})")
        if node == self.state.writer:
            raise ActionFailed(
                f"{node} is the writer; drain applies to replicas: switch over first "
                f"(`pgaurora switchover`), then drain it"
            )
        if node not in self.state.drained:
            self._set_state(drained=self.state.drained | {node})
            self.events.record("drain", f"{node} drained: no new reader sessions go there", node=node)
            await self._persist()
            await self.publish(f"{node} drained")
        return {"node": node, "drained": sorted(self.state.drained)}

    async def _request_retire(self, node: str, leaving: bool = True) -> dict[str, Any]:
        """Ahead of a replica's removal, take it out of synchronous replication: the next ticks narrow the
        synchronous standbys, then the voters (once the others have caught up), without it.
        leaving=False puts it back (a removal that did not go through)."""
        if node not in self.nodes:
            raise ActionFailed(f"no node named {node!r} (nodes: {', '.join(self.nodes)})")
        if leaving and node == self.state.writer:
            raise ActionFailed(f"{node} is the writer: switch over first (`pgaurora switchover`)")
        changed = self.policy.leaving ^ {node} if (node in self.policy.leaving) != leaving else self.policy.leaving
        self.policy = replace(self.policy, leaving=changed)
        return {"node": node, "leaving": sorted(self.policy.leaving)}

    async def _request_undrain(self, node: str) -> dict[str, Any]:
        if node not in self.nodes:
            raise ActionFailed(f"no node named {node!r} (nodes: {', '.join(self.nodes)})")
        if node in self.state.drained:
            self._set_state(drained=self.state.drained - {node})
            self.events.record("undrain", f"{node} back in the reader endpoint once healthy", node=node)
            await self._persist()
            await self.publish(f"{node} undrained")
        return {"node": node, "drained": sorted(self.state.drained)}

    def _begin_switchover(self, command: Switchover, future: asyncio.Future[dict[str, Any]]) -> None:
        """Check the switchover now, then run it beside the loop: the ticks go on probing and routing while it
        waits for the old writer to stop, the target to catch up and the old writer to rejoin."""
        from .switchover import prepare, switchover

        try:
            if self._switchover is not None and not self._switchover.done():
                raise ActionFailed("a switchover is under way already")
            old, target = prepare(self, command.to)
        except ActionFailed as exc:
            future.set_exception(exc)
            return
        task = asyncio.get_running_loop().create_task(switchover(self, old, target))
        self._switchover = task
        task.add_done_callback(lambda t: self._switched(t, future))
        self._held = f"switchover from {old} to {target} under way"  # from this tick on, until it installs

    def _switched(self, task: asyncio.Task[dict[str, Any]], future: asyncio.Future[dict[str, Any]]) -> None:
        self._held = None  # a switchover that failed has resumed its writer already, or must not hold writes
        self._wake.set()
        if future.done():
            return
        if task.cancelled():
            future.set_exception(ActionFailed("pgaurora is stopping; the switchover was interrupted"))
        elif task.exception() is not None:
            future.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            future.set_result(task.result())

    async def _request_failover(self, to: str | None = None, accept_data_loss: bool = False) -> dict[str, Any]:
        """An operator's failover: only when the writer is down; unsafe only with accept_data_loss."""
        if self.state.writer is None:
            raise ActionFailed("there is no writer to fail over from (starting, or a switchover is under way)")
        if self.statuses[self.state.writer].is_primary:
            raise ActionFailed(
                f"writer {self.state.writer} is healthy; use `pgaurora switchover` for a planned change of writer"
            )
        witnesses = hearing_writer(self.state, self.statuses, self.policy)
        if witnesses:
            raise ActionFailed(
                f"writer {self.state.writer} is alive: {', '.join(witnesses)} still "
                "receive from it; promoting now would make two primaries"
            )
        verdict = promotion_verdict(self.state, self.statuses, self.policy, target=to)
        forced = not verdict.safe and accept_data_loss
        if forced:
            verdict = promotion_verdict(self.state, self.statuses, self.policy, target=to, forced=True)
        if not verdict.safe or verdict.candidate is None:
            raise ActionFailed(verdict.proof)
        reason = f"failover to {verdict.candidate} requested: {verdict.proof}"
        if forced:
            self.events.record(
                "failover_unsafe",
                reason,
                candidate=verdict.candidate,
                old_writer=self.state.writer,
                loss_bound_bytes=verdict.loss_bound,
                voters=sorted(self.state.voters),
            )
        return await self._failover(
            verdict.candidate, reason, self.statuses, loss_bound=verdict.loss_bound, forced=forced
        )
