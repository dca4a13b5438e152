"""The act step: carry out the engine's steps through kits, and report what happened.

One ``Actor`` per agent. It keeps what only this server knows in its ``LocalState``
(``local``: which resources it has in service, which restores failed for which intent...)
and writes to the store only its own owner keys (bound to its lease), its own state
records and events. It carries out what the engine decided; it decides nothing itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from vigil.agent import intents
from vigil.agent.kitrunner import KitRunner
from vigil.agent.local import LocalState
from vigil.agent.storeio import event_operation
from vigil.engine.order import remove_waves, restore_waves
from vigil.engine.plan import Step, StepKind, escalates, standby_reason
from vigil.errors import KitError, KitTimeout, StoreError, VigilError
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
        #: whether this server's lease can be trusted now (set by the daemon): checked just
        #: before each restore action, so that an agent frozen or starved past its lease
        #: (and perhaps taken over meanwhile) starts nothing when it runs again
        self.trusted: Callable[[], bool] = lambda: True
        self.local = LocalState()
        self.started_at = time.time()
        #: what report_standby last read when it found nothing to write
        self._standby_checked: tuple[tuple[object, ...], frozenset[str]] | None = None
        #: tag -> the last state report the store did not take (written again later)
        self._unreported: dict[str, StateRecord] = {}

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
        epoch = await self.claim(cluster, step)
        if epoch is None:
            log.info("%s: ownership changed meanwhile; deciding again", step.hierarchy)
            return
        await self.event("restore-started", step.reason, step.hierarchy)
        for wave in step.waves:
            todo = [tag for tag in wave if self.local.needs_restore(tag)]
            results = await asyncio.gather(
                *(
                    self._restore_one(cluster.resources[tag], epoch.get(tag, 0), step)
                    for tag in todo
                )
            )
            if not self.trusted():
                # the lease's loss takes everything here out of service (and fences)
                log.warning(
                    "%s: restore on %s stopped: this server's lease cannot be trusted now",
                    step.hierarchy,
                    self.server,
                )
                return
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
        if not self.trusted():
            return f"{tag}: not started: this server's lease cannot be trusted now"
        self.local.restoring(resource)
        try:
            await self.runner.restore(resource, epoch)
        except (KitError, VigilError) as exc:
            log.error("restore of %s on %s failed: %s", tag, self.server, exc)
            await self.report(
                tag, InstanceState.OSF, f"restore failed: {exc}", step.intent_revision
            )
            return f"{tag}: {exc}"
        self.local.restored(tag)
        await self.report(tag, InstanceState.ISP, "in service", step.intent_revision)
        return None

    async def _abandon(self, cluster: Cluster, step: Step, failures: list[str]) -> None:
        """A restore failed: take back what came up, release, and do not retry this intent."""
        why = f"restore of {step.hierarchy} on {self.server} failed ({'; '.join(failures)})"
        log.error("%s: taking the hierarchy back out of service here", why)
        await self.event("restore-failed", why, step.hierarchy)
        self.local.restore_failed(step.hierarchy, step.intent_revision)
        running = [t for t in step.tags if t in self.local.running]
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
        before = step.tags & self.local.running
        if not await self.remove_waves(cluster, step.waves, step, step.state_reason):
            if hierarchy is not None:
                await self._roll_back(cluster, step, hierarchy, before - self.local.running)
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
        epochs = _owned_epochs(cluster, removed)
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
            todo = [tag for tag in wave if tag in self.local.running]
            results = await asyncio.gather(
                *(self._remove_one(cluster, tag, reason, step) for tag in todo)
            )
            if not all(results):
                why = f"remove of {step.hierarchy} on {self.server} failed: it stays owned here"
                await self.event("remove-failed", why, step.hierarchy)
                return False
        return True

    async def _remove_one(self, cluster: Cluster, tag: str, reason: str, step: Step) -> bool:
        resource = cluster.resources.get(tag) or self.local.known.get(tag)
        if resource is None:
            self.local.forgotten(tag)
            return True
        try:
            await self.runner.remove(resource)
        except (KitError, VigilError) as exc:
            if not await self._escalate(resource, exc, step):
                await self.report(
                    tag, InstanceState.OSF, f"remove failed: {exc}", step.intent_revision
                )
                return False
        failure = self.local.removed(tag)
        if self.runner.cgroups:
            # remove must leave nothing running
            leftovers = await asyncio.to_thread(self.runner.cgroups.kill, tag)
            if leftovers:
                log.warning("remove of %s left processes %s running: killed them", tag, leftovers)
        if failure:
            await self.report(tag, InstanceState.OSF, failure, step.intent_revision)
        elif tag in cluster.resources:
            await self.report(tag, InstanceState.OSU, reason, step.intent_revision)
        return True

    async def _escalate(self, resource: Resource, exc: VigilError, step: Step) -> bool:
        """After a failed remove: the kit's forceful stop, when the engine says so; True
        when it worked (the resource is out of service). Otherwise the resource stays
        owned here, and what the lease's fencing must do is left to it."""
        tag = resource.tag
        timed_out = isinstance(exc, KitTimeout)
        log.error("remove of %s on %s failed: %s", tag, self.server, exc)
        if not escalates(step, timed_out):
            return False
        how = "overran its timeout" if timed_out else "failed"
        try:
            done = await self.runner.escalate(resource)
        except (KitError, VigilError) as again:
            log.error("forceful stop of %s on %s failed too: %s", tag, self.server, again)
            return False
        what = "; ".join(done) or "nothing left to stop"
        why = f"remove of {tag} on {self.server} {how} ({exc}); forced: {what}"
        log.warning("%s", why)
        await self.event("remove-escalated", why, step.hierarchy)
        return True

    # --- store writes: ownership, states, events -----------------------------------------

    async def claim(self, cluster: Cluster, step: Step) -> dict[str, int] | None:
        """Take ownership of ``step.claim`` in one transaction, only if nobody owns them and
        the intent is still the one decided on. The fencing epoch of each of ``step.tags``
        (None: not claimed): a claimed tag's is the claim's own revision (the one that
        created its owner key), a tag owned here already keeps its owner key's."""
        lease = self.lease_id()
        if not lease:
            return None
        compares = [Compare.absent(key("owner", tag)) for tag in sorted(step.claim)]
        compares += [
            Compare(key("intent", tag), cluster.intents[tag].revision)
            for tag in sorted(step.tags)
            if tag in cluster.intents
        ]
        record = OwnerRecord(server=self.server, since=time.time()).dump()
        puts = [Put(key("owner", tag), record, lease) for tag in sorted(step.claim)]
        try:
            result = await self.store.txn(compares, puts)
        except StoreError as exc:
            log.warning("could not claim %s: %s", step.hierarchy, exc)
            return None
        if not result.succeeded:
            return None
        epochs = _owned_epochs(cluster, step.tags - step.claim)
        return epochs | dict.fromkeys(step.claim, result.revision)

    async def _release(self, tags: Iterable[str]) -> None:
        ops: list[Operation] = [Delete(key("owner", tag)) for tag in sorted(tags)]
        if ops:
            await self.store.txn((), ops)

    async def report(
        self, tag: str, state: InstanceState, reason: str, intent_revision: int = 0
    ) -> None:
        if self.local.fencing:
            self._unreported.pop(tag, None)
            return
        record = StateRecord(
            state=state, reason=reason, since=time.time(), intent_revision=intent_revision
        )
        await self._write_report(tag, record)

    async def _write_report(self, tag: str, record: StateRecord) -> None:
        try:
            await self.store.put(key("state", self.server, tag), record.dump())
        except StoreError as exc:
            log.warning("could not report %s %s: %s", tag, record.state, exc)
            self._unreported[tag] = record
        else:
            self._unreported.pop(tag, None)

    async def report_again(self) -> None:
        """Write the reports the store did not take (a restore that ended during a store
        outage would otherwise stay shown out of service while it runs), each while it
        still says what runs here: an ISP of a resource running here, another state of
        one that does not."""
        for tag, record in list(self._unreported.items()):
            running = tag in self.local.running
            if self.local.fencing or running != (record.state is InstanceState.ISP):
                self._unreported.pop(tag, None)
                continue
            log.info("reporting %s %s again (the store did not take it)", tag, record.state)
            await self._write_report(tag, record)

    async def event(self, kind: str, message: str, hierarchy: str | None = None) -> None:
        if self.local.fencing:
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
        running = self.local.running
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
            for tag in sorted(hierarchy.tags - running):
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
            or (self.server not in cluster.resources[tag].instances and tag not in running)
        ]
        ops += [Delete(key("state", self.server, tag)) for tag in sorted(stale)]
        if ops:
            await self.store.txn((), ops)
        else:
            self._standby_checked = (inputs, running)


def _owned_epochs(cluster: Cluster, tags: Iterable[str]) -> dict[str, int]:
    """Fencing epoch of each of ``tags`` owned already: the revision that created its
    owner key, as the view shows it (0: not owned)."""
    return {tag: cluster.owners[tag].epoch if tag in cluster.owners else 0 for tag in tags}
