"""Keeping the store tidy: the cluster event log is bounded.

One agent does it at a time (the alive server with the first name), every few minutes:
events beyond the newest ``KEEP_EVENTS`` are deleted, oldest first, in batches small
enough for etcd's transaction limit (128 operations by default).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vigil.errors import StoreError
from vigil.model.cluster import Cluster
from vigil.model.records import key
from vigil.store.base import Delete, Store

log = logging.getLogger("vigil.agent")

KEEP_EVENTS = 10_000
INTERVAL = 300.0
BATCH = 100


async def prune_events(store: Store, keep: int = KEEP_EVENTS) -> int:
    """Delete all but the newest ``keep`` events; how many were deleted."""
    snapshot = await store.get_prefix(key("events", ""))
    doomed = [item.key for item in snapshot.items[: max(0, len(snapshot.items) - keep)]]
    for start in range(0, len(doomed), BATCH):
        await store.txn((), [Delete(k) for k in doomed[start : start + BATCH]])
    return len(doomed)


async def run(store: Store, me: str, cluster: Callable[[], Cluster]) -> None:
    while True:
        await asyncio.sleep(INTERVAL)
        alive = sorted(name for name, server in cluster().servers.items() if server.alive)
        if not alive or alive[0] != me:
            continue
        try:
            pruned = await prune_events(store)
        except StoreError as exc:
            log.warning("could not prune the event log: %s", exc)
            continue
        if pruned:
            log.info("pruned %d old events from the cluster event log", pruned)
