"""The agent: one per server. Holds its lease, watches the store, runs observe → decide →
act, and serves the REST API.

Lifecycle: ``Agent.run()`` opens the store, grants the lease, registers the server, then
runs until ``stop()`` (SIGTERM): an orderly stop takes this server's hierarchies out of
service (the seed's default shutdown strategy, "do not switch over"), revokes the lease and
returns. Only ``vigil.__main__`` exits the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from vigil.agent.actor import Actor
from vigil.agent.config import AgentConfig
from vigil.agent.kitrunner import KitRunner
from vigil.agent.lease import LeaseKeeper
from vigil.agent.paths import PathMonitor
from vigil.agent.storeio import read_cluster
from vigil.engine.order import remove_waves
from vigil.engine.plan import Step, StepKind, decide
from vigil.errors import Compacted, StoreError, VigilError
from vigil.kits.registry import KitRegistry, load_kits
from vigil.model.cluster import Cluster, Resource
from vigil.model.records import PREFIX, AliveRecord, ServerRecord, key
from vigil.store import open_store
from vigil.store.base import Store

log = logging.getLogger("vigil.agent")

#: keys whose changes do not change any decision (reports, not inputs)
_REPORT_PREFIXES = (key("state", ""), key("paths", ""), key("events", ""))


class Agent:
    """The per-server daemon."""

    def __init__(self, config: AgentConfig, kits: KitRegistry | None = None) -> None:
        self.config = config
        self.server = config.server
        self.kits = kits or load_kits()
        self.store: Store | None = None
        self.lease: LeaseKeeper | None = None
        self.actor: Actor | None = None
        self.paths: PathMonitor | None = None
        self.cluster = Cluster()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._busy: dict[frozenset[str], asyncio.Task[None]] = {}
        self._extended: dict[str, Resource] = {}
        self.started_at = time.time()

    # --- lifecycle -------------------------------------------------------------------------

    async def run(
        self, serve_api: Callable[[Agent], Coroutine[Any, Any, None]] | None = None
    ) -> None:
        """Run until ``stop()``; raises ``VigilError`` when the agent cannot start."""
        for error in self.kits.errors:
            log.error("%s", error)
        self.store = await open_store(
            self.config.store, request_timeout=self.config.lease.request_timeout
        )
        self.lease = LeaseKeeper(self.store, self.config.lease, self._lease_lost)
        runner = KitRunner(
            self.kits, self.server, self.config.state_dir, tuple(self.config.addresses)
        )
        self.actor = Actor(
            self.store, runner, self.server, lambda: self.lease.lease_id if self.lease else 0
        )
        self.paths = PathMonitor(self.store, self.server, self.config.api.port)
        await self._join()
        tasks = [
            asyncio.create_task(self.lease.run(), name="lease"),
            asyncio.create_task(self._watch(), name="watch"),
            asyncio.create_task(self._loop(), name="loop"),
            asyncio.create_task(self.paths.run(lambda: self.cluster), name="paths"),
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

    def stop(self) -> None:
        """Ask for an orderly stop (signal-handler safe)."""
        self._stopping.set()

    async def _join(self) -> None:
        """Grant the lease and register this server (persistent) and its liveness (leased)."""
        assert self.store and self.lease
        lease_id = await self.lease.grant()
        record = ServerRecord(
            name=self.server,
            api_url=self.config.api.url,
            addresses=self.config.addresses,
            registered_at=time.time(),
        )
        alive = AliveRecord(started_at=self.started_at, pid=os.getpid())
        await self.store.put(key("servers", self.server), record.dump())
        await self.store.put(key("alive", self.server), alive.dump(), lease=lease_id)

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        log.info("stopping the agent of %s: taking its hierarchies out of service", self.server)
        for task in self._busy.values():
            task.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*self._busy.values(), *tasks, return_exceptions=True)
        with contextlib.suppress(VigilError):
            await self._remove_everything("the agent is stopping")
        if self.lease:
            await self.lease.revoke()
        if self.store:
            await self.store.close()
        log.info("agent of %s stopped", self.server)

    async def _lease_lost(self, reason: str) -> None:
        """Self-fencing: without a lease this server may hold nothing in service."""
        log.error("fencing %s: %s; taking every hierarchy out of service", self.server, reason)
        for task in self._busy.values():
            task.cancel()
        await asyncio.gather(*self._busy.values(), return_exceptions=True)
        await self._remove_everything(f"lease lost: {reason}")
        while not self._stopping.is_set():
            try:
                await self._join()
                break
            except StoreError as exc:
                log.warning("cannot rejoin yet: %s", exc)
                await asyncio.sleep(self.config.lease.renew_interval)
        self._wake.set()

    async def _remove_everything(self, why: str) -> None:
        assert self.actor
        running = sorted(self.actor.running)
        if not running:
            return
        cluster = self.cluster
        step = Step(StepKind.REMOVE, ", ".join(running), frozenset(running), why)
        known = {tag: self.actor.known.get(tag) or cluster.resources.get(tag) for tag in running}
        resources = {tag: r for tag, r in known.items() if r is not None}
        merged = Cluster(
            resources={**cluster.resources, **resources}, dependencies=cluster.dependencies
        )
        await self.actor._remove_waves(merged, remove_waves(merged, running), step, why)

    # --- observe, decide, act ------------------------------------------------------------

    async def _watch(self) -> None:
        """Wake the loop on every change that can change a decision."""
        assert self.store
        revision = 0
        while True:
            try:
                if revision == 0:
                    revision = (await self.store.get_prefix(key("config"))).revision + 1
                    self._wake.set()
                async for event in self.store.watch(PREFIX, revision):
                    revision = event.mod_revision + 1
                    if not event.key.startswith(_REPORT_PREFIXES):
                        self._wake.set()
            except Compacted:
                revision = 0
            except StoreError as exc:
                log.warning("store watch interrupted: %s", exc)
                await asyncio.sleep(0.5)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._cycle()
            except StoreError as exc:
                log.warning("cycle skipped, store unavailable: %s", exc)
                await asyncio.sleep(0.5)
                self._wake.set()

    async def _cycle(self) -> None:
        assert self.store and self.actor and self.lease
        self.cluster = cluster = await read_cluster(self.store)
        await self._forget_unextended(cluster)
        if not self.lease.valid():
            return
        for step in decide(cluster, self.server, self.actor.local_view()):
            if step.kind is StepKind.WAIT:
                log.info("%s", step.reason)
                continue
            if any(step.tags & busy for busy in self._busy):
                continue
            task = asyncio.create_task(self.actor.carry_out(cluster, step))
            self._busy[step.tags] = task
            task.add_done_callback(functools.partial(self._step_done, step.tags))
        await self.actor.report_standby(cluster)

    def _step_done(self, tags: frozenset[str], _task: asyncio.Task[None]) -> None:
        task = self._busy.pop(tags, None)
        if task and not task.cancelled() and task.exception():
            log.error("step on %s failed: %s", ", ".join(sorted(tags)), task.exception())
        self._wake.set()

    async def _forget_unextended(self, cluster: Cluster) -> None:
        """Run the kits' ``delete`` for resources no longer extended to this server."""
        assert self.actor
        here = {tag: r for tag, r in cluster.resources.items() if self.server in r.instances}
        gone = [
            r
            for tag, r in self._extended.items()
            if tag not in here and tag not in self.actor.running
        ]
        self._extended = here
        for resource in gone:
            try:
                await self.actor.runner.delete(resource)
                log.info("%s is no longer extended to %s: cleaned up", resource.tag, self.server)
            except VigilError as exc:
                log.warning("cleanup of %s on %s failed: %s", resource.tag, self.server, exc)
