"""Failed lease renewals leave no cancel request on the lease keeper's task.

Found by the fault campaign (``bench/campaign.py``): on Python 3.11 (Debian 12's 3.11.2)
an ``asyncio.TaskGroup`` whose child fails leaves one cancel request on the calling task;
after a few failed renewals (an etcd leader killed), the renewal's ``asyncio.timeout``
raised ``CancelledError`` instead of ``TimeoutError`` and the lease keeper ended silently
while the agent went on.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from vigil.agent.config import LeaseSettings
from vigil.agent.lease import LeaseKeeper
from vigil.errors import LeaseLost, StoreUnavailable
from vigil.store.base import Store


class _FailingStore:
    """keep_alive fails at once (``error``); the heartbeat's transaction hangs."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def keep_alive(self, lease_id: int) -> int:
        await asyncio.sleep(0.001)
        raise self.error

    async def txn(self, *args: Any) -> Any:
        await asyncio.sleep(60)

    async def get(self, *args: Any) -> Any:
        await asyncio.sleep(60)


async def _noop(reason: str) -> None:
    return None


def _keeper(error: Exception) -> LeaseKeeper:
    keeper = LeaseKeeper(cast(Store, _FailingStore(error)), LeaseSettings(), "node1", _noop)
    keeper.lease_id = 1
    return keeper


async def test_failed_renewals_leave_no_cancel_request() -> None:
    keeper = _keeper(StoreUnavailable("etcd unavailable"))
    task = asyncio.current_task()
    assert task is not None
    for _ in range(5):
        with contextlib.suppress(StoreUnavailable):
            await keeper._renew_both()
    assert task.cancelling() == 0
    # and a timeout that expires still says so, as the renewal's own timeout must
    try:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)
    except TimeoutError:
        pass


async def test_lease_lost_wins_and_the_other_exchange_is_cancelled() -> None:
    keeper = _keeper(LeaseLost("gone"))
    try:
        await keeper._renew_both()
    except LeaseLost:
        pass
    else:
        raise AssertionError("LeaseLost expected")
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.sleep(0)
    assert all(t.done() for t in others), others


async def test_a_renewal_timing_out_raises_timeout_error_after_failures() -> None:
    """The keeper's retry loop: failures, then a renewal that overruns its budget."""
    keeper = _keeper(StoreUnavailable("etcd unavailable"))
    for _ in range(3):
        with contextlib.suppress(StoreUnavailable):
            await keeper._renew_both()
    hanging = _keeper(StoreUnavailable("unused"))
    hanging.store = cast(Store, _FailingStore(StoreUnavailable("x")))

    async def never() -> int:
        await asyncio.sleep(60)
        return 0

    hanging.store.keep_alive = lambda lease_id: never()  # type: ignore[method-assign]
    try:
        async with asyncio.timeout(0.02):
            await hanging._renew_both()
    except TimeoutError:
        return
    raise AssertionError("TimeoutError expected")
