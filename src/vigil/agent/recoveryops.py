"""The operations of recovery and failover that the API offers beside ``Operations``':
answering a failover that waits for confirmation, and reading the cluster event log (the
newest events, waiting for the next ones, the events behind where a hierarchy is).

With ``Operations`` and ``MailOperations``, the API's only way to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from vigil.agent.operations import Operations
from vigil.agent.storeio import event_operation
from vigil.engine import changes
from vigil.errors import Compacted, Conflict, NotFound, StoreError
from vigil.model.cluster import Intent
from vigil.model.records import EVENTS_PREFIX, ConfirmRecord, EventRecord, key
from vigil.store.base import Compare, EventType, Put, Store

#: the longest a request may wait for the next event (seconds)
LONGEST_WAIT = 60.0


@dataclass(frozen=True)
class LoggedEvent:
    """One entry of the cluster event log; ``id`` sorts by time."""

    id: str
    record: EventRecord


@dataclass(frozen=True)
class Why:
    """Where a hierarchy is wanted, why, and the events that concern it (oldest first)."""

    hierarchy: str
    resources: list[str]
    intent: Intent | None
    owners: list[str]
    events: list[LoggedEvent]


class RecoveryOperations:
    def __init__(self, operations: Operations) -> None:
        self.operations = operations
        self.store: Store = operations.store

    async def confirm_failover(self, tag: str, proceed: bool, user: str) -> str:
        """Answer the failover of ``tag``'s hierarchy that waits for an operator: proceed
        or block. The answer and its event are written in one transaction, only if the
        question is still the one read. ``NotFound``: no question; ``Conflict``: it
        changed meanwhile."""
        cluster = await self.operations.cluster()
        changes.require_resource(cluster, tag)
        name = cluster.hierarchy(tag).name
        item = await self.store.get(key("confirm", name))
        if item is None:
            raise NotFound(f"no failover of {name} is waiting for confirmation")
        pending = ConfirmRecord.model_validate_json(item.value)
        answered = pending.model_copy(update={"decision": proceed})
        verb = "confirmed" if proceed else "refused"
        summary = f"failover of {name} to {pending.target} {verb} by {user}"
        event = event_operation(
            self.operations.server, "failover-answered", summary, hierarchy=name
        )
        done = await self.store.txn(
            [Compare.unchanged(item)], [Put(item.key, answered.dump()), event]
        )
        if not done.succeeded:
            raise Conflict(
                f"the failover of {name} changed meanwhile: look at 'vigil status' and answer again"
            )
        return summary

    async def events(self, limit: int, after: str = "", wait: float = 0.0) -> list[LoggedEvent]:
        """The newest ``limit`` events, or with ``after`` (an event id) those after it,
        waiting up to ``wait`` seconds (at most ``LONGEST_WAIT``) for one to arrive: on a
        watch of the event log, so a new event is answered as soon as the store has it."""
        snapshot = await self.store.get_prefix(EVENTS_PREFIX)
        items = [(kv.key, kv.value) for kv in snapshot.items if _event_id(kv.key) > after]
        if items or wait <= 0:
            return [_logged(k, v) for k, v in items[-limit:]]
        # a task and asyncio.wait: Python 3.11's timeouts mishandle a cancellation (the
        # client went away) that coincides with the end of the wait
        waiting = asyncio.ensure_future(_next_events(self.store, snapshot.revision + 1, after))
        try:
            await asyncio.wait((waiting,), timeout=min(wait, LONGEST_WAIT))
        finally:
            if not waiting.done():
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
        if waiting.cancelled():
            return []
        return [_logged(k, v) for k, v in waiting.result()[-limit:]]

    async def why(self, tag: str, limit: int = 100) -> Why:
        """The decisions and events that put the hierarchy of ``tag`` where it is now."""
        cluster = await self.operations.cluster()
        changes.require_resource(cluster, tag)
        hierarchy = cluster.hierarchy(tag)
        snapshot = await self.store.get_prefix(EVENTS_PREFIX)
        logged = [_logged(kv.key, kv.value) for kv in snapshot.items]
        related = [e for e in logged if _concerns(e.record, hierarchy.tags)]
        return Why(
            hierarchy.name,
            sorted(hierarchy.tags),
            cluster.intent(hierarchy),
            sorted(cluster.owner_of(hierarchy)),
            related[-limit:],
        )


async def _next_events(store: Store, revision: int, after: str) -> list[tuple[str, bytes]]:
    """The first events written from ``revision`` on whose id sorts after ``after``. A
    watch that breaks is read again from where it was (the caller bounds the wait)."""
    while True:
        batches = store.watch_batches(EVENTS_PREFIX, revision)
        try:
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    revision = batch[-1].mod_revision + 1
                    new = [
                        (e.key, e.value)
                        for e in batch
                        if e.type is EventType.PUT and _event_id(e.key) > after
                    ]
                    if new:
                        return new
        except Compacted:
            snapshot = await store.get_prefix(EVENTS_PREFIX)
            new = [(kv.key, kv.value) for kv in snapshot.items if _event_id(kv.key) > after]
            if new:
                return new
            revision = snapshot.revision + 1
        except StoreError:
            await asyncio.sleep(0.5)


def _event_id(full_key: str) -> str:
    return full_key[len(EVENTS_PREFIX) :]


def _logged(full_key: str, value: bytes) -> LoggedEvent:
    return LoggedEvent(_event_id(full_key), EventRecord.model_validate_json(value))


def _concerns(event: EventRecord, tags: frozenset[str]) -> bool:
    if event.hierarchy in tags or event.tag in tags:
        return True
    words = set(event.message.replace(":", " ").replace(",", " ").split())
    return bool(words & tags)
