"""The lease keeper's heartbeat on a real embedded store: every renewal advances
``alive/<server>``; a heartbeat another agent ended is a lost lease; a beat whose answer
was lost is adopted, not mistaken for one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vigil.agent.config import LeaseSettings
from vigil.agent.lease import LeaseKeeper
from vigil.model.records import AliveRecord, key
from vigil.store.base import Put, Store
from vigil.store.embedded import EmbeddedStore

ALIVE = key("alive", "node1")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await EmbeddedStore.open(str(tmp_path / "store.db"))
    try:
        yield store
    finally:
        await store.close()


async def _lost(reason: str) -> None:
    raise AssertionError(f"on_lost must not be called by _renew_once: {reason}")


async def granted(store: Store) -> LeaseKeeper:
    keeper = LeaseKeeper(store, LeaseSettings(), "node1", _lost)
    await keeper.grant(AliveRecord(started_at=1.0, pid=42))
    return keeper


async def test_each_renewal_advances_the_heartbeat_under_the_lease(store: Store) -> None:
    keeper = await granted(store)
    first = await store.get(ALIVE)
    assert first is not None and first.lease == keeper.lease_id
    assert AliveRecord.model_validate_json(first.value).ttl == LeaseSettings().ttl
    assert await keeper._renew_once() is None
    second = await store.get(ALIVE)
    assert second is not None and second.mod_revision > first.mod_revision
    assert AliveRecord.model_validate_json(second.value).beat == 1


async def test_a_heartbeat_ended_by_another_agent_is_a_lost_lease(store: Store) -> None:
    keeper = await granted(store)
    await store.delete(ALIVE)  # what another agent's end_lease does
    reason = await keeper._renew_once()
    assert reason is not None and "ended its lease" in reason
    assert await store.get(ALIVE) is None  # and it did not write the key back


async def test_a_beat_whose_answer_was_lost_is_adopted(store: Store) -> None:
    keeper = await granted(store)
    # the store applied a beat the keeper never heard back from
    record = AliveRecord(started_at=1.0, pid=42, ttl=1.5, beat=7).dump()
    await store.txn((), (Put(ALIVE, record, keeper.lease_id),))
    assert await keeper._renew_once() is None
    assert keeper.valid()


async def test_a_heartbeat_rewritten_under_another_lease_is_not_ours(store: Store) -> None:
    keeper = await granted(store)
    other = await store.grant_lease(5)  # a second agent configured with the same name
    await store.txn((), (Put(ALIVE, AliveRecord(started_at=2.0, pid=43).dump(), other.id),))
    reason = await keeper._renew_once()
    assert reason is not None and "ended its lease" in reason
