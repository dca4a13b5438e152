"""Standby states: an agent reports OSU for what it holds out of service, once, and again
whenever the view it reported from changes (a real embedded store in a scratch directory)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vigil.agent.actor import Actor
from vigil.agent.cache import ClusterCache
from vigil.agent.kitrunner import KitRunner
from vigil.kits.registry import KitRegistry
from vigil.model.records import (
    IntentRecord,
    OwnerRecord,
    ResourceRecord,
    ServerRecord,
    StateRecord,
    key,
)
from vigil.model.states import InstanceState
from vigil.store.base import Store
from vigil.store.embedded import EmbeddedStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await EmbeddedStore.open(str(tmp_path / "store.db"))
    for server in ("n1", "n2"):
        await opened.put(key("servers", server), ServerRecord(name=server, api_url="x").dump())
    web = ResourceRecord(tag="web", kit="app", instances={"n2": 1, "n1": 10})
    await opened.put(key("resources", "web"), web.dump())
    await opened.put(key("intent", "web"), IntentRecord(server="n2").dump())
    await opened.put(key("owner", "web"), OwnerRecord(server="n2").dump())
    yield opened
    await opened.close()


async def reported(store: Store) -> StateRecord | None:
    item = await store.get(key("state", "n1", "web"))
    return StateRecord.model_validate_json(item.value) if item else None


async def test_standby_is_reported_once_and_again_when_its_view_changes(
    store: Store, tmp_path: Path
) -> None:
    cache = ClusterCache(store)
    actor = Actor(store, KitRunner(KitRegistry({}), "n1", tmp_path, ()), "n1", lambda: 1)
    await actor.report_standby(await cache.reload())
    first = await reported(store)
    assert first and first.state is InstanceState.OSU and first.reason == "in service on n2"
    revision = (await store.get_prefix("")).revision
    await actor.report_standby(await cache.reload())  # nothing to write: nothing written
    await actor.report_standby(cache.cluster)
    assert (await store.get_prefix("")).revision == revision
    await store.delete(key("state", "n1", "web"))  # someone else's change
    await actor.report_standby(await cache.reload())
    assert await reported(store) is not None
    await store.delete(key("owner", "web"))  # n2 lets it go: the reason changes
    await actor.report_standby(await cache.reload())
    again = await reported(store)
    assert again and again.reason == "wanted in service on n2"
    actor.local.found_running({"web"})  # in service here now: not a standby any more
    await store.put(key("intent", "web"), IntentRecord(server="n1").dump())
    await actor.report_standby(await cache.reload())
    assert (await reported(store)) == again  # left to the restore's own report
