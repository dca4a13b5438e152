"""Writing where a hierarchy is wanted, as the engine decided: failover, cascading,
switchback, confirmations. Every write is a compare-and-set on the intent revisions the
decision was based on, so two agents deciding at once cannot both win."""

from __future__ import annotations

import logging
import time

from vigil.agent.storeio import event_operation
from vigil.errors import StoreError
from vigil.model.cluster import Cluster, Hierarchy
from vigil.model.records import ConfirmRecord, IntentRecord, key
from vigil.store.base import Compare, Delete, Operation, Put, Store

log = logging.getLogger("vigil.agent")


async def move(
    store: Store,
    cluster: Cluster,
    hierarchy: Hierarchy,
    server: str | None,
    *,
    me: str,
    reason: str,
    kind: str,
    origin: str | None = None,
    tried: tuple[str, ...] = (),
) -> bool:
    """Want ``hierarchy`` on ``server`` (None: out of service) if its intent is still the one
    in ``cluster``; records the decision as an event of ``kind``. True when written."""
    compares = [
        Compare(key("intent", tag), cluster.intents[tag].revision if tag in cluster.intents else 0)
        for tag in sorted(hierarchy.tags)
    ]
    record = IntentRecord(
        server=server,
        reason=reason,
        requested_by=f"vigil on {me}",
        at=time.time(),
        origin=origin,
        tried=list(tried),
    ).dump()
    ops: list[Operation] = [
        *(Put(key("intent", tag), record) for tag in sorted(hierarchy.tags)),
        Delete(key("confirm", hierarchy.name)),
        event_operation(me, kind, reason, hierarchy=hierarchy.name),
    ]
    try:
        done = (await store.txn(compares, ops)).succeeded
    except StoreError as exc:
        log.warning("could not record %s of %s: %s", kind, hierarchy.name, exc)
        return False
    if done:
        log.info("%s", reason)
    return done


async def ask_confirmation(
    store: Store, hierarchy: Hierarchy, *, me: str, origin: str, reason: str
) -> None:
    """Create a pending failover confirmation (once) and record the question as an event."""
    record = ConfirmRecord(target=me, origin=origin, since=time.time()).dump()
    confirm_key = key("confirm", hierarchy.name)
    ops = [
        Put(confirm_key, record),
        event_operation(me, "failover-confirm", reason, hierarchy=hierarchy.name),
    ]
    try:
        existing = await store.get(confirm_key)
        if existing is not None:
            old = ConfirmRecord.model_validate_json(existing.value)
            if (old.target, old.origin) == (me, origin):
                return  # already asked about this very failover
        # a question about another failover is replaced, not reused
        await store.txn([Compare.unchanged(existing, confirm_key)], ops)
    except StoreError as exc:
        log.warning("could not ask for confirmation of %s: %s", hierarchy.name, exc)
