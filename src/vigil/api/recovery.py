"""API routes for recovery and failover: policies, confirm failover, maintenance stop, the
event log (with long-polling for ``--follow``), ``why`` and ``plan``.

The web UI calls ``server_policies``, ``events``, ``why`` and ``plan`` as functions, with
its own request: they take the request, not dependencies."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

from vigil.agent.recoveryops import LoggedEvent
from vigil.api import schemas
from vigil.api.auth import Who
from vigil.api.deps import Ops, RecoveryOps, operations_of, recovery_of
from vigil.api.forward import forward_to
from vigil.api.results import result
from vigil.engine import changes, failover

router = APIRouter()


@router.get(
    "/v1/servers/{server}/policies", response_model=schemas.ServerPolicyView, tags=["policies"]
)
async def server_policies(server: str, who: Who, request: Request) -> dict[str, Any]:
    """Every policy of ``server``, with its value (the default where none was set)."""
    cluster = await operations_of(request).cluster()
    changes.require_server(cluster, server)
    view = schemas.ServerPolicyView(**asdict(cluster.server_policy(server)))
    return view.model_dump(mode="json")


@router.patch(
    "/v1/servers/{server}/policies", response_model=schemas.OperationResult, tags=["policies"]
)
async def edit_server_policies(
    server: str, body: schemas.ServerPolicyUpdate, who: Who, operations: Ops
) -> schemas.OperationResult:
    """Set the policies given (null resets one to its default); the others are kept."""
    who.require("administrator", "change server policies")
    values = body.model_dump(exclude_unset=True, mode="json")
    return result(
        await operations.configure(changes.update_server_policy, who.name, server, values)
    )


@router.patch(
    "/v1/resources/{tag}/policies", response_model=schemas.OperationResult, tags=["policies"]
)
async def edit_resource_policies(
    tag: str, body: schemas.ResourcePolicyUpdate, who: Who, operations: Ops
) -> schemas.OperationResult:
    """Set the policies given (null resets one to its default); the hierarchy's
    (switchback, automatic_failover, n_plus_one) only on its root."""
    who.require("administrator", "change resource policies")
    values = body.model_dump(exclude_unset=True, mode="json")
    return result(await operations.configure(changes.update_policies, who.name, tag, values))


@router.post("/v1/hierarchies/{tag}/confirm-failover", tags=["hierarchies"])
async def confirm_failover(
    tag: str, body: schemas.ConfirmFailover, who: Who, recovery: RecoveryOps
) -> dict[str, str]:
    """Answer a failover waiting for confirmation: proceed (yes) or block (no)."""
    who.require("operator", "confirm failovers")
    return {"summary": await recovery.confirm_failover(tag, body.proceed, who.name)}


@router.post("/v1/servers/{server}/stop", tags=["servers"])
async def stop_agent(
    server: str, body: schemas.StopAgent, who: Who, operations: Ops, request: Request
) -> Any:
    """Stop this server's agent (``leave_resources``: maintenance, they keep running)."""
    who.require("administrator", "stop agents")
    forwarded = await forward_to(operations, server, request)
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
    return [_event(e) for e in await recovery_of(request).events(limit, after, wait)]


def _event(logged: LoggedEvent) -> schemas.EventView:
    return schemas.EventView(id=logged.id, **logged.record.model_dump(exclude={"schema_version"}))


@router.get("/v1/hierarchies/{tag}/why", tags=["hierarchies"])
async def why(tag: str, who: Who, request: Request) -> dict[str, Any]:
    """The decisions and events that put the hierarchy of ``tag`` where it is now."""
    found = await recovery_of(request).why(tag)
    intent = found.intent
    return {
        "hierarchy": found.hierarchy,
        "resources": found.resources,
        "wanted_on": intent.server if intent else None,
        "because": intent.reason if intent else "never brought in service",
        "failover_origin": intent.origin if intent else None,
        "tried": list(intent.tried) if intent else [],
        "owners": found.owners,
        "events": [_event(e).model_dump() for e in found.events],
    }


@router.get("/v1/plan", tags=["status"])
async def plan(fail: str, who: Who, request: Request) -> list[dict[str, Any]]:
    """What the engine would do if server ``fail`` died now."""
    cluster = await operations_of(request).cluster()
    changes.require_server(cluster, fail)
    return [
        {"hierarchy": name, "target": target, "why": reason}
        for name, target, reason in failover.what_if_down(cluster, fail)
    ]
