"""The agent's lease: its right to hold resources in service.

A lease is two things renewed together: the store's lease (the backstop: its keys vanish
when it expires) and the heartbeat key ``alive/<server>``, bound to it and advanced with
every renewal, whose revision other agents time with their own clocks
(``vigil.agent.liveness``). A renewal succeeds when both succeed.

The holder counts from when it *sent* its last successful renewal: the store received it
later, and every other server sees it later still, so the lease cannot expire for anyone
else before ``last_sent + ttl``. The keeper declares the lease lost once
``last_sent + ttl - safety_margin`` has passed without a renewal (or when the store says it
is gone, or another agent has ended it), leaving the margin for the agent to take its
resources out of service first.

Failsafe (``vigil.agent.failsafe``, on unless ``[lease] failsafe = false``): while renewals
fail, the keeper runs failsafe rounds next to its retries; a round every other agent
confirms ("I cannot reach the store either") counts as a renewal sent when the round
began, for at most ``failsafe_limit`` seconds past the last successful renewal. The trust
deadline is then ``max(last_sent, held_from) + ttl - safety_margin``; the module
``vigil.agent.failsafe`` says why no other server can act on the lease before it.

At start, ``check_timing`` holds the settings and the TTL the store really grants against
the lease timing rule (``vigil.agent.timing``) and refuses to go on when they are unsafe.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from vigil.agent.config import LeaseSettings
from vigil.agent.timing import check_lease_timing
from vigil.aio import within
from vigil.errors import LeaseLost, StoreError
from vigil.model.records import AliveRecord, key
from vigil.store.base import Compare, Put, Store

if TYPE_CHECKING:
    from vigil.agent.failsafe import Failsafe

log = logging.getLogger("vigil.agent.lease")


class LeaseKeeper:
    """Grants and renews one lease; calls ``on_lost`` once when it can no longer be trusted."""

    def __init__(
        self,
        store: Store,
        settings: LeaseSettings,
        server: str,
        on_lost: Callable[[str], Awaitable[None]],
        on_renewed: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        failsafe: Failsafe | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.on_lost = on_lost
        self.on_renewed = on_renewed
        self.clock = clock
        self.failsafe = failsafe if settings.failsafe else None
        self.lease_id = 0
        self.lost_lease = 0
        self.last_sent = 0.0
        #: when the last failsafe round that every other agent confirmed began
        self.held_from = 0.0
        self._alive_key = key("alive", server)
        self._alive = AliveRecord(started_at=0.0, pid=0)
        self._alive_revision = 0
        #: servers published as members since the last successful renewal: a round asks
        #: them all (a heartbeat whose answer was lost may have reached the store)
        self._asked: set[str] = set()
        self._beaten: set[str] = set()  # the members of the last heartbeat written
        self._failing = False  # the last exchange with the store failed
        self._in_flight = 0.0  # when the exchange now under way began (0: none)
        self._doubt = ""  # why the last failsafe round did not hold the lease on

    def _ask(self) -> float:
        """The TTL to ask of the store: ``ttl + safety_margin``, rounded up to whole seconds
        on a networked store (etcd grants whole seconds: up is the safe direction). The
        store's expiry is the backstop, for when no other agent is there to time the
        heartbeat: the others end the lease first, on their clocks, and say so."""
        backstop = self.settings.ttl + self.settings.safety_margin + self._hold
        return math.ceil(backstop) if self.store.capabilities.networked else backstop

    @property
    def _hold(self) -> float:
        """How long past the last renewal a failsafe may hold the lease (0: never)."""
        return self.settings.failsafe_limit if self.failsafe is not None else 0.0

    async def check_timing(self) -> list[str]:
        """Check the lease timing rule (``vigil.agent.timing``) against this store: grant a
        lease as ``grant`` does, revoke it, and compare its TTL and the store's minimum with
        the settings. Each warning is logged; ``ConfigError`` when the timing is unsafe
        (the agent must not start). Call once at start, before ``grant``; store errors
        propagate."""
        lease = await self.store.grant_lease(self._ask())
        try:
            await self.store.revoke_lease(lease.id)
        except StoreError as exc:
            log.warning("could not revoke the probe lease %x (it will expire): %s", lease.id, exc)
        warnings = check_lease_timing(
            self.settings, self.store.capabilities, lease.ttl, failsafe=self.failsafe is not None
        )
        for warning in warnings:
            log.warning("lease timing: %s", warning)
        return warnings

    async def grant(self, alive: AliveRecord) -> int:
        """Grant a fresh lease and publish this server's heartbeat ``alive`` under it."""
        sent = self._begin()
        try:
            lease = await self.store.grant_lease(self._ask())
        except StoreError:
            self._end(ok=False)
            raise
        members = self._members()
        self._alive = alive.model_copy(
            update={"ttl": self.settings.ttl, "beat": 0, "failsafe": self._hold, "members": members}
        )
        try:
            put = Put(self._alive_key, self._alive.dump(), lease.id)
            self._alive_revision = (await self.store.txn((), (put,))).revision
        except BaseException as exc:
            self._end(ok=not isinstance(exc, StoreError))
            await self.revoke(lease.id)
            raise
        self._end(ok=True)
        self.lease_id, self.last_sent, self.held_from = lease.id, sent, 0.0
        self._asked, self._doubt = set(members), ""
        self.on_renewed()
        ttl, store_ttl = self.settings.ttl, lease.ttl
        log.info("lease %x granted (ttl %ss, store ttl %ss)", lease.id, ttl, store_ttl)
        return lease.id

    @property
    def renewed_until(self) -> float:
        """The trust deadline its last successful renewal alone gives (no failsafe)."""
        return self.last_sent + self.settings.ttl - self.settings.safety_margin

    @property
    def trusted_until(self) -> float:
        """Monotonic time after which this agent must consider its lease lost: from its
        last successful renewal, or from its last confirmed failsafe round."""
        base = max(self.last_sent, self.held_from)
        return base + self.settings.ttl - self.settings.safety_margin

    def valid(self) -> bool:
        return self.lease_id != 0 and self.clock() < self.trusted_until

    def store_unreachable(self) -> bool:
        """Whether this agent cannot reach the store now, as far as its lease exchanges
        tell: the last one failed, or the one under way has taken half its timeout (a
        healthy store answers in milliseconds). What failsafe answers others."""
        if self._failing:
            return True
        return bool(self._in_flight) and (
            self.clock() - self._in_flight > self.settings.request_timeout / 2
        )

    def _begin(self) -> float:
        self._in_flight = self.clock()
        return self._in_flight

    def _end(self, *, ok: bool) -> None:
        """An exchange with the store ended: it answered (``ok``) or it did not."""
        self._in_flight = 0.0
        self._failing = not ok

    def _members(self) -> tuple[str, ...]:
        """The servers to publish as members (and ask in a failsafe round)."""
        return self.failsafe.members() if self.failsafe is not None else ()

    async def run(self) -> None:
        """Renew until cancelled. When the lease is lost, ``on_lost`` runs (it fences and
        may grant a new lease); renewal goes on with the new lease, or ends without one.
        With failsafe, rounds run beside the renewals while the store does not answer."""
        holding = asyncio.create_task(self._hold_on(), name="failsafe") if self.failsafe else None
        try:
            while self.lease_id:
                await asyncio.sleep(self.settings.renew_interval)
                reason = await self._renew_once()
                if reason:
                    self.lost_lease, self.lease_id = self.lease_id, 0
                    log.error("lease %x lost: %s", self.lost_lease, reason)
                    await self.on_lost(reason)
        finally:
            if holding is not None:
                holding.cancel()
                await asyncio.gather(holding, return_exceptions=True)

    async def _renew_once(self) -> str | None:
        """Renew, retrying until the trust deadline; the reason when the lease is lost."""
        while True:
            sent = self.clock()
            if sent >= self.trusted_until:
                doubt = f"; failsafe: {self._doubt}" if self._doubt else ""
                return (
                    f"no successful renewal for {sent - self.last_sent:.1f}s "
                    f"(ttl {self.settings.ttl}s, safety margin {self.settings.safety_margin}s)"
                    + doubt
                )
            budget = min(self.settings.request_timeout, self.trusted_until - sent)
            self._begin()
            try:
                await within(self._renew_both(), budget)  # see vigil.aio
            except LeaseLost as exc:
                self._end(ok=True)  # the store answered: the lease is gone
                return f"the store says the lease is gone ({exc})"
            except (StoreError, TimeoutError) as exc:
                self._end(ok=False)
                log.warning("lease renewal failed, retrying: %s", str(exc) or type(exc).__name__)
                await asyncio.sleep(min(0.1, self.settings.renew_interval))
                continue
            self._end(ok=True)
            if self.held_from > self.last_sent:
                held = sent - self.last_sent
                log.warning("failsafe: the store answers again (lease held on for %.1fs)", held)
            self.last_sent, self._doubt, self._asked = sent, "", set(self._beaten)
            self.on_renewed()
            return None

    async def _hold_on(self) -> None:
        """Failsafe rounds while the store does not answer: each round every other agent
        confirms holds the lease on from the moment it began (``vigil.agent.failsafe``)."""
        assert self.failsafe is not None
        settings = self.settings
        pause = max(0.02, min(settings.renew_interval, settings.request_timeout) / 3)
        while True:
            await asyncio.sleep(pause)
            lease, sent = self.lease_id, self.clock()
            if not lease or not self.store_unreachable() or sent >= self.trusted_until:
                continue
            if sent > self.last_sent + settings.failsafe_limit:
                self._doubt = (
                    f"the store has been unreachable for over failsafe_limit "
                    f"({settings.failsafe_limit:g}s)"
                )
                continue
            timeout = min(settings.request_timeout, self.trusted_until - sent)
            doubt = await self.failsafe.confirm(sorted(self._asked), timeout)
            if lease != self.lease_id or self.clock() >= self.trusted_until:
                continue  # too late: the lease is lost, or about to be declared so
            if doubt is not None:
                if doubt != self._doubt:  # said again with the loss, if it comes to that
                    log.info("failsafe cannot hold the lease on: %s", doubt)
                self._doubt = doubt
                continue
            if self.held_from <= self.last_sent:
                asked = ", ".join(sorted(self._asked)) or "no other server alive"
                log.warning(
                    "failsafe: the store does not answer, nor does it answer %s: holding "
                    "the lease on (for at most %gs past the last renewal)",
                    asked,
                    settings.failsafe_limit,
                )
            self.held_from, self._doubt = max(self.held_from, sent), ""
            self.on_renewed()

    async def _renew_both(self) -> None:
        """Keep the store's lease alive and advance the heartbeat, at once; the first
        failure cancels the other and is raised (``LeaseLost`` before any other).

        Not ``asyncio.TaskGroup``: on Python 3.11 (Debian 12's 3.11.2) a task group whose
        child fails leaves a cancel request on the calling task, one more with every failed
        renewal; the next ``asyncio.timeout`` of the renewal that expired then raised
        ``CancelledError`` instead of ``TimeoutError``, which ended the renewals for good
        while the agent went on (seen in the fault campaign, ``bench/campaign.py``, after
        an etcd leader was killed: the fence guard fenced, the monitor recovered the
        resources again, and two servers ran them)."""
        tasks = [
            asyncio.ensure_future(self.store.keep_alive(self.lease_id)),
            asyncio.ensure_future(self._beat()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        failures = [e for t in tasks if not t.cancelled() and (e := t.exception()) is not None]
        if failures:
            raise next((e for e in failures if isinstance(e, LeaseLost)), failures[0])

    async def _beat(self) -> None:
        """Advance the heartbeat key, only if it is still the one this agent last wrote:
        ``LeaseLost`` when another agent has ended this lease (deleted the key). The
        heartbeat publishes the servers a failsafe round would ask now."""
        members = self._members()
        self._asked |= set(members)  # before it is sent: it may arrive though we never hear
        self._alive = self._alive.model_copy(
            update={"beat": self._alive.beat + 1, "members": members}
        )
        put = Put(self._alive_key, self._alive.dump(), self.lease_id)
        for _ in range(2):
            guard = Compare(self._alive_key, self._alive_revision)
            result = await self.store.txn((guard,), (put,))
            if result.succeeded:
                self._alive_revision = result.revision
                self._beaten = set(members)
                return
            current = await self.store.get(self._alive_key)
            if current is None or current.lease != self.lease_id:
                raise LeaseLost(
                    "another server saw no heartbeat from this one in time and ended its lease"
                )
            # a beat whose answer was lost reached the store: go on from it
            self._alive_revision = current.mod_revision
        raise StoreError("the heartbeat key changed twice while it was being renewed")

    async def revoke(self, lease_id: int | None = None) -> None:
        """Give the lease back (orderly stop, or the one just lost): its keys vanish at once."""
        if lease_id is None:
            lease_id, self.lease_id = self.lease_id, 0
        if lease_id:
            try:
                await self.store.revoke_lease(lease_id)
            except StoreError as exc:
                log.warning("could not revoke lease %x (it will expire): %s", lease_id, exc)
