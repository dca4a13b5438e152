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

At start, ``check_timing`` holds the settings and the TTL the store really grants against
the lease timing rule (``vigil.agent.timing``) and refuses to go on when they are unsafe.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from vigil.agent.config import LeaseSettings
from vigil.agent.timing import check_lease_timing
from vigil.errors import LeaseLost, StoreError
from vigil.model.records import AliveRecord, key
from vigil.store.base import Compare, Put, Store

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
    ) -> None:
        self.store = store
        self.settings = settings
        self.on_lost = on_lost
        self.on_renewed = on_renewed
        self.clock = clock
        self.lease_id = 0
        self.lost_lease = 0
        self.last_sent = 0.0
        self._alive_key = key("alive", server)
        self._alive = AliveRecord(started_at=0.0, pid=0)
        self._alive_revision = 0

    def _ask(self) -> float:
        """The TTL to ask of the store: ``ttl + safety_margin``, rounded up to whole seconds
        on a networked store (etcd grants whole seconds: up is the safe direction). The
        store's expiry is the backstop, for when no other agent is there to time the
        heartbeat: the others end the lease first, on their clocks, and say so."""
        backstop = self.settings.ttl + self.settings.safety_margin
        return math.ceil(backstop) if self.store.capabilities.networked else backstop

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
        warnings = check_lease_timing(self.settings, self.store.capabilities, lease.ttl)
        for warning in warnings:
            log.warning("lease timing: %s", warning)
        return warnings

    async def grant(self, alive: AliveRecord) -> int:
        """Grant a fresh lease and publish this server's heartbeat ``alive`` under it."""
        sent = self.clock()
        lease = await self.store.grant_lease(self._ask())
        self._alive = alive.model_copy(update={"ttl": self.settings.ttl, "beat": 0})
        try:
            put = Put(self._alive_key, self._alive.dump(), lease.id)
            self._alive_revision = (await self.store.txn((), (put,))).revision
        except BaseException:
            await self.revoke(lease.id)
            raise
        self.lease_id, self.last_sent = lease.id, sent
        self.on_renewed()
        ttl, store_ttl = self.settings.ttl, lease.ttl
        log.info("lease %x granted (ttl %ss, store ttl %ss)", lease.id, ttl, store_ttl)
        return lease.id

    @property
    def trusted_until(self) -> float:
        """Monotonic time after which this agent must consider its lease lost."""
        return self.last_sent + self.settings.ttl - self.settings.safety_margin

    def valid(self) -> bool:
        return self.lease_id != 0 and self.clock() < self.trusted_until

    async def run(self) -> None:
        """Renew until cancelled. When the lease is lost, ``on_lost`` runs (it fences and
        may grant a new lease); renewal goes on with the new lease, or ends without one."""
        while self.lease_id:
            await asyncio.sleep(self.settings.renew_interval)
            reason = await self._renew_once()
            if reason:
                self.lost_lease, self.lease_id = self.lease_id, 0
                log.error("lease %x lost: %s", self.lost_lease, reason)
                await self.on_lost(reason)

    async def _renew_once(self) -> str | None:
        """Renew, retrying until the trust deadline; the reason when the lease is lost."""
        while True:
            sent = self.clock()
            if sent >= self.trusted_until:
                return (
                    f"no successful renewal for {sent - self.last_sent:.1f}s "
                    f"(ttl {self.settings.ttl}s, safety margin {self.settings.safety_margin}s)"
                )
            budget = min(self.settings.request_timeout, self.trusted_until - sent)
            try:
                await asyncio.wait_for(self._renew_both(), budget)
            except LeaseLost as exc:
                return f"the store says the lease is gone ({exc})"
            except (StoreError, TimeoutError) as exc:
                log.warning("lease renewal failed, retrying: %s", str(exc) or type(exc).__name__)
                await asyncio.sleep(min(0.1, self.settings.renew_interval))
                continue
            self.last_sent = sent
            self.on_renewed()
            return None

    async def _renew_both(self) -> None:
        """Keep the store's lease alive and advance the heartbeat, at once; the first
        failure cancels the other and is raised (``LeaseLost`` before any other)."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.store.keep_alive(self.lease_id))
                group.create_task(self._beat())
        except BaseExceptionGroup as failures:
            first = failures.subgroup(LeaseLost) or failures
            raise first.exceptions[0] from None

    async def _beat(self) -> None:
        """Advance the heartbeat key, only if it is still the one this agent last wrote:
        ``LeaseLost`` when another agent has ended this lease (deleted the key)."""
        self._alive = self._alive.model_copy(update={"beat": self._alive.beat + 1})
        put = Put(self._alive_key, self._alive.dump(), self.lease_id)
        for _ in range(2):
            guard = Compare(self._alive_key, self._alive_revision)
            result = await self.store.txn((guard,), (put,))
            if result.succeeded:
                self._alive_revision = result.revision
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
