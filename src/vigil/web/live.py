"""Live updates: server-sent events that tell every open page "the cluster changed".

The agent's ``ClusterCache`` calls its listeners with every batch its store watch applies
(``ClusterCache.subscribe``). ``LiveFeed`` listens once per agent, and at most every
``INTERVAL`` seconds works out a digest of what a person sees (the status view without its
moving parts: revisions, heartbeat times); when the digest changed, every open stream gets
a ``change`` event. New events in the cluster's event log (``/vigil-events/``, outside the
cluster the cache holds) are watched the same way and sent as ``events``. A page then asks
for the fragments that show what changed (htmx: ``hx-trigger="vigil:change from:body"``):
pushed by the store's watch, never polled.

A stream ends when its session expires, when the browser goes away, and when the agent
stops (``end_streams``: uvicorn waits for open responses before it stops, and an event
stream never ends by itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from vigil.agent.cache import ClusterCache
from vigil.api import views
from vigil.api.sessions import request_session
from vigil.errors import Compacted, StoreError
from vigil.model.cluster import Cluster
from vigil.model.records import EVENTS_PREFIX
from vigil.store.base import Store, WatchBatch
from vigil.web.render import operations_of

log = logging.getLogger("vigil.web")
router = APIRouter()

#: at most one digest (and one push) per this many seconds
INTERVAL = 0.1
#: a comment line this often keeps proxies from closing a quiet stream
KEEPALIVE = 15.0


def digest(cluster: Cluster) -> str:
    """What a person sees of ``cluster``, as a hash: the status view without revisions and
    heartbeat times, with pending failover confirmations and stopped servers."""
    view = views.status_view(cluster).model_dump()
    view.pop("revision")
    for path in view["comm_paths"]:
        for end in path["ends"]:
            end.pop("last_heartbeat")
    extra = {
        "confirm": {n: [c.target, c.origin, c.decision] for n, c in cluster.confirmations.items()},
        "stopped": {s: str(m) for s, m in cluster.stopped.items()},
    }
    text = json.dumps([view, extra], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class LiveFeed:
    """One agent's source of ``change`` and ``events`` notices for its open streams."""

    def __init__(self, cache: ClusterCache, store: Store) -> None:
        self.cache = cache
        self.store = store
        self._queues: set[asyncio.Queue[str]] = set()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._digest = ""
        self.closed = asyncio.Event()
        cache.subscribe(self._changed)

    def _changed(self, batch: WatchBatch | None) -> None:
        self._dirty.set()

    def _start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._follow_cluster(), name="web live cluster"),
                asyncio.create_task(self._follow_events(), name="web live events"),
            ]

    @contextlib.contextmanager
    def listen(self) -> Any:
        """A queue of notices for one stream, for as long as the ``with`` lasts."""
        self._start()
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=16)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    def current(self) -> str:
        """The digest of the newest view the feed has seen (worked out now if none yet)."""
        if not self._digest:
            self._digest = digest(self.cache.cluster)
        return self._digest

    def _publish(self, notice: str) -> None:
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):  # a slow page: it asks afresh anyway
                queue.put_nowait(notice)

    async def _follow_cluster(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                now = digest(self.cache.cluster)
            except Exception:  # a view that cannot be shown must not end the feed
                log.exception("web live feed: the status view failed")
                now = ""
            if now != self._digest:
                self._digest = now
                self._publish("change")
            await asyncio.sleep(INTERVAL)

    async def _follow_events(self) -> None:
        revision = 0
        while True:
            try:
                if revision == 0:
                    revision = (await self.store.get_prefix(EVENTS_PREFIX)).revision + 1
                batches = self.store.watch_batches(EVENTS_PREFIX, revision)
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        revision = batch[-1].mod_revision + 1
                        self._publish("events")
            except Compacted:
                revision = 0
            except StoreError as exc:
                log.debug("web live feed: event watch interrupted: %s", exc)
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        self.closed.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def feed_of(app: FastAPI) -> LiveFeed:
    """The app's feed, made on first use."""
    feed = getattr(app.state, "live_feed", None)
    if not isinstance(feed, LiveFeed):
        operations = app.state.operations
        feed = LiveFeed(operations.cache, operations.store)
        app.state.live_feed = feed
    return feed


def end_streams(app: FastAPI) -> None:
    """End every open stream now (the agent is stopping; signal-handler safe)."""
    feed = getattr(app.state, "live_feed", None)
    if isinstance(feed, LiveFeed):
        feed.closed.set()
        for task in feed._tasks:
            task.cancel()


async def _stream(feed: LiveFeed, expires: float) -> AsyncIterator[str]:
    """The stream: first the digest of the view now (a page rendered before it differs
    asks afresh), then each notice, with the digest when it is a ``change``."""
    with feed.listen() as queue:
        yield f"retry: 1000\nevent: change\ndata: {feed.current()}\n\n"
        closed = asyncio.ensure_future(feed.closed.wait())
        try:
            while not feed.closed.is_set():
                left = expires - time.time()
                if left <= 0:
                    yield "event: expired\ndata: log in again\n\n"
                    return
                getting = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    (getting, closed),
                    timeout=min(KEEPALIVE, left),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getting in done:
                    notice = getting.result()
                    data = feed.current() if notice == "change" else notice
                    yield f"event: {notice}\ndata: {data}\n\n"
                else:
                    getting.cancel()
                    yield ": keep-alive\n\n"
        finally:
            closed.cancel()


@router.get("/ui/live", include_in_schema=False)
async def live(request: Request) -> Response:
    """The event stream of one page (text/event-stream), for a logged-in person."""
    record = await request_session(request)
    if record is None:
        return Response("log in first", status_code=401)
    operations = operations_of(request)
    if not operations.cache.loaded:
        await operations.cache.reload()
    feed = feed_of(request.app)
    return StreamingResponse(
        _stream(feed, record.expires),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )
