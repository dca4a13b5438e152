"""The agent: one per server. Holds its lease, runs observe → decide → act (``cycle``),
monitors, keeps its fence guard informed, and serves the REST API.

Lifecycle: ``Agent.run()`` opens the store, grants the lease, registers the server, probes
what is already running, then runs until ``stop()``. How it stops:

* ``hold`` (the seed's default, "do not switch over"): its hierarchies are taken out of
  service and stay so (no other server takes them over) until it is back;
* ``switchover`` (the server's shutdown strategy): they move to their next server first;
* ``maintenance`` (``vigil agent stop --leave-resources``, the seed's ``lkstop -f``): they
  keep running, unmonitored (ISU), and nobody takes them over until the agent is back.

Only ``vigil.__main__`` exits the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from vigil.agent import housekeeping, intents
from vigil.agent.actor import Actor
from vigil.agent.cache import ClusterCache
from vigil.agent.config import AgentConfig
from vigil.agent.cycle import Cycle
from vigil.agent.failsafe import Failsafe
from vigil.agent.fencing import Cgroups, FencePlan, ensure_guard
from vigil.agent.kitrunner import KitRunner
from vigil.agent.lease import LeaseKeeper
from vigil.agent.metrics import AgentMetrics
from vigil.agent.paths import PathMonitor
from vigil.agent.probe import probe
from vigil.agent.secrets import SecretBox
from vigil.agent.standby import StandbyKeeper
from vigil.agent.storeio import event_operation
from vigil.engine import shutdown
from vigil.errors import StoreError, StoreUnavailable, VigilError
from vigil.kits.registry import KitRegistry, load_kits
from vigil.model.cluster import Cluster
from vigil.model.policies import StopMode
from vigil.model.records import AliveRecord, ServerRecord, StoppedRecord, key
from vigil.model.states import InstanceState
from vigil.store import embedded_path, open_store
from vigil.store.base import Delete, Store

log = logging.getLogger("vigil.agent")

#: general store requests may take this long; lease renewals have their own, shorter bound
STORE_TIMEOUT = 2.0
#: how often an agent that cannot reach its store at start tries again
STORE_RETRY = 0.5
T = TypeVar("T")


class Agent:
    """The per-server daemon."""

    def __init__(self, config: AgentConfig, kits: KitRegistry | None = None) -> None:
        self.config = config
        #: the embedded store's database file for the fence guard ("" on etcd)
        self._store_file = embedded_path(config.store) or ""
        self.server = config.server
        self.kits = kits or load_kits()
        self.store: Store | None = None
        self.lease_store: Store | None = None
        self.lease: LeaseKeeper | None = None
        self.failsafe: Failsafe | None = None
        self.actor: Actor | None = None
        self.cache: ClusterCache | None = None
        self.cycle: Cycle | None = None
        self.cgroups = Cgroups(self.server, config.state_dir)
        self.stop_mode: StopMode | None = None
        self._template: tuple[object, FencePlan] | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._restarting: asyncio.Task[None] | None = None
        self.started_at = time.time()
        #: what the agent measures for Prometheus (GET /metrics)
        self.metrics = AgentMetrics(self.server)

    @property
    def cluster(self) -> Cluster:
        return self.cycle.cluster if self.cycle else Cluster()

    # --- lifecycle -------------------------------------------------------------------------

    async def run(
        self, serve_api: Callable[[Agent], Coroutine[Any, Any, None]] | None = None
    ) -> None:
        """Run until ``stop()``; raises ``VigilError`` when the agent cannot start."""
        for error in self.kits.errors:
            log.error("%s", error)
        settings = self.config.lease
        self.store = self.metrics.instrument(await self._open_store(STORE_TIMEOUT), "general")
        # a connection of its own, so a slow request never delays a renewal
        self.lease_store = self.metrics.instrument(
            await self._open_store(settings.request_timeout), "lease"
        )
        # failsafe: hold the lease through a store outage every agent confirms
        self.failsafe = Failsafe.for_agent(self.config, lambda: self.cluster)
        self.lease = LeaseKeeper(
            self.lease_store,
            settings,
            self.server,
            self._lease_lost,
            self._write_plan,
            failsafe=self.failsafe,
        )
        await self._patiently(self.lease.check_timing)  # ConfigError: unsafe timing
        runner = KitRunner(
            self.kits,
            self.server,
            self.config.state_dir,
            tuple(self.config.addresses),
            self.cgroups,
        )
        runner.secrets = SecretBox(self.config.secrets_key_file)  # ConfigError: unusable key
        runner.measure = self.metrics.kit_action
        self.actor = Actor(
            self.store, runner, self.server, lambda: self.lease.lease_id if self.lease else 0
        )
        self.actor.trusted = lambda: bool(self.lease and self.lease.valid())
        self.cache = ClusterCache(self.store)
        self.cycle = Cycle(self.cache, self.actor, self.actor.trusted)
        runner.view = lambda: self.cluster  # what a kit may see of its neighbours
        runner.notify = self.actor.event
        paths = PathMonitor(self.store, self.server, self.config.api.port)
        ensure_guard(self.config.state_dir, self.config.lease.realtime_priority)
        if self.failsafe is not None:
            where = self.config.api
            heard = self.cycle.heartbeats.heard  # a confirmation given counts as a heartbeat
            await self.failsafe.listen(
                where.listen, where.port, self.lease.store_unreachable, heard
            )
        await self._patiently(self._join)
        # renewals start before the probe: a slow probe must not cost the lease
        tasks = self._tasks = [asyncio.create_task(self.lease.run(), name="lease")]
        tasks[0].add_done_callback(self._lease_ended)
        await self._probe()
        tasks += [
            asyncio.create_task(self.cache.run(), name="watch"),
            asyncio.create_task(self.cycle.loop(), name="loop"),
            asyncio.create_task(paths.run(lambda: self.cluster), name="paths"),
            asyncio.create_task(housekeeping.run(self.store, self.server, lambda: self.cluster)),
            # kits' standbys and eligibility (a mirror target's receiver and its sync state)
            asyncio.create_task(
                StandbyKeeper(self.actor, lambda: self.cluster, self.cycle.is_busy).run(),
                name="standby",
            ),
        ]
        api = asyncio.create_task(serve_api(self), name="api") if serve_api else None
        log.info(
            "agent of %s started (store %s, api %s)",
            self.server,
            self.config.store,
            self.config.api.url,
        )
        try:
            await self._stopping.wait()
        finally:
            await self._shutdown(tasks)
            if api is not None:
                api.cancel()
                await asyncio.gather(api, return_exceptions=True)

    async def _open_store(self, request_timeout: float) -> Store:
        """A store connection, waiting as long as the store is unreachable or busy."""
        return await self._patiently(
            lambda: open_store(self.config.store, request_timeout=request_timeout)
        )

    async def _patiently(self, action: Callable[[], Awaitable[T]]) -> T:
        """``action``, tried again as long as the store is unreachable or busy: an agent
        started at boot may come up before its store, one restarted after a fault may come
        up during an etcd election or under a load that delays the store's answers past the
        lease's short request timeout, and several agents opening one embedded store at
        once wait for each other's lock. Settings it can never use (``ConfigError``) and an
        agent asked to stop end the wait."""
        waiting_since = None
        while True:
            try:
                result = await action()
            except StoreUnavailable as exc:
                if self._stopping.is_set():
                    raise
                if waiting_since is None:
                    log.warning("waiting for the store: %s", exc)
                    waiting_since = time.monotonic()
                await asyncio.sleep(STORE_RETRY)
                continue
            if waiting_since is not None:
                log.info("the store answers after %.1fs", time.monotonic() - waiting_since)
            return result

    def stop(self, mode: StopMode | None = None) -> None:
        """Ask for an orderly stop (signal-handler safe). ``mode`` None: the server's shutdown
        strategy; MAINTENANCE: leave the resources running."""
        self.stop_mode = mode
        self._stopping.set()

    async def _join(self) -> None:
        """Grant the lease and register this server (persistent) and its liveness (leased)."""
        assert self.store and self.lease
        record = ServerRecord(
            name=self.server,
            api_url=self.config.api.url,
            addresses=self.config.addresses,
            registered_at=time.time(),
        )
        await self.store.put(key("servers", self.server), record.dump())
        await self.lease.grant(AliveRecord(started_at=self.started_at, pid=os.getpid()))

    async def _probe(self) -> None:
        """Find what runs here already, then lift an earlier hold or maintenance."""
        assert self.store and self.actor and self.cycle
        cluster = await self.cycle.refresh(fresh=True)
        await probe(self.actor, cluster)
        if self.server in cluster.stopped:
            back = f"{self.server} is back ({cluster.stopped[self.server]} lifted)"
            await self.store.txn(
                (),
                (
                    Delete(key("stopped", self.server)),
                    event_operation(self.server, "agent-started", back),
                ),
            )
        self._write_plan()

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        assert self.cycle and self.actor
        # first no new decisions (the loop could start a step while steps are cancelled),
        # then no step in progress; the lease is renewed until the hierarchies are left
        lease = [t for t in tasks if t.get_name() == "lease"]
        others = [t for t in tasks if t.get_name() != "lease"]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self.cycle.cancel_steps()
        mode = self.stop_mode or StopMode.HOLD
        with contextlib.suppress(VigilError):
            await self._leave(mode)
        for task in lease:
            task.cancel()
        await asyncio.gather(*lease, return_exceptions=True)
        self._write_plan(mode="stopped")
        if mode is not StopMode.MAINTENANCE:  # in maintenance the resources keep running
            await asyncio.to_thread(self.cgroups.remove_all)
        if self.lease:
            await self.lease.revoke()
        if self.failsafe is not None:
            self.failsafe.close()
        for store in (self.store, self.lease_store):
            if store:
                await store.close()
        log.info("agent of %s stopped (%s)", self.server, mode)

    async def _leave(self, mode: StopMode) -> None:
        """Record why this server stops, then hand over, remove or leave its hierarchies,
        as the engine says (``engine.shutdown``)."""
        assert self.store and self.actor and self.cycle
        cluster = await self.cycle.refresh(fresh=True)
        await self.store.put(
            key("stopped", self.server), StoppedRecord(mode=mode, at=time.time()).dump()
        )
        local = self.actor.local
        leaving = shutdown.leave(cluster, self.server, mode, local.running, local.known)
        if mode is StopMode.MAINTENANCE:
            log.info(
                "maintenance: leaving %s running, unmonitored",
                ", ".join(leaving.left_running) or "nothing",
            )
        for tag in leaving.left_running:
            await self.actor.report(tag, InstanceState.ISU, shutdown.LEFT_RUNNING)
        for move in leaving.moves:
            await intents.move(
                self.store,
                cluster,
                cluster.hierarchy(move.hierarchy),
                move.target,
                me=self.server,
                reason=move.reason,
                kind="shutdown-switchover",
            )
        await self.actor.event("agent-stopped", leaving.event)
        await self._remove(leaving.removal)

    def _lease_ended(self, task: asyncio.Task[None]) -> None:
        """The lease keeper must run as long as the agent does: say why it ended if not."""
        if self._stopping.is_set():
            return
        if task.cancelled():
            log.error(
                "the lease keeper was cancelled while the agent runs: no renewal now "
                "(cancel requests pending: %d)",
                task.cancelling(),
            )
        elif (exc := task.exception()) is not None:
            log.error("the lease keeper failed: no renewal now: %r", exc, exc_info=exc)
        # never on without a lease keeper: fence as for a lost lease, then renew a new one
        self._restarting = asyncio.get_running_loop().create_task(self._restart_lease())

    async def _restart_lease(self) -> None:
        assert self.lease
        self.lease.lost_lease, self.lease.lease_id = self.lease.lease_id, 0
        await self._lease_lost("the lease keeper ended while the agent runs")
        if self._stopping.is_set():
            return
        task = asyncio.create_task(self.lease.run(), name="lease")
        task.add_done_callback(self._lease_ended)
        self._tasks.append(task)  # stopped last by _shutdown, as the first one

    async def _lease_lost(self, reason: str) -> None:
        """Self-fencing: without a lease this server may hold nothing in service."""
        assert self.cycle and self.lease
        log.error("fencing %s: %s; taking every hierarchy out of service", self.server, reason)
        await self.cycle.cancel_steps()
        assert self.actor
        with self.actor.local.fencing_now():
            await self._remove_everything(f"lease lost: {reason}")
        await self.lease.revoke(self.lease.lost_lease)  # its owner keys must go before we reclaim
        while not self._stopping.is_set():
            try:
                await self._join()  # this loop waits for the store itself
                break
            except StoreError as exc:
                log.warning("cannot rejoin yet: %s", exc)
                await asyncio.sleep(self.config.lease.renew_interval)
        self.cycle.wake.set()

    async def _remove_everything(self, why: str) -> None:
        assert self.actor and self.cycle
        local = self.actor.local
        await self._remove(
            shutdown.remove_everything(self.cycle.cluster, local.running, local.known, why)
        )

    async def _remove(self, removal: shutdown.Removal | None) -> None:
        if removal is not None and self.actor is not None:
            step = removal.step
            await self.actor.remove_waves(removal.cluster, step.waves, step, step.state_reason)

    # --- the fence guard's plan -------------------------------------------------------

    def _write_plan(self, mode: str = "active") -> None:
        """Tell the fence guard the new deadline and what to undo (every resource extended
        here: undoing what is not in service is harmless, and the plan stays simple)."""
        if not self.lease or not self.actor:
            return
        template = self._fence_template()
        # the agent stops trusting its lease at trusted_until and removes gracefully; the
        # guard escalates (kills) half a safety margin later, still before the lease expires
        half = self.config.lease.safety_margin / 2
        deadline, renewed = self.lease.trusted_until + half, self.lease.renewed_until + half
        plan = FencePlan(
            self.server,
            os.getpid(),
            mode,
            deadline,
            list(template.cgroups),
            list(template.addresses),
            list(template.mounts),
            renewed,
            self.config.lease.failsafe_hold,
            store_file=self._store_file,
        )
        try:
            plan.write(self.config.state_dir)
        except OSError as exc:
            log.error("cannot write the fence plan: %s", exc)

    def _fence_template(self) -> FencePlan:
        """What to undo, recomputed only when the cluster view changed."""
        cluster = self.cluster
        running = self.actor.local.running if self.actor else frozenset()
        marker = (cluster.revision, running)
        if self._template is not None and self._template[0] == marker:
            return self._template[1]
        plan = FencePlan(self.server, os.getpid())
        tags = sorted(
            running | {t for t, r in cluster.resources.items() if self.server in r.instances}
        )
        if self.cgroups.base is not None:
            plan.cgroups = [str(self.cgroups.base / tag) for tag in tags]
        for tag in tags:
            resource = cluster.resources.get(tag) or (
                self.actor.local.known.get(tag) if self.actor else None
            )
            if resource is None or self.actor is None:
                continue
            try:
                kit, ctx = self.actor.runner.resource_context(resource)
                actions = kit.fence_actions(ctx)
            except VigilError:
                continue
            plan.addresses.extend(actions.addresses)
            plan.mounts.extend(actions.mounts)
        self._template = (marker, plan)
        return plan
