"""The agent's loop stops when it is cancelled, whenever the cancellation comes (a real
embedded store in a scratch directory)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from vigil.agent.actor import Actor
from vigil.agent.cache import ClusterCache
from vigil.agent.cycle import Cycle
from vigil.agent.kitrunner import KitRunner
from vigil.kits.registry import KitRegistry
from vigil.store.embedded import EmbeddedStore


async def test_a_cancelled_loop_stops_even_right_after_a_wake_up(tmp_path: Path) -> None:
    # Python 3.11's asyncio.wait_for swallows a cancellation that arrives just after the
    # awaited event is set: an agent asked to stop then went on cycling (and checking)
    store = await EmbeddedStore.open(str(tmp_path / "store.db"))
    try:
        cache = ClusterCache(store)
        runner = KitRunner(KitRegistry({}), "n1", tmp_path, ())
        cycle = Cycle(cache, Actor(store, runner, "n1", lambda: 1), lambda: False)
        await cycle.refresh(fresh=True)
        for steps in range(6):
            loop = asyncio.create_task(cycle.loop())
            await asyncio.sleep(0.02)
            cycle.wake.set()
            for _ in range(steps):
                await asyncio.sleep(0)
            loop.cancel()
            await asyncio.wait((loop,), timeout=2.0)
            assert loop.done(), f"the loop went on after a cancel {steps} steps after a wake"
    finally:
        await store.close()
