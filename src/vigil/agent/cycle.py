"""Observe → decide → act, for one agent.

Each cycle takes one consistent view of the cluster (the newest of the agent's
``ClusterCache``, which its watch keeps current), asks the engine what this server must do
(``engine.plan.decide``), logs each decision once, and starts one task per hierarchy that
needs action (a hierarchy already being acted on is left alone until its step ends).
Cycles run on every store change that can change a decision, and at least once a second.
Other servers' heartbeats are timed here too (``vigil.agent.liveness``), as the cache's
watch delivers them: a cycle runs when one falls silent, and ends that server's lease
before deciding (on a fresh read of the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator

from vigil.agent.actor import Actor
from vigil.agent.cache import ClusterCache
from vigil.agent.liveness import HeartbeatTracker, end_lease
from vigil.agent.monitor import Monitor
from vigil.engine.plan import Step, StepKind, decide
from vigil.errors import StoreError, VigilError
from vigil.model.cluster import Cluster, Resource
from vigil.model.records import LEGACY_EVENTS_PREFIX, AliveRecord, key
from vigil.store.base import EventType, WatchBatch, WatchEvent

log = logging.getLogger("vigil.agent")

#: keys whose changes do not change any decision (reports, not inputs; and the event log
#: of an agent of an earlier version)
_REPORT_PREFIXES = (key("state", ""), key("paths", ""), LEGACY_EVENTS_PREFIX)
_ALIVE = key("alive", "")
#: a cycle runs at least this often without changes (confirmation timeouts, switchback)
IDLE_CYCLE = 1.0


class Cycle:
    def __init__(self, cache: ClusterCache, actor: Actor, trusted: Callable[[], bool]) -> None:
        self.cache = cache
        self.store = cache.store
        self.actor = actor
        self.trusted = trusted  # whether this server's lease can be trusted now
        self.cluster = Cluster()
        self.heartbeats = HeartbeatTracker(actor.server)
        self.monitor = Monitor(actor, lambda: self.cluster, self.is_busy, lambda: self.trusted())
        self.wake = asyncio.Event()
        self.paused = False  # maintenance: no decisions, no monitoring
        self._busy: dict[frozenset[str], asyncio.Task[None]] = {}
        self._held: set[str] = set()
        self._waiting: dict[str, str] = {}
        self._extended: dict[str, Resource] = {}
        self._extended_from: object = None  # the resources mapping _extended was taken from
        self._fresh = False  # whether the next cycle reads the store (see run_once)
        cache.subscribe(self._changed)

    def is_busy(self, tag: str) -> bool:
        return tag in self._held or any(tag in tags for tags in self._busy)

    @contextlib.contextmanager
    def hold(self, tags: frozenset[str]) -> Iterator[None]:
        """No step and no check on ``tags`` while the block runs (an administrator's
        operation works on them: the mail kit's queue move stops Postfix on purpose)."""
        self._held |= tags
        try:
            yield
        finally:
            self._held -= tags
            self.wake.set()

    async def cancel_steps(self) -> None:
        """Stop every step in progress and all monitoring (fencing, shutdown)."""
        await self.monitor.stop()
        for task in self._busy.values():
            task.cancel()
        await asyncio.gather(*self._busy.values(), return_exceptions=True)
        self._busy.clear()

    async def refresh(self, *, fresh: bool = False) -> Cluster:
        """The view to decide on: the cache's newest, or with ``fresh`` a linearizable read
        of the store (at start, before leaving, after ending a lease). ``StoreError`` only
        with ``fresh``."""
        self.cluster = await self.cache.reload() if fresh else self.cache.cluster
        self.heartbeats.sync(self.cluster)
        return self.cluster

    def _changed(self, batch: WatchBatch | None) -> None:
        """The cache applied ``batch`` (None: it read the whole cluster again): time the
        heartbeats in it as they arrive, and wake the loop when a decision can change."""
        if batch is None:
            self.heartbeats.sync(self.cache.cluster)
            self.wake.set()
            return
        for event in batch:
            if event.key.startswith(_ALIVE):
                if self._heard(event):
                    self.wake.set()
            elif not event.key.startswith(_REPORT_PREFIXES):
                self.wake.set()

    def _heard(self, event: WatchEvent) -> bool:
        """Time a heartbeat; True when it changes who is alive (a join or a departure)."""
        server = event.key[len(_ALIVE) :]
        if event.type is EventType.DELETE:
            self.heartbeats.gone(server)
            return True
        try:
            beat = AliveRecord.model_validate_json(event.value)
        except ValueError:
            return True
        return self.heartbeats.saw(
            server, event.mod_revision, beat.ttl, beat.failsafe, beat.members
        )

    async def loop(self) -> None:
        while True:
            due = self.heartbeats.next_due() if self.trusted() and not self.paused else None
            wait = IDLE_CYCLE if due is None else min(IDLE_CYCLE, due + 0.001)
            # not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives
            # just after a wake-up, and the loop would go on after the agent stopped it
            woken = asyncio.ensure_future(self.wake.wait())
            try:
                await asyncio.wait((woken,), timeout=wait)
            finally:
                woken.cancel()
            self.wake.clear()
            try:
                await self.run_once()
            except StoreError as exc:
                log.warning("cycle skipped, store unavailable: %s", exc)
                await asyncio.sleep(0.5)
                self.wake.set()

    async def run_once(self) -> None:
        # after a step of its own, the next decision is taken on a fresh read: the cache
        # may not have the step's writes yet, and deciding again on a view without them
        # would take the same step again (safe, as compare-and-set refuses it, but idle)
        fresh, self._fresh = self._fresh, False
        try:
            cluster = await self.refresh(fresh=fresh)
        except StoreError:
            self._fresh = self._fresh or fresh
            raise
        await self._forget_unextended(cluster)
        if self.paused or not self.trusted():
            return
        if await self._end_silent_leases(cluster):
            cluster = await self.refresh(fresh=True)
        waiting: dict[str, str] = {}
        for step in decide(cluster, self.actor.server, self.actor.local.view(), time.time()):
            if step.kind in (StepKind.WAIT, StepKind.BLOCKED):
                waiting[step.hierarchy] = step.reason
                if self._waiting.get(step.hierarchy) != step.reason:
                    log.info("%s", step.reason)  # once per change, not once per cycle
                    if step.kind is StepKind.BLOCKED and self._announces(cluster, step):
                        await self.actor.event("failover-blocked", step.reason, step.hierarchy)
                continue
            if step.tags & self._held or any(step.tags & busy for busy in self._busy):
                continue
            task = asyncio.create_task(self.actor.carry_out(cluster, step))
            self._busy[step.tags] = task
            task.add_done_callback(functools.partial(self._step_done, step.tags))
        self._waiting = waiting
        await self.actor.report_again()
        await self.actor.report_standby(cluster)
        self.monitor.sync()

    async def _end_silent_leases(self, cluster: Cluster) -> bool:
        """End the lease of every server whose heartbeat is silent; True when there was
        one. The caller reads the cluster again: a server that renewed meanwhile (this
        watch being behind) is then timed afresh from the new read."""
        silent = sorted(self.heartbeats.silent().items())
        for server, (revision, silent_for) in silent:
            await end_lease(self.store, cluster, server, revision, silent_for, self.actor.server)
        return bool(silent)

    def _announces(self, cluster: Cluster, step: Step) -> bool:
        """One server records a blocked failover in the event log: the first alive server
        (by name) the hierarchy is extended to; the others only log it."""
        if step.announcer:
            return step.announcer == self.actor.server  # only that server decides it
        hierarchy = cluster.hierarchy(next(iter(step.tags)))
        alive = sorted(s for s in cluster.hierarchy_servers(hierarchy) if cluster.servers[s].alive)
        return bool(alive) and alive[0] == self.actor.server

    def _step_done(self, tags: frozenset[str], _task: asyncio.Task[None]) -> None:
        task = self._busy.pop(tags, None)
        if task and not task.cancelled() and task.exception():
            log.error("step on %s failed: %s", ", ".join(sorted(tags)), task.exception())
        self._fresh = True
        self.wake.set()

    async def _forget_unextended(self, cluster: Cluster) -> None:
        """Run the kits' ``delete`` for resources no longer extended to this server."""
        if cluster.resources is self._extended_from:
            return  # the same resources: what was extended here still is
        self._extended_from = cluster.resources
        me = self.actor.server
        here = {tag: r for tag, r in cluster.resources.items() if me in r.instances}
        gone = [
            r
            for tag, r in self._extended.items()
            if tag not in here and tag not in self.actor.local.running
        ]
        self._extended = here
        for resource in gone:
            try:
                await self.actor.runner.delete(resource)
                log.info("%s is no longer extended to %s: cleaned up", resource.tag, me)
            except VigilError as exc:
                log.warning("cleanup of %s on %s failed: %s", resource.tag, me, exc)
