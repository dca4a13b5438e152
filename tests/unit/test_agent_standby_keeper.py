"""The agent's standby keeper: standby where a resource is not in service, eligible
everywhere, the answer written once per change, bound to the agent's lease, removed when
the resource is no longer extended here; kits without rules of their own cost nothing
(a real embedded store in a scratch directory, a small fake kit)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest

from vigil.agent.actor import Actor
from vigil.agent.cache import ClusterCache
from vigil.agent.kitrunner import KitRunner
from vigil.agent.standby import StandbyKeeper
from vigil.kits.app import AppKit
from vigil.kits.base import Check, Eligibility, Kit, KitContext
from vigil.kits.registry import KitRegistry
from vigil.model.records import EligibleRecord, ResourceRecord, ServerRecord, key
from vigil.store.base import Store
from vigil.store.embedded import EmbeddedStore


class SyncedKit(Kit):
    """Eligible while ``in_sync``; counts its standby calls."""

    name: ClassVar[str] = "synced"
    description: ClassVar[str] = "a fake replicated resource"

    def __init__(self) -> None:
        self.in_sync = False
        self.standbys = 0

    async def restore(self, ctx: KitContext) -> None: ...
    async def remove(self, ctx: KitContext) -> None: ...
    async def quick_check(self, ctx: KitContext) -> Check:
        return Check.stopped()

    async def standby(self, ctx: KitContext) -> None:
        self.standbys += 1

    async def eligible(self, ctx: KitContext) -> Eligibility:
        return Eligibility.yes("in sync") if self.in_sync else Eligibility.no("resyncing")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await EmbeddedStore.open(str(tmp_path / "store.db"))
    await opened.put(key("servers", "n1"), ServerRecord(name="n1", api_url="x").dump())
    for tag, kit in (("data", "synced"), ("web", "app")):
        record = ResourceRecord(tag=tag, kit=kit, instances={"n2": 1, "n1": 10})
        await opened.put(key("resources", tag), record.dump())
    yield opened
    await opened.close()


async def report(store: Store, tag: str) -> tuple[EligibleRecord, int] | None:
    item = await store.get(key("eligible", "n1", tag))
    return (EligibleRecord.model_validate_json(item.value), item.lease) if item else None


async def test_answers_are_reported_once_per_change_and_bound_to_the_lease(
    store: Store, tmp_path: Path
) -> None:
    kit = SyncedKit()
    runner = KitRunner(KitRegistry({"synced": kit, "app": AppKit()}), "n1", tmp_path, ())
    lease = await store.grant_lease(30)
    actor = Actor(store, runner, "n1", lambda: lease.id)
    cache = ClusterCache(store)
    cluster = await cache.reload()
    keeper = StandbyKeeper(actor, lambda: cluster, lambda tag: False)

    await keeper.round()
    first = await report(store, "data")
    assert first is not None and not first[0].eligible and first[0].reason == "resyncing"
    assert first[1] == lease.id and kit.standbys == 1
    assert await report(store, "web") is None  # the app kit has no rules: nothing written

    revision = (await store.get_prefix("")).revision
    await keeper.round()  # the same answer: nothing written
    assert (await store.get_prefix("")).revision == revision and kit.standbys == 2

    kit.in_sync = True
    await keeper.round()
    again = await report(store, "data")
    assert again is not None and again[0].eligible and again[0].reason == "in sync"

    actor.local.found_running({"data"})  # in service here: eligible is asked, standby is not
    await keeper.round()
    assert kit.standbys == 3

    await store.delete(key("resources", "data"))  # deleted: its report goes
    cluster = await cache.reload()
    await keeper.round()
    assert await report(store, "data") is None


async def test_nothing_runs_for_a_busy_resource(store: Store, tmp_path: Path) -> None:
    kit = SyncedKit()
    runner = KitRunner(KitRegistry({"synced": kit, "app": AppKit()}), "n1", tmp_path, ())
    actor = Actor(store, runner, "n1", lambda: 0)
    cluster = await ClusterCache(store).reload()
    await StandbyKeeper(actor, lambda: cluster, lambda tag: True).round()
    assert kit.standbys == 0 and await report(store, "data") is None
