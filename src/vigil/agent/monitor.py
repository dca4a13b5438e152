"""Monitoring of in-service resources, local recovery, and failover on resource failure.

Each resource this server has in service gets one task: a quick check every
``quick_check_interval`` and a deep check every ``deep_check_interval`` (defaults from its
kit). A check that overruns its timeout counts as failed. A failed (or stopped) check is
handled in the same task, so checks of one resource never overlap its recovery:
local recovery when allowed (engine.recovery), else the whole hierarchy fails over to the
preferred eligible server (engine.failover). Checks never run on out-of-service
instances, nor while the resource is being restored or removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from vigil.agent import intents
from vigil.agent.actor import Actor
from vigil.engine import failover, recovery
from vigil.errors import VigilError
from vigil.kits.base import Action, Check, CheckStatus
from vigil.model.cluster import Cluster
from vigil.model.states import InstanceState

log = logging.getLogger("vigil.agent.monitor")


class Monitor:
    def __init__(
        self, actor: Actor, cluster: Callable[[], Cluster], busy: Callable[[str], bool]
    ) -> None:
        self.actor = actor
        self.cluster = cluster
        self.busy = busy
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.paused = False  # maintenance: nothing is checked

    def sync(self) -> None:
        """Start a task for each resource in service here; stop the others."""
        wanted = set() if self.paused else self.actor.running - self.actor.broken
        for tag in list(self.tasks):
            if tag not in wanted:
                self.tasks.pop(tag).cancel()
        for tag in sorted(wanted - set(self.tasks)):
            self.tasks[tag] = asyncio.create_task(self._watch(tag), name=f"monitor {tag}")

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()

    def _intervals(self, tag: str) -> tuple[float, float]:
        cluster = self.cluster()
        kit = self.actor.runner.kit(cluster.resources[tag].kit)
        policy = cluster.resource_policy(tag)
        quick = policy.quick_check_interval or kit.check_intervals.quick
        deep = policy.deep_check_interval or kit.check_intervals.deep
        return quick, deep

    async def _watch(self, tag: str) -> None:
        """Check ``tag`` until it leaves; intervals are read each round, so a changed policy
        applies at once."""
        next_deep = 0.0
        while True:
            try:
                quick, deep = self._intervals(tag)
            except KeyError:
                return  # deleted meanwhile
            if not next_deep:
                next_deep = time.monotonic() + deep
            next_deep = min(next_deep, time.monotonic() + deep)
            await asyncio.sleep(quick)
            if self.busy(tag) or tag not in self.actor.running or tag in self.actor.broken:
                continue
            action = Action.QUICK_CHECK
            if time.monotonic() >= next_deep:
                action, next_deep = Action.DEEP_CHECK, time.monotonic() + deep
            check = await self._check(tag, action)
            if check.status is not CheckStatus.RUNNING and not self.busy(tag):
                await self._failed(tag, action, check)
            elif check.warning:
                await self._report_warning(tag, check)

    async def _check(self, tag: str, action: Action) -> Check:
        resource = self.cluster().resources[tag]
        try:
            return await self.actor.runner.check(resource, action)
        except VigilError as exc:
            return Check.failed(str(exc))

    async def _report_warning(self, tag: str, check: Check) -> None:
        seen = self.cluster().observed.get((self.actor.server, tag))
        reason = f"in service, warning: {check.warning}"
        if seen is None or seen.reason != reason:
            await self.actor.report(tag, InstanceState.ISP, reason)

    async def _failed(self, tag: str, action: Action, check: Check) -> None:
        cluster = self.cluster()
        me = self.actor.server
        hierarchy = cluster.hierarchy(tag)
        what = f"{action} of {tag} on {me} says {check.status}: {check.detail or 'no detail'}"
        log.warning("%s", what)
        await self.actor.event("check-failed", what, hierarchy.name)
        decision = recovery.after_failed_check(
            tag,
            me,
            cluster.resource_policy(tag),
            cluster.server_policy(me),
            self.actor.recoveries.get(tag, []),
            time.time(),
        )
        if decision.response is recovery.Response.RECOVER:
            if await self._recover(tag, decision.reason):
                return
            cause = f"local recovery of {tag} failed"
        else:
            cause = decision.reason
        await self._fail_over(cluster, tag, f"{what}; {cause}")

    async def _recover(self, tag: str, why: str) -> bool:
        resource = self.cluster().resources[tag]
        self.actor.recoveries.setdefault(tag, []).append(time.time())
        await self.actor.report(tag, InstanceState.ISP, f"recovering ({why})")
        await self.actor.event(
            "recovery-started", f"recovering {tag} on {self.actor.server}: {why}"
        )
        try:
            ok = await self.actor.runner.recover(resource)
        except VigilError as exc:
            log.error("recovery of %s failed: %s", tag, exc)
            ok = False
        if ok:
            await self.actor.report(tag, InstanceState.ISP, "in service (recovered locally)")
            await self.actor.event("recovered", f"{tag} recovered locally on {self.actor.server}")
        else:
            await self.actor.event(
                "recovery-failed", f"local recovery of {tag} on {self.actor.server} failed"
            )
        return ok

    async def _fail_over(self, cluster: Cluster, tag: str, cause: str) -> None:
        me = self.actor.server
        hierarchy = cluster.hierarchy(tag)
        blocked = failover.resource_failover_blocked(cluster, hierarchy, tag, me)
        if blocked:
            self.actor.broken.add(tag)
            self.actor.failed[hierarchy.name] = cluster.intent_revision(hierarchy)
            await self.actor.report(tag, InstanceState.OSF, f"{cause}; not failed over: {blocked}")
            await self.actor.event(
                "failover-blocked", f"{hierarchy.name} stays on {me}: {blocked}", hierarchy.name
            )
            return
        self.actor.failed_tags[tag] = cause
        target = failover.choose_target(cluster, hierarchy, (me,))
        if target.server is None:
            reason = f"{hierarchy.name} taken out of service on {me}: {cause}; {target.reason}"
            await intents.move(
                self.actor.store,
                cluster,
                hierarchy,
                None,
                me=me,
                reason=reason,
                kind="failover-impossible",
            )
            return
        reason = (
            f"failing {hierarchy.name} over from {me} to {target.server}: {cause}; {target.reason}"
        )
        await intents.move(
            self.actor.store,
            cluster,
            hierarchy,
            target.server,
            me=me,
            reason=reason,
            kind="failover-started",
            origin=me,
            tried=(me,),
        )
