"""Standbys and eligibility: what each server's kits say about taking a resource over.

The engine is pure and never calls kits, yet it must not fail a hierarchy over to a server
whose kit says no (a mirror target that is not in sync: DESIGN.md section 4). So every
agent asks its own kits, every ``INTERVAL`` seconds, for each resource extended to its
server whose kit has rules of its own (``Kit.has_eligibility``):

* where the resource is not in service here, ``standby`` first (the kit keeps its standby
  ready: a mirror target's receiver), then ``eligible``;
* where it is in service here, ``eligible`` only.

The answer is written to the store as ``eligible/<server>/<tag>`` (``EligibleRecord``),
bound to this agent's lease (a dead agent's answers vanish with it: a dead server is not
eligible anyway), and only when it changed; the engine reads it as
``Cluster.eligibility``. Nothing runs for a resource that a step (restore, remove) or an
administrator's operation is working on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from vigil.agent.actor import Actor
from vigil.errors import StoreError, VigilError
from vigil.kits.base import Action, Eligibility, Kit, KitProperties
from vigil.model.cluster import Cluster, Resource
from vigil.model.records import EligibleRecord, key
from vigil.store.base import Delete, Operation, Put

__all__ = ["INTERVAL", "StandbyKeeper"]

log = logging.getLogger("vigil.agent.standby")

#: seconds between two rounds
INTERVAL = 1.0


def has_standby(kit: Kit[KitProperties]) -> bool:
    """Whether the kit keeps a standby or has eligibility rules (anything to run here)."""
    return kit.has_eligibility() or type(kit).standby is not Kit.standby


class StandbyKeeper:
    """Runs ``standby`` and ``eligible`` for this server's resources, and reports."""

    def __init__(
        self, actor: Actor, cluster: Callable[[], Cluster], busy: Callable[[str], bool]
    ) -> None:
        self.actor = actor
        self.cluster = cluster
        self.busy = busy
        #: tag -> (lease, answer) last written to the store
        self._written: dict[str, tuple[int, Eligibility]] = {}
        self._failing: dict[str, str] = {}  # tag -> last standby failure logged
        self.wake = asyncio.Event()

    async def run(self) -> None:
        """Rounds until cancelled; a round that fails is logged, never fatal."""
        while True:
            try:
                await self.round()
            except StoreError as exc:
                log.warning("eligibility not reported (store unavailable): %s", exc)
            woken = asyncio.ensure_future(self.wake.wait())
            try:
                await asyncio.wait((woken,), timeout=INTERVAL)
            finally:
                woken.cancel()
            self.wake.clear()

    async def round(self) -> None:
        """One pass over the resources extended here. What it writes is remembered only
        once written (a failed write is tried again next round)."""
        cluster, me = self.cluster(), self.actor.server
        lease = self.actor.lease_id()
        here = {
            tag: r
            for tag, r in cluster.resources.items()
            if me in r.instances
            and r.kit in self.actor.runner.kits.names()
            and has_standby(self.actor.runner.kit(r.kit))
        }
        gone = sorted(set(self._written) - set(here))
        ops: list[Operation] = [Delete(key("eligible", me, tag)) for tag in gone]
        written: dict[str, tuple[int, Eligibility]] = {}
        for tag, resource in sorted(here.items()):
            if self.busy(tag) or self.actor.local.fencing:
                continue
            answer = await self._evaluate(resource)
            if answer is None or not lease or self._written.get(tag) == (lease, answer):
                continue
            record = EligibleRecord(
                eligible=answer.eligible, reason=answer.reason, since=time.time()
            )
            ops.append(Put(key("eligible", me, tag), record.dump(), lease))
            written[tag] = (lease, answer)
        if not ops:
            return
        await self.actor.store.txn((), ops)
        for tag in gone:
            del self._written[tag]
        for tag, (held, answer) in written.items():
            self._written[tag] = (held, answer)
            verdict = "eligible" if answer.eligible else "not eligible"
            reason = f" ({answer.reason})" if answer.reason else ""
            log.info("%s on %s: %s%s", tag, me, verdict, reason)

    async def _evaluate(self, resource: Resource) -> Eligibility | None:
        """``standby`` (unless in service here), then ``eligible``; None when the kit
        failed to answer (logged once per distinct failure)."""
        runner, tag = self.actor.runner, resource.tag
        try:
            kit, ctx = runner.resource_context(resource)
            if tag not in self.actor.local.running:
                await runner.run(Action.STANDBY, kit, ctx, kit.standby)
            answer = await runner.run(Action.ELIGIBLE, kit, ctx, kit.eligible)
        except VigilError as exc:  # KitTimeout included
            message = str(exc)
            if self._failing.get(tag) != message:
                log.warning("standby of %s on %s: %s", tag, self.actor.server, message)
                self._failing[tag] = message
            return Eligibility.no(f"its kit could not tell: {message}")
        self._failing.pop(tag, None)
        return answer
