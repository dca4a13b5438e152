"""The act step: carry out the engine's steps through kits, and report what happened.

One ``Actor`` per agent. It keeps what only this server knows (which resources it has in
service, which restores failed for which intent) and writes to the store only its own
owner keys (bound to its lease), its own state records and events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from vigil.agent import intents
from vigil.agent.kitrunner import KitRunner
from vigil.agent.storeio import event_operation
from vigil.engine.order import remove_waves, restore_waves
from vigil.engine.plan import LocalView, Step, StepKind, standby_reason
from vigil.errors import KitError, StoreError, VigilError
from vigil.model.cluster import Cluster, Hierarchy, Observed, Resource
from vigil.model.records import OwnerRecord, StateRecord, key
from vigil.model.states import InstanceState
from vigil.store.base import Compare, Delete, Operation, Put, Store

log = logging.getLogger("vigil.agent")


class Actor:
    """Carries out steps for one server. ``lease_id`` gives the lease owner keys bind to."""

    def __init__(
        self, store: Store, runner: KitRunner, server: str, lease_id: Callable[[], int]
    ) -> None:
        self.store = store
        self.runner = runner
        self.server = server
        self.lease_id = lease_id
        self.running: set[str] = set()
        self.failed: dict[str, int] = {}
        #: last known definition of every resource this server has in service, so it can
        #: still be removed after it vanished from the store
        self.known: dict[str, Resource] = {}
        #: times of local recoveries per resource (the temporal limit counts them)
        self.recoveries: dict[str, list[float]] = {}
        #: resources that failed here and are being failed over: reported OSF when removed
        self.failed_tags: dict[str, str] = {}
        #: resources that failed here and may not fail over: OSF, no longer checked, still
        #: removed when the hierarchy leaves, restored by the next request to bring it here
        self.broken: set[str] = set()
        #: set while fencing without a lease: reports and events are skipped (the store is
        #: likely unreachable, and waiting on it would delay taking resources down)
        self.fencing = False
        self.started_at = time.time()
        #: what report_standby last read when it found nothing to write
        self._standby_checked: tuple[tuple[object, ...], frozenset[str]] | None = None

    def local_view(self) -> LocalView:
        # a broken resource is not "in service" for decisions: a new request restores it
        return LocalView(frozenset(self.running - self.broken), dict(self.failed))

    # --- steps ---------------------------------------------------------------------------

    async def carry_out(self, cluster: Cluster, step: Step) -> None:
        log.info("%s", step.reason)
        hierarchy = (
            cluster.hierarchy(next(iter(step.tags)))
            if step.tags <= set(cluster.resources)
            else None
        )
        if step.kind is StepKind.RESTORE:
            await self._restore(cluster, step)
        elif step.kind is StepKind.REMOVE:
            await self._remove(cluster, step)
        elif step.kind is StepKind.TAKEOVER and hierarchy:
            await intents.move(
                self.store, cluster, hierarchy, self.server, me=self.server, reason=step.reason,
                kind="failover-started", origin=step.origin, tried=step.tried,
            )  # fmt: skip
        elif step.kind is StepKind.SWITCHBACK and hierarchy:
            await intents.move(
                self.store,
                cluster,
                hierarchy,
                self.server,
                me=self.server,
                reason=step.reason,
                kind="switchback",
            )
        elif step.kind is StepKind.CONFIRM and hierarchy:
            await intents.ask_confirmation(
                self.store, hierarchy, me=self.server, origin=step.origin or "", reason=step.reason
            )

    async def _restore(self, cluster: Cluster, step: Step) -> None:
        if not await self.claim(cluster, step):
            log.info("%s: ownership changed meanwhile; deciding again", step.hierarchy)
            return
        epoch = await self._epochs(step.tags)
        await self.event("restore-started", step.reason, step.hierarchy)
        for wave in step.waves:
            todo = [tag for tag in wave if tag not in self.running or tag in self.broken]
            results = await asyncio.gather(
                *(
                    self._restore_one(cluster.resources[tag], epoch.get(tag, 0), step)
                    for tag in todo
                )
            )
            failures = [msg for msg in results if msg]
            if failures:
                await self._abandon(cluster, step, failures)
                return
        await self.event(
            "restored", f"{step.hierarchy} is in service on {self.server}", step.hierarchy
        )
        # a failover confirmation, answered or not, concerned the failover now completed
        with contextlib.suppress(StoreError):
            await self.store.delete(key("confirm", step.hierarchy))

    async def _restore_one(self, resource: Resource, epoch: int, step: Step) -> str | None:
        tag = resource.tag
        self.known[tag] = resource
        try:
            await self.runner.restore(resource, epoch)
        except (KitError, VigilError) as exc:
            log.error("restore of %s on %s failed: %s", tag, self.server, exc)
            await self.report(
                tag, InstanceState.OSF, f"restore failed: {exc}", step.intent_revision
            )
            return f"{tag}: {exc}"
        self.running.add(tag)
        self.broken.discard(tag)
        await self.report(tag, InstanceState.ISP, "in service", step.intent_revision)
        return None

    async def _abandon(self, cluster: Cluster, step: Step, failures: list[str]) -> None:
        """A restore failed: take back what came up, release, and do not retry this intent."""
        why = f"restore of {step.hierarchy} on {self.server} failed ({'; '.join(failures)})"
        log.error("%s: taking the hierarchy back out of service here", why)
        await self.event("restore-failed", why, step.hierarchy)
        self.failed[step.hierarchy] = step.intent_revision
        running = [t for t in step.tags if t in self.running]
        ok = await self.remove_waves(
            cluster, remove_waves(cluster, running), step, "restore failed"
        )
        if ok:
            await self._release(step.tags)

    async def _remove(self, cluster: Cluster, step: Step) -> None:
        await self.event("remove-started", step.reason, step.hierarchy)
        hierarchy = (
            cluster.hierarchy(next(iter(step.tags))) if step.tags & set(cluster.resources) else None
        )
        reason = standby_reason(cluster, hierarchy, self.server) if hierarchy else "deleted"
        before = step.tags & self.running
        if not await self.remove_waves(cluster, step.waves, step, reason):
            if hierarchy is not None:
                await self._roll_back(cluster, step, hierarchy, before - self.running)
            return
        await self._release(step.release)
        await self.event(
            "removed", f"{step.hierarchy} is out of service on {self.server}", step.hierarchy
        )

    async def _roll_back(
        self, cluster: Cluster, step: Step, hierarchy: Hierarchy, removed: frozenset[str]
    ) -> None:
        """A remove failed half-way (a switchover or out of service): what was already
        stopped is restored here, and the hierarchy is wanted here again, so it is not left
        out of service everywhere while this server still owns part of it."""
        why = f"{step.hierarchy} could not be taken out of service on {self.server}"
        epochs = await self._epochs(removed)
        for wave in restore_waves(cluster, removed):
            await asyncio.gather(
                *(self._restore_one(cluster.resources[t], epochs.get(t, 0), step) for t in wave)
            )
        back = f"{why} (a remove failed): back in service on {self.server}"
        await intents.move(
            self.store,
            cluster,
            hierarchy,
            self.server,
            me=self.server,
            reason=back,
            kind="remove-failed",
        )

    async def remove_waves(
        self, cluster: Cluster, waves: Iterable[Iterable[str]], step: Step, reason: str
    ) -> bool:
        """Remove parents-first; on a failed remove keep ownership (no one else may start it)."""
        for wave in waves:
            todo = [tag for tag in wave if tag in self.running]
            results = await asyncio.gather(
                *(self._remove_one(cluster, tag, reason, step) for tag in todo)
            )
            if not all(results):
                why = f"remove of {step.hierarchy} on {self.server} failed: it stays owned here"
                await self.event("remove-failed", why, step.hierarchy)
                return False
        return True

    async def _remove_one(self, cluster: Cluster, tag: str, reason: str, step: Step) -> bool:
        resource = cluster.resources.get(tag) or self.known.get(tag)
        if resource is None:
            self.running.discard(tag)
            self.broken.discard(tag)
            return True
        try:
            await self.runner.remove(resource)
        except (KitError, VigilError) as exc:
            log.error("remove of %s on %s failed: %s", tag, self.server, exc)
            await self.report(tag, InstanceState.OSF, f"remove failed: {exc}", step.intent_revision)
            return False
        self.running.discard(tag)
        self.broken.discard(tag)
        if self.runner.cgroups:
            # remove must leave nothing running
            leftovers = await asyncio.to_thread(self.runner.cgroups.kill, tag)
            if leftovers:
                log.warning("remove of %s left processes %s running: killed them", tag, leftovers)
        failure = self.failed_tags.pop(tag, None)
        if failure:
            await self.report(tag, InstanceState.OSF, failure, step.intent_revision)
        elif tag in cluster.resources:
            await self.report(tag, InstanceState.OSU, reason, step.intent_revision)
        return True

    # --- store writes: ownership, states, events -----------------------------------------

    async def claim(self, cluster: Cluster, step: Step) -> bool:
        """Take ownership of ``step.claim`` in one transaction, only if nobody owns them and
        the intent is still the one decided on."""
        lease = self.lease_id()
        if not lease:
            return False
        compares = [Compare.absent(key("owner", tag)) for tag in sorted(step.claim)]
        compares += [
            Compare(key("intent", tag), cluster.intents[tag].revision)
            for tag in sorted(step.tags)
            if tag in cluster.intents
        ]
        record = OwnerRecord(server=self.server, since=time.time()).dump()
        puts = [Put(key("owner", tag), record, lease) for tag in sorted(step.claim)]
        try:
            return (await self.store.txn(compares, puts)).succeeded
        except StoreError as exc:
            log.warning("could not claim %s: %s", step.hierarchy, exc)
            return False

    async def _epochs(self, tags: Iterable[str]) -> dict[str, int]:
        """Fencing epoch of each owned tag: the revision that created its owner key."""
        epochs = {}
        for tag in tags:
            item = await self.store.get(key("owner", tag))
            epochs[tag] = item.create_revision if item else 0
        return epochs

    async def _release(self, tags: Iterable[str]) -> None:
        ops: list[Operation] = [Delete(key("owner", tag)) for tag in sorted(tags)]
        if ops:
            await self.store.txn((), ops)

    async def report(
        self, tag: str, state: InstanceState, reason: str, intent_revision: int = 0
    ) -> None:
        if self.fencing:
            return
        record = StateRecord(
            state=state, reason=reason, since=time.time(), intent_revision=intent_revision
        )
        try:
            await self.store.put(key("state", self.server, tag), record.dump())
        except StoreError as exc:
            log.warning("could not report %s %s: %s", tag, state, exc)

    async def event(self, kind: str, message: str, hierarchy: str | None = None) -> None:
        if self.fencing:
            return
        try:
            await self.store.txn(
                (), (event_operation(self.server, kind, message, hierarchy=hierarchy),)
            )
        except StoreError as exc:
            log.warning("could not record event %s: %s", kind, exc)

    # --- standby states ------------------------------------------------------------------

    def _failure_stands(
        self, cluster: Cluster, hierarchy: Hierarchy, seen: Observed | None, revision: int
    ) -> bool:
        """An OSF reported in this life stays while its intent is current, or while the
        failover it belongs to (this server among the ones tried) goes on."""
        if seen is None or seen.state is not InstanceState.OSF or seen.since < self.started_at:
            return False
        intent = cluster.intent(hierarchy)
        in_failover = bool(intent and intent.origin and self.server in intent.tried)
        return seen.intent_revision == revision or in_failover

    async def report_standby(self, cluster: Cluster) -> None:
        """Write OSU (with its reason) for instances here that are out of service and whose
        reported state is missing or stale. A failure (OSF) stays until the intent changes.

        Skipped when nothing it reads has changed since it last found nothing to write (the
        same mappings: a view's mappings are never changed in place)."""
        inputs = (
            cluster.resources,
            cluster.dependencies,
            cluster.intents,
            cluster.owners,
            cluster.observed,
        )
        running = frozenset(self.running)
        checked, self._standby_checked = self._standby_checked, None
        if (
            checked is not None
            and checked[1] == running
            and all(a is b for a, b in zip(inputs, checked[0], strict=True))
        ):
            self._standby_checked = checked
            return
        ops: list[Operation] = []
        now = time.time()
        for hierarchy in cluster.hierarchies:
            if self.server not in cluster.hierarchy_servers(hierarchy):
                continue
            reason = standby_reason(cluster, hierarchy, self.server)
            revision = cluster.intent_revision(hierarchy)
            for tag in sorted(hierarchy.tags - self.running):
                seen = cluster.observed.get((self.server, tag))
                if self._failure_stands(cluster, hierarchy, seen, revision):
                    continue
                if seen and seen.state is InstanceState.OSU and seen.reason == reason:
                    continue
                # "since" is when the state began: a new reason alone does not reset it
                since = seen.since if seen and seen.state is InstanceState.OSU else now
                record = StateRecord(
                    state=InstanceState.OSU, reason=reason, since=since, intent_revision=revision
                )
                ops.append(Put(key("state", self.server, tag), record.dump()))
        # reports of resources deleted, or no longer extended here and not running here
        stale = [
            tag
            for tag in cluster.observed_on(self.server)
            if tag not in cluster.resources
            or (self.server not in cluster.resources[tag].instances and tag not in self.running)
        ]
        ops += [Delete(key("state", self.server, tag)) for tag in sorted(stale)]
        if ops:
            await self.store.txn((), ops)
        else:
            self._standby_checked = (inputs, running)
