"""The event log stays bounded: the oldest events go first."""

from __future__ import annotations

from pathlib import Path

from vigil.agent.housekeeping import prune_events
from vigil.agent.storeio import event_operation
from vigil.model.records import key
from vigil.store import open_store


async def test_prune_keeps_the_newest_events(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/store.db")
    try:
        for n in range(250):
            await store.txn((), (event_operation("node1", "test", f"event {n}"),))
        assert await prune_events(store, keep=40) == 210
        left = (await store.get_prefix(key("events", ""))).items
        assert len(left) == 40
        assert b"event 249" in left[-1].value
        assert b"event 210" in left[0].value
        assert await prune_events(store, keep=40) == 0
    finally:
        await store.close()
