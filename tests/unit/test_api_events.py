"""The event log through the API: read from its own prefix, long-polled on a watch; and the
status from the agent's cached view (the app over httpx's ASGI transport, a real embedded
store in a scratch directory)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from vigil.agent.cache import ClusterCache
from vigil.agent.config import TokenEntry, TokensFile
from vigil.agent.kitrunner import KitRunner
from vigil.agent.operations import Operations
from vigil.agent.storeio import event_operation
from vigil.api.app import create_app
from vigil.api.auth import Authenticator
from vigil.kits.registry import KitRegistry
from vigil.model.records import EventRecord, ResourceRecord, ServerRecord, key
from vigil.store.base import Store
from vigil.store.embedded import EmbeddedStore

TOKEN = "events-test-token-0123456789"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await EmbeddedStore.open(str(tmp_path / "store.db"))
    yield opened
    await opened.close()


@pytest.fixture
async def api(
    store: Store, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, ClusterCache]]:
    cache = ClusterCache(store)
    await cache.reload()
    watch = asyncio.create_task(cache.run())
    runner = KitRunner(KitRegistry({}), "n1", tmp_path, ())
    tokens = TokensFile(token=[TokenEntry(name="t", role="guest", token=TOKEN)])
    app = create_app(Operations(store, runner, "n1", cache), Authenticator(tokens))
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers=headers
    ) as client:
        yield client, cache
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)


async def write_event(store: Store, message: str) -> None:
    await store.txn((), (event_operation("n2", "test", message, hierarchy="web"),))


async def test_events_come_from_their_own_prefix_and_the_old_one_is_not_shown(
    store: Store, api: tuple[httpx.AsyncClient, ClusterCache]
) -> None:
    client, _ = api
    old = EventRecord(at=1.0, server="n1", kind="test", message="from an earlier version")
    await store.put(key("events", "00000000000000000001-n1-0"), old.dump())
    for n in range(5):
        await write_event(store, f"event {n}")
    answer = (await client.get("/v1/events", params={"limit": 3})).json()
    assert [e["message"] for e in answer] == ["event 2", "event 3", "event 4"]
    after = answer[0]["id"]
    answer = (await client.get("/v1/events", params={"after": after})).json()
    assert [e["message"] for e in answer] == ["event 3", "event 4"]


async def test_a_waiting_request_is_answered_by_the_next_event(
    store: Store, api: tuple[httpx.AsyncClient, ClusterCache]
) -> None:
    client, _ = api
    await write_event(store, "before")
    last = (await client.get("/v1/events")).json()[-1]["id"]
    waiting = asyncio.create_task(client.get("/v1/events", params={"after": last, "wait": 10}))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    written = time.monotonic()
    await write_event(store, "next")
    answer = (await asyncio.wait_for(waiting, 10)).json()
    assert [e["message"] for e in answer] == ["next"]
    # on the watch, not at the end of the 10 s wait (the margin is for a loaded machine)
    assert time.monotonic() - written < 5.0
    start = time.monotonic()
    answer = (await client.get("/v1/events", params={"after": "~", "wait": 0.3})).json()
    assert answer == [] and time.monotonic() - start >= 0.3


async def test_status_shows_the_cached_view_and_a_change_is_in_it_when_answered(
    store: Store, api: tuple[httpx.AsyncClient, ClusterCache]
) -> None:
    client, cache = api
    await store.put(key("servers", "n1"), ServerRecord(name="n1", api_url="http://n1").dump())
    web = ResourceRecord(tag="web", kit="app", instances={"n1": 1}).dump()
    revision = await store.put(key("resources", "web"), web)
    while cache.revision < revision:
        await cache.changed(cache.revision, 5.0)
    status = (await client.get("/v1/status")).json()
    assert status["revision"] == revision
    assert [h["name"] for h in status["hierarchies"]] == ["web"]
    assert (await client.get("/v1/resources/web")).json()["tag"] == "web"
