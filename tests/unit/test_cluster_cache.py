"""``ClusterCache``: one agent's view of the cluster, read once and kept current by a watch,
on a real embedded store in a scratch directory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from vigil.agent.actor import Actor
from vigil.agent.cache import ClusterCache
from vigil.agent.cycle import Cycle
from vigil.agent.kitrunner import KitRunner
from vigil.agent.storeio import event_operation
from vigil.kits.registry import KitRegistry
from vigil.model.cluster import Cluster
from vigil.model.records import AliveRecord, ResourceRecord, ServerRecord, key
from vigil.store.base import Put, Store, WatchBatch
from vigil.store.embedded import EmbeddedStore

DEADLINE = 10.0


def resource(tag: str, priority: int = 1) -> bytes:
    return ResourceRecord(tag=tag, kit="app", instances={"n1": priority}).dump()


async def until(condition: Callable[[], bool], what: str) -> None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > DEADLINE:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(cache: ClusterCache) -> AsyncIterator[ClusterCache]:
    task = asyncio.create_task(cache.run())
    try:
        yield cache
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


#: opens another client of the test's store (EmbeddedStore.open's options)
Opener = Callable[..., Awaitable[Store]]


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Opener]:
    opened: list[Store] = []

    async def open_client(**options: float) -> Store:
        store = await EmbeddedStore.open(str(tmp_path / "store.db"), **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_client
    for store in opened:
        await store.close()


async def test_reload_reads_the_cluster_and_not_the_event_log(stores: Opener) -> None:
    writer = await stores()
    for n in range(50):
        await writer.txn((), (event_operation("n1", "test", f"event {n}"),))
    await writer.put(key("events", "00000000000000000001-n1-0"), b'{"at": 1}')  # an old one
    revision = await writer.put(key("resources", "web"), resource("web"))
    cache = ClusterCache(await stores())
    assert not cache.loaded and cache.cluster == Cluster()
    cluster = await cache.reload()
    assert cache.loaded and cache.revision == revision == cluster.revision
    assert set(cluster.resources) == {"web"}
    assert len(cache._builder) == 1  # neither the event log nor the old one is held


async def test_the_watch_keeps_it_current_and_wakes_waiters(stores: Opener) -> None:
    writer = await stores()
    cache = ClusterCache(await stores())
    await cache.reload()
    seen: list[WatchBatch | None] = []
    cache.subscribe(seen.append)
    async with running(cache):
        waiter = asyncio.create_task(cache.changed(cache.revision, DEADLINE))
        revision = await writer.put(key("resources", "web"), resource("web"))
        assert await waiter
        await until(lambda: cache.revision == revision, "the put")
        assert set(cache.cluster.resources) == {"web"}
        assert cache.cluster.revision == revision
        assert [e.key for batch in seen if batch for e in batch] == [key("resources", "web")]
        assert await cache.changed(revision, 0.2) is False  # nothing new: times out


async def test_a_transaction_is_never_seen_in_half(stores: Opener) -> None:
    writer = await stores()
    cache = ClusterCache(await stores(poll_interval=0.001))
    await cache.reload()
    views: list[frozenset[str]] = []
    cache.subscribe(lambda batch: views.append(frozenset(cache.cluster.resources)))
    tags = [f"r{n}" for n in range(8)]
    async with running(cache):
        for round_ in range(10):
            ops = [Put(key("resources", t), resource(t, round_ + 1)) for t in tags]
            if round_ % 2:
                ops.append(Put(key("servers", "n1"), b'{"name": "n1", "api_url": "x"}'))
            last = (await writer.txn((), ops)).revision
            ops = [Put(key("alive", "n1"), AliveRecord(started_at=1.0, pid=round_).dump())]
            last = (await writer.txn((), ops)).revision
        await until(lambda: cache.revision == last, "every transaction")
    assert views and all(view in (frozenset(), frozenset(tags)) for view in views)
    assert {r.instances["n1"] for r in cache.cluster.resources.values()} == {10}


async def test_values_are_parsed_once_per_revision(stores: Opener) -> None:
    writer = await stores()
    await writer.put(key("resources", "web"), resource("web"))
    cache = ClusterCache(await stores())
    first = await cache.reload()
    assert first.hierarchies  # derived once, then carried to the next views
    async with running(cache):
        revision = await writer.put(
            key("servers", "n1"), ServerRecord(name="n1", api_url="x").dump()
        )
        await until(lambda: cache.revision == revision, "the new server")
    second = cache.cluster
    assert second.resources is first.resources
    assert second.hierarchies is first.hierarchies
    await writer.put(key("servers", "n2"), ServerRecord(name="n2", api_url="y").dump())
    third = await cache.reload()  # not watching: the reload brings the change
    assert set(third.servers) == {"n1", "n2"}
    assert third.resources["web"] is first.resources["web"]  # unchanged: not parsed again


async def test_compacted_history_is_read_again(stores: Opener) -> None:
    writer = await stores(history_limit=5)
    cache = ClusterCache(await stores(history_limit=5))
    await cache.reload()
    for n in range(20):  # more than the store keeps while the cache does not watch
        last = await writer.put(key("resources", f"r{n}"), resource(f"r{n}"))
    await writer.delete(key("resources", "r0"))
    async with running(cache):
        await until(lambda: cache.revision >= last + 1, "a reload after compaction")
    assert set(cache.cluster.resources) == {f"r{n}" for n in range(1, 20)}


async def test_a_broken_watch_resumes_without_losing_a_change(
    stores: Opener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = await stores()
    cache = ClusterCache(await stores(request_timeout=0.3), retry_interval=0.05)
    lease = await writer.grant_lease(0.2)  # type: ignore[arg-type]
    await writer.put(key("alive", "n2"), AliveRecord(started_at=1.0, pid=2).dump(), lease.id)
    await cache.reload()
    assert cache.cluster.servers == {}  # not registered
    async with running(cache):
        # another process holds the write lock: the watch's next poll must sweep the
        # expired lease, cannot, and fails (StoreUnavailable) until the lock is released
        blocker = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with caplog.at_level(logging.WARNING, logger="vigil.agent"):
                await until(lambda: "store watch interrupted" in caplog.text, "the watch to break")
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        revision = await writer.put(key("resources", "web"), resource("web"))
        await until(lambda: cache.revision >= revision, "the watch to resume")
    assert set(cache.cluster.resources) == {"web"}
    assert key("alive", "n2") not in {k for k in cache._builder._keys}  # its expiry came


async def test_a_quiet_watch_is_restarted_and_misses_nothing(stores: Opener) -> None:
    writer = await stores()
    cache = ClusterCache(await stores(), quiet_limit=0.1)
    await cache.reload()
    async with running(cache):
        await asyncio.sleep(0.35)  # restarted a few times meanwhile
        revision = await writer.put(key("resources", "web"), resource("web"))
        await until(lambda: cache.revision == revision, "the put")
    assert set(cache.cluster.resources) == {"web"}


async def test_a_reload_ahead_of_the_watch_is_kept(stores: Opener) -> None:
    writer = await stores()
    cache = ClusterCache(await stores())
    await cache.reload()
    reloads: list[WatchBatch | None] = []
    cache.subscribe(reloads.append)
    await writer.put(key("resources", "a"), resource("a"))
    revision = await writer.put(key("resources", "b"), resource("b"))
    await cache.reload()  # goes further than the watch, which has not run yet
    assert reloads == [None]
    async with running(cache):
        last = await writer.put(key("resources", "c"), resource("c"))
        await until(lambda: cache.revision == last, "the next put")
    assert set(cache.cluster.resources) == {"a", "b", "c"}
    assert revision < last
    # the watch skipped what the reload held: only the put of c came through it
    assert [e.key for batch in reloads if batch for e in batch] == [key("resources", "c")]


async def test_the_cycle_times_heartbeats_as_the_watch_delivers_them(
    stores: Opener, tmp_path: Path
) -> None:
    writer = await stores()
    cache = ClusterCache(await stores())
    runner = KitRunner(KitRegistry({}), "n1", tmp_path, ())
    cycle = Cycle(cache, Actor(cache.store, runner, "n1", lambda: 1), lambda: True)
    await cycle.refresh(fresh=True)
    async with running(cache):
        cycle.wake.clear()
        beat = AliveRecord(started_at=1.0, pid=2, ttl=1.5).dump()
        first = await writer.put(key("alive", "n2"), beat)
        await until(lambda: cycle.wake.is_set(), "a wake-up for a server joining")
        assert cycle.heartbeats.silent() == {}
        due = cycle.heartbeats.next_due()
        assert due is not None and 1.0 < due <= 1.5  # timed when the watch delivered it
        cycle.wake.clear()
        second = await writer.put(key("alive", "n2"), beat)
        reported = await writer.put(key("state", "n2", "web"), b"{}")
        await until(lambda: cache.revision == reported, "the report")
        assert not cycle.wake.is_set()  # a renewal and a report change no decision
        assert cycle.heartbeats._seen["n2"].revision == second > first
        await writer.put(key("intent", "web"), b'{"server": "n2"}')
        await until(lambda: cycle.wake.is_set(), "a wake-up for a new intent")
