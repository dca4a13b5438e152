"""The store contract (``vigil.store.base``), checked against every backend in ``BACKENDS``.

Tests use only the abstract ``Store`` API and the ``Backend`` harness (see ``conftest.py``).
They wait on conditions with generous deadlines instead of sleeping for a fixed time, and
ask for lease TTLs of ``backend.short_ttl`` (sub-second where the backend allows it), so
they pass unchanged on a backend whose shortest lease is one second.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

import pytest

from vigil.errors import Compacted, LeaseLost, StoreError, StoreUnavailable
from vigil.store import Compare, Delete, EventType, Lease, Put, Store, WatchBatch, WatchEvent

if TYPE_CHECKING:
    from conftest import Backend

T = TypeVar("T")

#: generous bound for anything that should happen "soon" (a watch event, an expiry)
DEADLINE = 10.0


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> float:
    """Wait until ``condition()`` holds; returns the seconds it took. Fails after DEADLINE."""
    start = time.monotonic()
    while not await condition():
        if time.monotonic() - start > DEADLINE:
            pytest.fail(f"timed out after {DEADLINE} s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def take(events: AsyncIterator[WatchEvent], count: int) -> list[WatchEvent]:
    """The next ``count`` events of a watch, failing if they do not come within DEADLINE."""
    return [await asyncio.wait_for(anext(events), DEADLINE) for _ in range(count)]


@asynccontextmanager
async def watching(watch: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Use a watch (of events or of batches), then close it."""
    try:
        yield watch
    finally:
        close = getattr(watch, "aclose", None)
        if close is not None:
            await close()


async def revision(store: Store) -> int:
    return (await store.get_prefix("")).revision


async def short_lease(backend: Backend, store: Store) -> Lease:
    """A lease of the backend's shortest useful TTL (fractional seconds where supported)."""
    return await store.grant_lease(backend.short_ttl)


async def increment(store: Store, key: str) -> int:
    """Add one to the integer at ``key`` by compare-and-set; returns the attempts it took."""
    attempts = 0
    while True:
        attempts += 1
        item = await store.get(key)
        value = int(item.value) if item else 0
        update = Put(key, str(value + 1).encode())
        if (await store.txn((Compare.unchanged(item, key),), (update,))).succeeded:
            return attempts


# --- keys and revisions -------------------------------------------------------------


async def test_put_get_delete(store: Store) -> None:
    assert await store.get("k") is None
    put_revision = await store.put("k", b"v1")
    item = await store.get("k")
    assert item is not None
    assert (item.key, item.value, item.lease) == ("k", b"v1", 0)
    assert item.create_revision == item.mod_revision == put_revision
    await store.put("k", b"")
    assert (await store.get("k")) is not None  # an empty value is still a value
    delete_revision = await store.delete("k")
    assert await store.get("k") is None
    assert delete_revision == await revision(store)


async def test_each_change_increments_the_revision_by_one(store: Store) -> None:
    first = await store.put("a", b"1")
    assert await store.put("b", b"1") == first + 1
    assert await store.put("a", b"1") == first + 2  # same value: still a change
    item = await store.get("a")
    assert item is not None
    assert (item.create_revision, item.mod_revision) == (first, first + 2)
    assert await store.delete("a") == first + 3
    assert await store.put("a", b"again") == first + 4
    recreated = await store.get("a")
    assert recreated is not None
    assert recreated.create_revision == recreated.mod_revision == first + 4


async def test_a_transaction_that_changes_nothing_keeps_the_revision(store: Store) -> None:
    base = await store.put("x", b"1")
    assert await store.delete("missing") == base
    assert await store.delete("nothing-under/", prefix=True) == base
    assert (await store.txn((), ())).revision == base
    result = await store.txn((Compare.absent("x"),), (Put("y", b"1"),))
    assert (result.succeeded, result.revision) == (False, base)
    assert (await store.txn((Compare.absent("y"),), ())).revision == base
    assert await store.get("y") is None
    assert await revision(store) == base


async def test_keys_a_transaction_creates_have_its_revision_as_create_revision(
    store: Store,
) -> None:
    # an agent's fencing epoch is the revision of the claim that created its owner keys:
    # it takes it from the transaction's answer instead of reading the keys again
    lease = await store.grant_lease(30)
    await store.put("owner/kept", b"old")
    result = await store.txn(
        (Compare.absent("owner/a"), Compare.absent("owner/b")),
        (
            Put("owner/a", b"n1", lease.id),
            Put("owner/b", b"n1", lease.id),
            Put("owner/kept", b"n1"),
        ),
    )
    assert result.succeeded
    for key in ("owner/a", "owner/b"):
        item = await store.get(key)
        assert item is not None and item.create_revision == item.mod_revision == result.revision
    kept = await store.get("owner/kept")
    assert kept is not None and kept.create_revision < kept.mod_revision == result.revision


async def test_get_prefix_is_sorted_and_carries_the_store_revision(store: Store) -> None:
    for key in ("p/b", "p0", "p/é", "p/a/x", "q", "p", "p/a"):
        last = await store.put(key, key.encode())
    snapshot = await store.get_prefix("p/")
    assert [item.key for item in snapshot.items] == ["p/a", "p/a/x", "p/b", "p/é"]
    assert [item.value for item in snapshot.items] == [b"p/a", b"p/a/x", b"p/b", "p/é".encode()]
    assert snapshot.revision == last
    assert snapshot.get("p/b") is not None and snapshot.get("p0") is None
    # The revision is the store's, not that of the newest key read.
    assert (await store.get_prefix("p/a")).revision == last
    assert (await store.get_prefix("none/")).items == ()
    assert len((await store.get_prefix("")).items) == 7


async def test_get_prefix_reads_one_revision(backend: Backend) -> None:
    writer, reader = await backend.connect(), await backend.connect()
    done = asyncio.Event()

    async def write_pairs() -> None:
        for i in range(60):
            await writer.txn((), (Put("pair/a", b"%d" % i), Put("pair/b", b"%d" % i)))
        done.set()

    task = asyncio.create_task(write_pairs())
    reads = 0
    while not done.is_set() or reads < 5:
        snapshot = await reader.get_prefix("pair/")
        reads += 1
        if snapshot.items:
            a, b = snapshot.items
            assert a.value == b.value and a.mod_revision == b.mod_revision
            assert a.mod_revision <= snapshot.revision
    await task
    assert (await reader.get_prefix("pair/")).revision == await revision(writer)


# --- transactions -------------------------------------------------------------------


async def test_txn_runs_the_success_or_the_failure_branch(store: Store) -> None:
    won = await store.txn((Compare.absent("lock"),), (Put("lock", b"me"),), (Put("lost", b"1"),))
    assert won.succeeded and won.revision == await revision(store)
    lost = await store.txn((Compare.absent("lock"),), (Put("lock", b"you"),), (Put("lost", b"1"),))
    assert not lost.succeeded and lost.revision == won.revision + 1
    lock, loser = await store.get("lock"), await store.get("lost")
    assert lock is not None and lock.value == b"me"
    assert loser is not None and loser.mod_revision == lost.revision


async def test_compare_unchanged_detects_any_write_in_between(backend: Backend) -> None:
    mine, other = await backend.connect(), await backend.connect()
    assert (await mine.txn((Compare.unchanged(None, "k"),), (Put("k", b"1"),))).succeeded
    seen = await mine.get("k")
    await other.put("k", b"1")  # the same value, but a new revision
    assert not (await mine.txn((Compare.unchanged(seen),), (Put("k", b"2"),))).succeeded
    fresh = await mine.get("k")
    assert (await mine.txn((Compare.unchanged(fresh),), (Put("k", b"2"),))).succeeded
    await other.delete("k")
    assert not (await mine.txn((Compare.unchanged(fresh),), (Put("k", b"3"),))).succeeded
    assert (await mine.txn((Compare.absent("k"), Compare.absent("j")), ())).succeeded


async def test_all_operations_of_a_branch_apply_at_one_revision(store: Store) -> None:
    await store.put("old/1", b"1")
    await store.put("old/2", b"2")
    result = await store.txn(
        (), (Put("new/2", b"b"), Put("new/1", b"a"), Delete("old/", prefix=True))
    )
    snapshot = await store.get_prefix("")
    assert [item.key for item in snapshot.items] == ["new/1", "new/2"]
    assert {item.mod_revision for item in snapshot.items} == {result.revision}
    assert snapshot.revision == result.revision


async def test_concurrent_create_has_exactly_one_winner(backend: Backend) -> None:
    clients = [await backend.connect(), await backend.connect()]

    async def contend(n: int) -> bool:
        return await clients[n % 2].create("race/leader", b"%d" % n)

    results = await asyncio.gather(*(contend(n) for n in range(20)))
    assert results.count(True) == 1
    leader = await clients[0].get("race/leader")
    assert leader is not None and leader.value == b"%d" % results.index(True)


async def test_concurrent_compare_and_set_loses_no_update(backend: Backend) -> None:
    clients = [await backend.connect(), await backend.connect()]

    async def work(client: Store) -> int:
        return sum([await increment(client, "counter") for _ in range(10)])

    attempts = await asyncio.gather(*(work(client) for client in clients for _ in range(4)))
    counter = await clients[0].get("counter")
    assert counter is not None and int(counter.value) == 80
    assert sum(attempts) >= 80  # more when compares lost, which is the point


CHILD = """
import asyncio, json, sys
from vigil.store import Compare, Put, open_store

async def main(url, rounds):
    store = await open_store(url)
    try:
        await store.put("proc/ready", b"1")
        while await store.get("proc/go") is None:
            pass
        won = []
        for i in reversed(range(rounds)):  # the parent goes forward: they meet mid-way
            if await store.create("proc/race/%03d" % i, b"child"):
                won.append(i)
            while True:
                item = await store.get("proc/counter")
                value = int(item.value) if item else 0
                put = Put("proc/counter", str(value + 1).encode())
                if (await store.txn((Compare.unchanged(item, "proc/counter"),), (put,))).succeeded:
                    break
        print(json.dumps(won))
    finally:
        await store.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_compare_and_set_against_another_process(backend: Backend) -> None:
    store, rounds = await backend.connect(), 150
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        backend.url,
        str(rounds),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: _exists(store, "proc/ready"), "the child process to start")
        await store.put("proc/go", b"1")
        won = []
        for i in range(rounds):
            if await store.create(f"proc/race/{i:03}", b"parent"):
                won.append(i)
            await increment(store, "proc/counter")
        out, err = await asyncio.wait_for(child.communicate(), 60)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == 0, err.decode()
    child_won = json.loads(out)
    assert sorted(won + child_won) == list(range(rounds))  # each key: exactly one winner
    for i in range(rounds):
        item = await store.get(f"proc/race/{i:03}")
        assert item is not None and item.value == (b"parent" if i in won else b"child")
    counter = await store.get("proc/counter")
    assert counter is not None and int(counter.value) == 2 * rounds


async def _exists(store: Store, key: str) -> bool:
    return await store.get(key) is not None


async def _absent(store: Store, key: str) -> bool:
    return await store.get(key) is None


# --- leases -------------------------------------------------------------------------


async def test_leased_keys_vanish_when_the_lease_expires(backend: Backend) -> None:
    holder, observer = await backend.connect(), await backend.connect()
    start = time.monotonic()
    lease = await short_lease(backend, holder)
    assert lease.ttl >= backend.short_ttl
    await holder.put("leased/a", b"1", lease.id)
    await holder.put("plain", b"1")
    item = await observer.get("leased/a")
    assert item is not None and item.lease == lease.id
    # Nobody writes from now on: the store must expire the lease by itself.
    await eventually(lambda: _absent(observer, "leased/a"), "the leased key to expire")
    assert time.monotonic() - start >= lease.ttl * 0.9
    assert await observer.get("plain") is not None


async def test_keep_alive_extends_the_lease(backend: Backend) -> None:
    store = await backend.connect()
    lease = await short_lease(backend, store)
    await store.put("kept", b"1", lease.id)
    until = time.monotonic() + 4 * lease.ttl
    while time.monotonic() < until:
        assert await store.keep_alive(lease.id) >= lease.ttl
        assert await store.get("kept") is not None
        await asyncio.sleep(lease.ttl / 5)
    await eventually(lambda: _absent(store, "kept"), "the key to expire once renewals stop")


async def test_keep_alive_of_an_expired_lease_raises_lease_lost(backend: Backend) -> None:
    store = await backend.connect()
    lease = await short_lease(backend, store)
    await store.put("expiring", b"1", lease.id)
    await eventually(lambda: _absent(store, "expiring"), "the leased key to expire")
    with pytest.raises(LeaseLost):
        await store.keep_alive(lease.id)
    with pytest.raises(LeaseLost):
        await store.keep_alive(lease.id + 1_000_003)  # never granted


async def test_revoke_deletes_the_keys_at_one_revision(store: Store) -> None:
    lease = await store.grant_lease(30)
    await store.put("r/a", b"1", lease.id)
    await store.put("r/b", b"1", lease.id)
    before = await store.put("r/plain", b"1")
    await store.revoke_lease(lease.id)
    snapshot = await store.get_prefix("r/")
    assert [item.key for item in snapshot.items] == ["r/plain"]
    assert snapshot.revision == before + 1
    await store.revoke_lease(lease.id)  # idempotent
    with pytest.raises(LeaseLost):
        await store.keep_alive(lease.id)


async def test_put_bound_to_a_dead_lease_applies_nothing(store: Store) -> None:
    lease = await store.grant_lease(30)
    await store.revoke_lease(lease.id)
    before = await revision(store)
    with pytest.raises(LeaseLost):
        await store.txn((), (Put("d/plain", b"1"), Put("d/leased", b"1", lease.id)))
    with pytest.raises(LeaseLost):
        await store.put("d/leased", b"1", lease.id)
    assert (await store.get_prefix("d/")).items == ()
    assert await revision(store) == before


# --- watch --------------------------------------------------------------------------


async def test_watch_reports_every_change_in_order(backend: Backend) -> None:
    watcher, writer = await backend.connect(), await backend.connect()
    await writer.put("w/before", b"0")
    start = (await watcher.get_prefix("w/")).revision + 1
    r1 = await writer.put("w/a", b"1")
    await writer.put("other/x", b"1")  # outside the prefix
    r2 = await writer.txn((), (Put("w/d", b"4"), Put("w/c", b"3")))
    r3 = await writer.delete("w/before")
    r4 = await writer.delete("w/", prefix=True)
    async with watching(watcher.watch("w/", start)) as events:
        got = await take(events, 7)
        r5 = await writer.put("w/late", b"5")  # after the watch caught up
        got += await take(events, 1)
    put, delete = EventType.PUT, EventType.DELETE
    assert [(e.type, e.key, e.value, e.mod_revision) for e in got] == [
        (put, "w/a", b"1", r1),
        (put, "w/c", b"3", r2.revision),
        (put, "w/d", b"4", r2.revision),
        (delete, "w/before", b"", r3),
        (delete, "w/a", b"", r4),
        (delete, "w/c", b"", r4),
        (delete, "w/d", b"", r4),
        (put, "w/late", b"5", r5),
    ]


async def take_batches(batches: AsyncIterator[WatchBatch], count: int) -> list[WatchBatch]:
    """Batches of a watch until ``count`` events came, failing if they do not within
    DEADLINE."""
    got: list[WatchBatch] = []
    while sum(len(batch) for batch in got) < count:
        got.append(await asyncio.wait_for(anext(batches), DEADLINE))
    return got


def whole_revisions(batches: list[WatchBatch], written: dict[int, set[str]]) -> None:
    """Every batch holds every key each of its revisions wrote, sorted by (revision, key)."""
    for batch in batches:
        assert batch, "a batch is never empty"
        assert list(batch) == sorted(batch, key=lambda e: (e.mod_revision, e.key))
        for rev in {event.mod_revision for event in batch}:
            assert {e.key for e in batch if e.mod_revision == rev} == written[rev]


async def test_watch_batches_never_split_a_transaction(backend: Backend) -> None:
    watcher, writer = await backend.connect(), await backend.connect()
    start = await revision(writer) + 1
    written: dict[int, set[str]] = {}

    async def write(round_: int) -> None:
        for n in range(10):
            keys = [f"b/{round_}/{n}/{k}" for k in "zyxwvu"]  # out of order on purpose
            ops = [Put(k, b"v") for k in keys]
            ops.append(Put(f"elsewhere/{round_}/{n}", b"v"))  # outside the prefix
            result = await writer.txn((), ops)
            written[result.revision] = set(keys)
            await writer.put(f"b/{round_}/{n}/single", b"v")
            written[result.revision + 1] = {f"b/{round_}/{n}/single"}
            if n % 3 == 0:
                deleted = await writer.delete(f"b/{round_}/{n}/", prefix=True)
                written[deleted] = {*keys, f"b/{round_}/{n}/single"}

    await write(0)  # history: the watch starts behind and catches up
    expected = sum(len(keys) for keys in written.values())
    async with watching(watcher.watch_batches("b/", start)) as batches:
        got = await take_batches(batches, expected)
        await write(1)  # live: written while the watch waits for more
        expected = sum(len(keys) for keys in written.values())
        got += await take_batches(batches, expected - sum(len(b) for b in got))
    whole_revisions(got, written)
    events = [event for batch in got for event in batch]
    assert [e.mod_revision for e in events] == sorted(e.mod_revision for e in events)
    assert {e.mod_revision for e in events} == set(written)


async def test_a_multi_key_transaction_arrives_in_one_batch(backend: Backend) -> None:
    watcher, writer = await backend.connect(), await backend.connect()
    start = await revision(writer) + 1
    async with watching(watcher.watch_batches("t/", start)) as batches:
        first = await writer.put("t/before", b"0")
        (alone,) = await take_batches(batches, 1)
        together = await writer.txn(
            (), [Put("t/c", b"3"), Put("t/a", b"1"), Delete("t/before"), Put("t/b", b"2")]
        )
        (batch,) = await take_batches(batches, 4)
    assert [(e.key, e.mod_revision) for e in alone] == [("t/before", first)]
    assert [(e.type, e.key, e.mod_revision) for e in batch] == [
        (EventType.PUT, "t/a", together.revision),
        (EventType.PUT, "t/b", together.revision),
        (EventType.DELETE, "t/before", together.revision),
        (EventType.PUT, "t/c", together.revision),
    ]


async def test_watch_reports_deletes_by_lease_expiry(backend: Backend) -> None:
    store = await backend.connect()
    lease = await short_lease(backend, store)
    put_revision = await store.put("e/leased", b"1", lease.id)
    async with watching(store.watch("e/", put_revision)) as events:
        put, delete = await take(events, 2)  # nobody writes: the expiry alone must show
    assert (put.type, put.key, put.mod_revision) == (EventType.PUT, "e/leased", put_revision)
    assert (delete.type, delete.key, delete.value) == (EventType.DELETE, "e/leased", b"")
    assert delete.mod_revision > put_revision


async def test_watch_resumes_after_reconnecting_without_gap_or_duplicate(
    backend: Backend,
) -> None:
    writer, first = await backend.connect(), await backend.connect()
    start = await revision(writer) + 1
    written = [await writer.put(f"s/{i}", b"%d" % i) for i in range(5)]
    async with watching(first.watch("s/", start)) as events:
        seen = await take(events, 3)
    await first.close()  # the connection is lost
    written += [await writer.put(f"s/{i}", b"%d" % i) for i in range(5, 8)]
    second = await backend.connect()
    async with watching(second.watch("s/", seen[-1].mod_revision + 1)) as events:
        seen += await take(events, 5)
        sentinel = await writer.put("s/sentinel", b"")
        (last,) = await take(events, 1)  # nothing else (no duplicate) came before it
    assert [e.mod_revision for e in seen] == written
    assert [e.key for e in seen] == [f"s/{i}" for i in range(8)]
    assert (last.key, last.mod_revision) == ("s/sentinel", sentinel)


async def test_watch_from_compacted_history_raises_compacted(backend: Backend) -> None:
    store = await backend.connect()
    first = await store.put("c/k", b"first")
    for i in range(backend.history_limit + 20):
        last = await store.put("c/k", b"%d" % i)
    await backend.compact(last)
    with pytest.raises(Compacted) as info:
        async with watching(store.watch("c/", first)) as events:
            await anext(events)
    compacted = info.value.compact_revision
    assert first < compacted <= last
    # From the compaction point on, history is whole.
    async with watching(store.watch("c/", compacted)) as events:
        got = await take(events, last - compacted + 1)
    assert [e.mod_revision for e in got] == list(range(compacted, last + 1))


# --- lifecycle and failures ---------------------------------------------------------


async def test_a_closed_client_refuses_every_call(backend: Backend) -> None:
    client, other = await backend.connect(), await backend.connect()
    lease = await client.grant_lease(30)
    await client.close()
    await client.close()  # idempotent
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: client.get("k"),
        lambda: client.get_prefix(""),
        lambda: client.put("k", b"1"),
        lambda: client.txn((), ()),
        lambda: client.grant_lease(30),
        lambda: client.keep_alive(lease.id),
        lambda: client.revoke_lease(lease.id),
        lambda: anext(client.watch("", 1)),
    ]
    for call in calls:
        with pytest.raises(StoreError):
            await call()
    assert await other.put("k", b"1") > 0  # the store itself is fine
    await other.keep_alive(lease.id)  # closing does not revoke leases


async def test_a_watch_stops_with_an_error_when_its_client_closes(backend: Backend) -> None:
    client = await backend.connect()

    async def consume() -> None:
        async for _ in client.watch("", 1):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)  # let it start polling; not needed for correctness
    await client.close()
    with pytest.raises(StoreError):
        await asyncio.wait_for(task, DEADLINE)


async def test_a_stalled_store_raises_store_unavailable_in_time(backend: Backend) -> None:
    timeout = 0.5
    store = await backend.connect(request_timeout=timeout)
    lease = await store.grant_lease(30)
    async with backend.stall():
        calls: list[Callable[[], Awaitable[int]]] = [
            lambda: store.put("k", b"1"),
            lambda: store.keep_alive(lease.id),
        ]
        for call in calls:
            start = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                await call()
            assert time.monotonic() - start < timeout + 2.0
            assert backend.locator in str(info.value)
    assert await store.put("k", b"2") > 0  # usable again once the stall ends
    assert await store.keep_alive(lease.id) >= 1
