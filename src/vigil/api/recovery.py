"""API routes for recovery and failover: policies, confirm failover, maintenance stop, the
event log (with long-polling for ``--follow``), ``why`` and ``plan``."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Request

from vigil.agent.operations import Operations
from vigil.api import schemas
from vigil.api.auth import Who
from vigil.api.forward import forward_to
from vigil.engine import changes, failover
from vigil.errors import Compacted, Conflict, NotFound, StoreError
from vigil.model.records import EVENTS_PREFIX, ConfirmRecord, EventRecord, key
from vigil.store.base import Compare, EventType, Put, Store

router = APIRouter()


def _ops(request: Request) -> Operations:
    operations: Operations = request.app.state.operations
    return operations


@router.get("/v1/servers/{server}/policies", tags=["policies"])
async def server_policies(server: str, who: Who, request: Request) -> dict[str, Any]:
    cluster = await _ops(request).cluster()
    changes.require_server(cluster, server)
    policy = changes.update_server_policy(cluster, server, {}).server_policies[server]
    return dict(policy)


@router.patch(
    "/v1/servers/{server}/policies", response_model=schemas.OperationResult, tags=["policies"]
)
async def edit_server_policies(
    server: str, body: dict[str, Any], who: Who, request: Request
) -> schemas.OperationResult:
    """local_recovery, failover, confirm_failover, confirm_timeout, confirm_default,
    block_resource_failover, shutdown_strategy (null resets to the default)."""
    who.require("administrator", "change server policies")
    outcome = await _ops(request).configure(changes.update_server_policy, who.name, server, body)
    return schemas.OperationResult(**vars(outcome))


@router.patch(
    "/v1/resources/{tag}/policies", response_model=schemas.OperationResult, tags=["policies"]
)
async def edit_resource_policies(
    tag: str, body: dict[str, Any], who: Who, request: Request
) -> schemas.OperationResult:
    """local_recovery, failover, recovery_limit, recovery_period, quick/deep_check_interval;
    on a hierarchy's root also switchback, automatic_failover, n_plus_one."""
    who.require("administrator", "change resource policies")
    outcome = await _ops(request).configure(changes.update_policies, who.name, tag, body)
    return schemas.OperationResult(**vars(outcome))


@router.post("/v1/hierarchies/{tag}/confirm-failover", tags=["hierarchies"])
async def confirm_failover(
    tag: str, body: schemas.ConfirmFailover, who: Who, request: Request
) -> dict[str, str]:
    """Answer a failover waiting for confirmation: proceed (yes) or block (no)."""
    who.require("operator", "confirm failovers")
    operations = _ops(request)
    cluster = await operations.cluster()
    changes.require_resource(cluster, tag)
    name = cluster.hierarchy(tag).name
    item = await operations.store.get(key("confirm", name))
    if item is None:
        raise NotFound(f"no failover of {name} is waiting for confirmation")
    pending = ConfirmRecord.model_validate_json(item.value)
    answered = pending.model_copy(update={"decision": body.proceed})
    done = await operations.store.txn([Compare.unchanged(item)], [Put(item.key, answered.dump())])
    if not done.succeeded:
        raise Conflict(
            f"the failover of {name} changed meanwhile: look at 'vigil status' and answer again"
        )
    verb = "confirmed" if body.proceed else "refused"
    return {"summary": f"failover of {name} to {pending.target} {verb} by {who.name}"}


@router.post("/v1/servers/{server}/stop", tags=["servers"])
async def stop_agent(server: str, body: schemas.StopAgent, who: Who, request: Request) -> Any:
    """Stop this server's agent (``leave_resources``: maintenance, they keep running)."""
    who.require("administrator", "stop agents")
    forwarded = await forward_to(_ops(request), server, request)
    if forwarded is not None:
        return forwarded
    request.app.state.stop_agent(body.leave_resources)
    mode = (
        "maintenance: resources left running"
        if body.leave_resources
        else "its hierarchies go out of service"
    )
    return {"summary": f"the agent of {server} is stopping ({mode})"}


@router.get("/v1/events", response_model=list[schemas.EventView], tags=["status"])
async def events(
    who: Who, request: Request, limit: int = 200, after: str = "", wait: float = 0.0
) -> list[schemas.EventView]:
    """The newest ``limit`` events, or with ``after`` (an event id) those after it, waiting
    up to ``wait`` seconds for one to arrive (for ``vigil events --follow``): on a watch of
    the event log, so a new event is answered as soon as the store reports it."""
    store = _ops(request).store
    snapshot = await store.get_prefix(EVENTS_PREFIX)
    items = [(kv.key, kv.value) for kv in snapshot.items if _event_id(kv.key) > after]
    if items or wait <= 0:
        return [_event(k, v) for k, v in items[-limit:]]
    # a task and asyncio.wait: Python 3.11's timeouts mishandle a cancellation (the client
    # went away) that coincides with the end of the wait
    waiting = asyncio.ensure_future(_next_events(store, snapshot.revision + 1, after))
    try:
        await asyncio.wait((waiting,), timeout=min(wait, 60.0))
    finally:
        if not waiting.done():
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
    if waiting.cancelled():
        return []
    items = waiting.result()
    return [_event(k, v) for k, v in items[-limit:]]


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


def _event(full_key: str, value: bytes) -> schemas.EventView:
    record = EventRecord.model_validate_json(value)
    return schemas.EventView(
        id=_event_id(full_key), **record.model_dump(exclude={"schema_version"})
    )


@router.get("/v1/hierarchies/{tag}/why", tags=["hierarchies"])
async def why(tag: str, who: Who, request: Request) -> dict[str, Any]:
    """The decisions and events that put the hierarchy of ``tag`` where it is now."""
    operations = _ops(request)
    cluster = await operations.cluster()
    changes.require_resource(cluster, tag)
    hierarchy = cluster.hierarchy(tag)
    intent = cluster.intent(hierarchy)
    snapshot = await operations.store.get_prefix(EVENTS_PREFIX)
    related = [
        _event(kv.key, kv.value)
        for kv in snapshot.items
        if _concerns(EventRecord.model_validate_json(kv.value), hierarchy.tags)
    ]
    return {
        "hierarchy": hierarchy.name,
        "resources": sorted(hierarchy.tags),
        "wanted_on": intent.server if intent else None,
        "because": intent.reason if intent else "never brought in service",
        "failover_origin": intent.origin if intent else None,
        "tried": list(intent.tried) if intent else [],
        "owners": sorted(cluster.owner_of(hierarchy)),
        "events": [e.model_dump() for e in related[-100:]],
    }


def _concerns(event: EventRecord, tags: frozenset[str]) -> bool:
    if event.hierarchy in tags or event.tag in tags:
        return True
    words = set(event.message.replace(":", " ").replace(",", " ").split())
    return bool(words & tags)


@router.get("/v1/plan", tags=["status"])
async def plan(fail: str, who: Who, request: Request) -> list[dict[str, Any]]:
    """What the engine would do if server ``fail`` died now."""
    cluster = await _ops(request).cluster()
    changes.require_server(cluster, fail)
    return [
        {"hierarchy": name, "target": target, "why": reason}
        for name, target, reason in failover.what_if_down(cluster, fail)
    ]
