"""The event log stays bounded: the oldest events go first."""

from __future__ import annotations

from pathlib import Path

from vigil.agent.housekeeping import drop_legacy_events, prune_events
from vigil.agent.storeio import event_operation
from vigil.model.records import EVENTS_PREFIX, EventRecord, key
from vigil.store import open_store


async def test_prune_keeps_the_newest_events(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/store.db")
    try:
        for n in range(250):
            await store.txn((), (event_operation("node1", "test", f"event {n}"),))
        assert await prune_events(store, keep=40) == 210
        left = (await store.get_prefix(EVENTS_PREFIX)).items
        assert len(left) == 40
        assert b"event 249" in left[-1].value
        assert b"event 210" in left[0].value
        assert await prune_events(store, keep=40) == 0
    finally:
        await store.close()


async def test_the_event_log_of_an_earlier_version_is_deleted(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/store.db")
    try:
        old = EventRecord(at=1.0, server="node1", kind="test", message="from an earlier version")
        for n in range(3):
            await store.put(key("events", f"{n:020d}-node1-{n}"), old.dump())
        await store.txn((), (event_operation("node1", "test", "new"),))
        await store.put(key("resources", "web"), b"{}")
        assert await drop_legacy_events(store)
        assert not (await store.get_prefix(key("events", ""))).items
        assert len((await store.get_prefix(EVENTS_PREFIX)).items) == 1
        assert await store.get(key("resources", "web")) is not None
        assert not await drop_legacy_events(store)
    finally:
        await store.close()
