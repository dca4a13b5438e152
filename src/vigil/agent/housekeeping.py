"""Keeping the store tidy: the cluster event log is bounded.

One agent does it at a time (the alive server with the first name), soon after it starts
and then every few minutes: events beyond the newest ``KEEP_EVENTS`` are deleted, oldest
first, in batches small enough for etcd's transaction limit (128 operations by default),
and the event log an earlier version kept under ``/vigil/events/`` is deleted (one range
delete; the cluster read has ignored it since).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vigil.errors import StoreError
from vigil.model.cluster import Cluster
from vigil.model.records import EVENTS_PREFIX, LEGACY_EVENTS_PREFIX
from vigil.store.base import Delete, Store

log = logging.getLogger("vigil.agent")

KEEP_EVENTS = 10_000
#: the first round, after the agent has started (and knows who is alive)
FIRST_ROUND = 30.0
INTERVAL = 300.0
BATCH = 100


async def prune_events(store: Store, keep: int = KEEP_EVENTS) -> int:
    """Delete all but the newest ``keep`` events; how many were deleted."""
    snapshot = await store.get_prefix(EVENTS_PREFIX)
    doomed = [item.key for item in snapshot.items[: max(0, len(snapshot.items) - keep)]]
    for start in range(0, len(doomed), BATCH):
        await store.txn((), [Delete(k) for k in doomed[start : start + BATCH]])
    return len(doomed)


async def drop_legacy_events(store: Store) -> bool:
    """Delete the event log of an earlier version (``/vigil/events/``), in one revision;
    True when there was one. Idempotent."""
    before = await store.get_prefix(LEGACY_EVENTS_PREFIX)
    if not before.items:
        return False
    await store.delete(LEGACY_EVENTS_PREFIX, prefix=True)
    return True


async def run(store: Store, me: str, cluster: Callable[[], Cluster]) -> None:
    await asyncio.sleep(FIRST_ROUND)
    while True:
        alive = sorted(name for name, server in cluster().servers.items() if server.alive)
        if alive and alive[0] == me:
            await _tidy(store)
        await asyncio.sleep(INTERVAL)


async def _tidy(store: Store) -> None:
    try:
        if await drop_legacy_events(store):
            log.info("deleted the event log of an earlier version (%s)", LEGACY_EVENTS_PREFIX)
        pruned = await prune_events(store)
    except StoreError as exc:
        log.warning("could not prune the event log: %s", exc)
        return
    if pruned:
        log.info("pruned %d old events from the cluster event log", pruned)
