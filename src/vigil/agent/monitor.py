"""Monitoring of in-service resources, local recovery, and failover on resource failure.

Each resource this server has in service gets one task: a quick check every
``quick_check_interval`` and a deep check every ``deep_check_interval`` (defaults from its
kit). A check that overruns its timeout counts as failed. A failed (or stopped) check is
handled in the same task, so checks of one resource never overlap its recovery: the
engine says what to do (``engine.failure``: local recovery when allowed, else the whole
hierarchy fails over to the preferred eligible server, or stays blocked here, or goes out
of service), and the monitor carries it out. Checks never run on out-of-service
instances, nor while the resource is being restored or removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from vigil.agent import intents
from vigil.agent.actor import Actor
from vigil.engine.failure import (
    FailureResponse,
    FailureStep,
    on_failed_check,
    on_failed_recovery,
)
from vigil.errors import VigilError
from vigil.kits.base import Action, Check, CheckStatus
from vigil.model.cluster import Cluster
from vigil.model.states import InstanceState

log = logging.getLogger("vigil.agent.monitor")


class Monitor:
    def __init__(
        self,
        actor: Actor,
        cluster: Callable[[], Cluster],
        busy: Callable[[str], bool],
        trusted: Callable[[], bool] = lambda: True,
    ) -> None:
        self.actor = actor
        self.cluster = cluster
        self.busy = busy
        #: whether this server's lease can be trusted now: without it, a failed check is
        #: not acted on (no local recovery, no failover): the server is being fenced, or
        #: about to be, and another may be taking its hierarchies over
        self.trusted = trusted
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.paused = False  # maintenance: nothing is checked

    def sync(self) -> None:
        """Start a task for each resource in service here; stop the others."""
        wanted = frozenset() if self.paused else self.actor.local.checked
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
            if self.busy(tag) or tag not in self.actor.local.checked:
                continue
            action = Action.QUICK_CHECK
            if time.monotonic() >= next_deep:
                action, next_deep = Action.DEEP_CHECK, time.monotonic() + deep
            check = await self._check(tag, action)
            if check.status is not CheckStatus.RUNNING and not self.busy(tag):
                if not self.trusted():
                    log.warning(
                        "%s of %s says %s: not acted on, this server's lease cannot be trusted now",
                        action,
                        tag,
                        check.status,
                    )
                    continue
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
        local = self.actor.local
        step = on_failed_check(cluster, tag, me, what, local.recoveries(tag), time.time())
        if step.response is FailureResponse.RECOVER:
            if await self._recover(tag, step.reason):
                return
            step = on_failed_recovery(cluster, tag, me, what)
        await self._move(cluster, step)

    async def _recover(self, tag: str, why: str) -> bool:
        resource = self.cluster().resources[tag]
        self.actor.local.recovering(tag, time.time())
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

    async def _move(self, cluster: Cluster, step: FailureStep) -> None:
        """Carry out a failover, a removal from service, or a blocked failover."""
        local, tag = self.actor.local, step.tag
        if step.response is FailureResponse.BLOCKED:
            local.broke(tag, step.hierarchy, step.intent_revision)
            await self.actor.report(tag, InstanceState.OSF, step.state_reason)
            await self.actor.event("failover-blocked", step.reason, step.hierarchy)
            return
        local.failing_over(tag, step.state_reason)
        moving = step.response is FailureResponse.FAIL_OVER
        await intents.move(
            self.actor.store,
            cluster,
            cluster.hierarchy(tag),
            step.target,
            me=self.actor.server,
            reason=step.reason,
            kind="failover-started" if moving else "failover-impossible",
            origin=step.origin,
            tried=step.tried,
        )
