"""The cluster as one agent sees it: read once, then kept current by a watch (as Patroni's
KVCache).

``ClusterCache.reload`` reads the whole cluster (``/vigil/``) with ``get_prefix``;
``ClusterCache.run`` then applies what the store's watch reports, one batch of whole
revisions at a time (``Store.watch_batches``), so the cache always holds the cluster as it
was at one revision, never half a transaction. ``cluster`` hands out an immutable
``Cluster`` of the newest revision applied, built on first use after a change and only
from what changed (``vigil.model.assembly``): a value is parsed once per revision of its
key, so neither a new view nor a reload costs the whole cluster again.

Freshness: the cache lags the store by the watch's delay (a poll interval on the embedded
store, a network round trip on etcd). Decisions taken on it are safe all the same: every
claim, move and lease ending is a compare-and-set on the revisions it was decided on, so a
decision on a stale view fails and is taken again on a newer one. Where a fresh,
linearizable view is needed (at start, before leaving, before validating an operator's
change), ``reload`` reads the store again.

Recovery: a watch whose history was compacted (``Compacted``) reloads and watches from
there; a broken watch (``StoreError``) resumes from the revision after the last one applied;
a watch that reports nothing for ``quiet_limit`` seconds is restarted (in a running cluster
this agent's own heartbeat changes ``alive/`` every renew interval, so a silent stream is
a stuck one).

Waiting: ``changed(since, timeout)`` returns once the cache holds a revision newer than
``since``; listeners (``subscribe``) are called with every batch as it is applied, which is
how the agent's cycle times heartbeats and wakes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from vigil.errors import Compacted, StoreError
from vigil.model.assembly import ClusterBuilder
from vigil.model.cluster import Cluster
from vigil.model.records import PREFIX
from vigil.store.base import EventType, Snapshot, Store, WatchBatch

log = logging.getLogger("vigil.agent")

#: a listener gets each batch of changes applied, or None after a reload (anything may
#: have changed)
Listener = Callable[[WatchBatch | None], None]

#: a watch that reports nothing for this long is restarted (see the module docstring)
QUIET_LIMIT = 5.0
#: after a broken watch, wait this long before watching again
RETRY_INTERVAL = 0.5


class ClusterCache:
    """One agent's view of the cluster, kept current by a watch. Feed it with ``run``."""

    def __init__(
        self,
        store: Store,
        *,
        quiet_limit: float = QUIET_LIMIT,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        self.store = store
        self.quiet_limit = quiet_limit
        self.retry_interval = retry_interval
        self._builder = ClusterBuilder()
        self._revision = 0
        self._loaded = False
        self._cluster = Cluster()
        self._built = True  # whether _cluster is the view of _revision
        self._changed = asyncio.Event()
        self._listeners: list[Listener] = []
        self._last_batch = 0.0  # loop time of the watch's last batch

    @property
    def loaded(self) -> bool:
        """Whether the cluster was read at least once."""
        return self._loaded

    @property
    def revision(self) -> int:
        """The store revision the cache holds the cluster at."""
        return self._revision

    @property
    def cluster(self) -> Cluster:
        """The newest view: every change up to ``revision`` applied, as one immutable
        ``Cluster``. Empty until the first ``reload``. Never waits, never fails."""
        if not self._built:
            self._cluster = self._builder.build(self._revision)
            self._built = True
        return self._cluster

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with each batch of changes just applied (``cluster`` has
        them), or with None after a reload. Listeners run in the watch's task: they must be
        quick; what they raise is logged and ignored."""
        self._listeners.append(listener)

    async def reload(self) -> Cluster:
        """Read the whole cluster again (a linearizable ``get_prefix``) and hold it, unless
        the watch has meanwhile gone further; returns the newest view, at least as new as
        the read. Raises ``StoreError`` (``StoreUnavailable``...) when the store fails."""
        self._take(await self.store.get_prefix(PREFIX))
        return self.cluster

    async def changed(self, since: int, timeout: float) -> bool:
        """Wait until the cache holds a revision newer than ``since``: True, or False when
        ``timeout`` seconds passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._revision <= since:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            waiting = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait((waiting,), timeout=remaining)
            finally:
                waiting.cancel()
        return True

    async def run(self) -> None:
        """Keep the cache current until cancelled: read the cluster (unless already read),
        then apply the watch from the next revision. Recovers by itself (see the module
        docstring); never returns.

        The watch runs in a task of its own, stopped from here when it is quiet for too
        long: no ``asyncio.timeout`` or ``wait_for`` in this task, whose cancellation
        handling Python 3.11 gets wrong when a timeout and a result coincide."""
        reload = not self._loaded
        while True:
            try:
                if reload:
                    await self.reload()
                    reload = False
                await self._follow_while_lively()
            except Compacted as exc:
                log.info("cluster watch: %s", exc)
                reload = True
            except StoreError as exc:
                log.warning("store watch interrupted: %s", exc)
                await asyncio.sleep(self.retry_interval)
            except Exception:  # a bug must not freeze the view for good
                log.exception("cluster watch failed; watching again")
                await asyncio.sleep(self.retry_interval)

    # --- applying changes --------------------------------------------------------------

    async def _follow_while_lively(self) -> None:
        """Run the watch until it raises (re-raised here) or is quiet for ``quiet_limit``
        seconds (stopped; returns)."""
        loop = asyncio.get_running_loop()
        self._last_batch = loop.time()
        follower = asyncio.create_task(self._follow(), name="cluster watch")
        try:
            while not follower.done():
                quiet_until = self._last_batch + self.quiet_limit
                await asyncio.wait((follower,), timeout=max(0.0, quiet_until - loop.time()))
                if not follower.done() and loop.time() >= self._last_batch + self.quiet_limit:
                    log.debug("cluster watch quiet for %gs: watching again", self.quiet_limit)
                    return
            follower.result()  # raises what ended it
        finally:
            if not follower.done():
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)

    async def _follow(self) -> None:
        """Apply the watch from the revision after the one held, until it raises."""
        batches = self.store.watch_batches(PREFIX, self._revision + 1)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                self._last_batch = asyncio.get_running_loop().time()
                self._apply(batch)

    def _apply(self, batch: WatchBatch) -> None:
        """Apply one batch of whole revisions; what a reload already holds is skipped."""
        fresh = tuple(event for event in batch if event.mod_revision > self._revision)
        if not fresh:
            return
        for event in fresh:
            if event.type is EventType.PUT:
                self._builder.put(event.key, event.value, event.mod_revision)
            else:
                self._builder.delete(event.key)
        self._advance(fresh[-1].mod_revision, fresh)

    def _take(self, snapshot: Snapshot) -> None:
        if self._loaded and snapshot.revision <= self._revision:
            return  # the watch has already brought the cache this far, or further
        self._builder.load(
            (kv.key, kv.value, kv.create_revision, kv.mod_revision) for kv in snapshot.items
        )
        self._loaded = True
        self._advance(snapshot.revision, None)

    def _advance(self, revision: int, batch: WatchBatch | None) -> None:
        self._revision = revision
        self._built = False
        for listener in self._listeners:
            try:
                listener(batch)
            except Exception:
                log.exception("a cluster cache listener failed")
        self._changed.set()
        self._changed = asyncio.Event()
