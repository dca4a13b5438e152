"""Observe → decide → act, for one agent.

Each cycle reads one consistent view of the cluster, asks the engine what this server must
do (``engine.plan.decide``), logs each decision once, and starts one task per hierarchy
that needs action (a hierarchy already being acted on is left alone until its step ends).
Cycles run on every store change that can change a decision, and at least once a second.
Other servers' heartbeats are timed here too (``vigil.agent.liveness``): a cycle runs when
one falls silent, and ends that server's lease before deciding.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable

from vigil.agent.actor import Actor
from vigil.agent.liveness import HeartbeatTracker, end_lease
from vigil.agent.monitor import Monitor
from vigil.agent.storeio import read_cluster
from vigil.engine.plan import Step, StepKind, decide
from vigil.errors import Compacted, StoreError, VigilError
from vigil.model.cluster import Cluster, Resource
from vigil.model.records import PREFIX, AliveRecord, key
from vigil.store.base import EventType, Store, WatchEvent

log = logging.getLogger("vigil.agent")

#: keys whose changes do not change any decision (reports, not inputs)
_REPORT_PREFIXES = (key("state", ""), key("paths", ""), key("events", ""))
_ALIVE = key("alive", "")
#: a cycle runs at least this often without changes (confirmation timeouts, switchback)
IDLE_CYCLE = 1.0


class Cycle:
    def __init__(self, store: Store, actor: Actor, trusted: Callable[[], bool]) -> None:
        self.store = store
        self.actor = actor
        self.trusted = trusted  # whether this server's lease can be trusted now
        self.cluster = Cluster()
        self.heartbeats = HeartbeatTracker(actor.server)
        self.monitor = Monitor(actor, lambda: self.cluster, self.is_busy)
        self.wake = asyncio.Event()
        self.paused = False  # maintenance: no decisions, no monitoring
        self._busy: dict[frozenset[str], asyncio.Task[None]] = {}
        self._waiting: dict[str, str] = {}
        self._extended: dict[str, Resource] = {}

    def is_busy(self, tag: str) -> bool:
        return any(tag in tags for tags in self._busy)

    async def cancel_steps(self) -> None:
        """Stop every step in progress and all monitoring (fencing, shutdown)."""
        await self.monitor.stop()
        for task in self._busy.values():
            task.cancel()
        await asyncio.gather(*self._busy.values(), return_exceptions=True)
        self._busy.clear()

    async def refresh(self) -> Cluster:
        self.cluster = await read_cluster(self.store)
        self.heartbeats.sync(self.cluster)
        return self.cluster

    def _heard(self, event: WatchEvent) -> bool:
        """Time a heartbeat; True when it changes who is alive (a join or a departure)."""
        server = event.key[len(_ALIVE) :]
        if event.type is EventType.DELETE:
            self.heartbeats.gone(server)
            return True
        try:
            ttl = AliveRecord.model_validate_json(event.value).ttl
        except ValueError:
            return True
        return self.heartbeats.saw(server, event.mod_revision, ttl)

    async def watch(self) -> None:
        """Wake the loop on every change that can change a decision."""
        revision = 0
        while True:
            try:
                if revision == 0:
                    revision = (await self.store.get_prefix(key("config"))).revision + 1
                    self.wake.set()
                async for event in self.store.watch(PREFIX, revision):
                    revision = event.mod_revision + 1
                    if event.key.startswith(_ALIVE):
                        if self._heard(event):
                            self.wake.set()
                    elif not event.key.startswith(_REPORT_PREFIXES):
                        self.wake.set()
            except Compacted:
                revision = 0
            except StoreError as exc:
                log.warning("store watch interrupted: %s", exc)
                await asyncio.sleep(0.5)

    async def loop(self) -> None:
        while True:
            due = self.heartbeats.next_due() if self.trusted() and not self.paused else None
            wait = IDLE_CYCLE if due is None else min(IDLE_CYCLE, due + 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait)
            self.wake.clear()
            try:
                await self.run_once()
            except StoreError as exc:
                log.warning("cycle skipped, store unavailable: %s", exc)
                await asyncio.sleep(0.5)
                self.wake.set()

    async def run_once(self) -> None:
        cluster = await self.refresh()
        await self._forget_unextended(cluster)
        if self.paused or not self.trusted():
            return
        if await self._end_silent_leases(cluster):
            cluster = await self.refresh()
        waiting: dict[str, str] = {}
        for step in decide(cluster, self.actor.server, self.actor.local_view(), time.time()):
            if step.kind in (StepKind.WAIT, StepKind.BLOCKED):
                waiting[step.hierarchy] = step.reason
                if self._waiting.get(step.hierarchy) != step.reason:
                    log.info("%s", step.reason)  # once per change, not once per cycle
                    if step.kind is StepKind.BLOCKED and self._announces(cluster, step):
                        await self.actor.event("failover-blocked", step.reason, step.hierarchy)
                continue
            if any(step.tags & busy for busy in self._busy):
                continue
            task = asyncio.create_task(self.actor.carry_out(cluster, step))
            self._busy[step.tags] = task
            task.add_done_callback(functools.partial(self._step_done, step.tags))
        self._waiting = waiting
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
        self.wake.set()

    async def _forget_unextended(self, cluster: Cluster) -> None:
        """Run the kits' ``delete`` for resources no longer extended to this server."""
        me = self.actor.server
        here = {tag: r for tag, r in cluster.resources.items() if me in r.instances}
        gone = [
            r
            for tag, r in self._extended.items()
            if tag not in here and tag not in self.actor.running
        ]
        self._extended = here
        for resource in gone:
            try:
                await self.actor.runner.delete(resource)
                log.info("%s is no longer extended to %s: cleaned up", resource.tag, me)
            except VigilError as exc:
                log.warning("cleanup of %s on %s failed: %s", resource.tag, me, exc)
