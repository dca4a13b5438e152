"""API routes for load balancers and monitors (no token needed): is this agent alive, is a
hierarchy in service and protected here.

``GET``/``HEAD /v1/health/hierarchy/TAG`` is what a load balancer polls on every server
(as Patroni's ``/primary``): 200 on the server where the hierarchy of ``TAG`` is in service
and protected (every resource ISP here), 503 on every other server (out of service, in
service but unprotected in maintenance, failed, unknown), 404 for a tag no hierarchy has.
The answer names the server and the states, never a property. The older
``/v1/hierarchies/TAG/in-service-here`` (200 while in service here, protected or not) is
kept for the checks already configured with it.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from vigil import __version__
from vigil.api.deps import Ops, cached
from vigil.model.cluster import Cluster
from vigil.model.states import InstanceState

router = APIRouter(tags=["health"])

_HIERARCHY_RESPONSES: dict[int | str, dict[str, str]] = {
    200: {"description": "in service and protected on this server"},
    404: {"description": "no hierarchy has this tag"},
    503: {"description": "not in service and protected on this server"},
}


@router.get("/v1/health")
async def health(operations: Ops) -> dict[str, str]:
    """Liveness of this agent (no token needed)."""
    return {"server": operations.server, "status": "ok", "version": __version__}


def _states_here(cluster: Cluster, server: str, tag: str) -> dict[str, str]:
    return {t: str(cluster.state_of(server, t).state) for t in sorted(cluster.hierarchy(tag).tags)}


@router.get("/v1/health/hierarchy/{tag}", responses=_HIERARCHY_RESPONSES)
async def hierarchy_health(tag: str, operations: Ops) -> JSONResponse:
    """200 when the hierarchy of ``tag`` is in service and protected on this server (every
    resource ISP), else 503; 404 for an unknown tag. For load balancers: no token needed,
    nothing secret in the answer."""
    cluster = await cached(operations)
    me = operations.server
    if tag not in cluster.resources:
        unknown = {"hierarchy": tag, "server": me, "status": "unknown hierarchy"}
        return JSONResponse(unknown, status_code=404)
    states = _states_here(cluster, me, tag)
    serving = all(state == InstanceState.ISP for state in states.values())
    body: dict[str, object] = {
        "hierarchy": cluster.hierarchy(tag).name,
        "server": me,
        "status": "in service, protected" if serving else "not in service and protected here",
        "states": states,
    }
    return JSONResponse(body, status_code=200 if serving else 503)


@router.head("/v1/health/hierarchy/{tag}", responses=_HIERARCHY_RESPONSES)
async def hierarchy_health_head(tag: str, operations: Ops) -> Response:
    """``hierarchy_health``'s status without a body (``HEAD``)."""
    answer = await hierarchy_health(tag, operations)
    return Response(status_code=answer.status_code)


@router.get("/v1/hierarchies/{tag}/in-service-here", deprecated=True)
async def in_service_here(tag: str, operations: Ops) -> JSONResponse:
    """200 when the hierarchy of ``tag`` is in service on this server (protected or not),
    else 503; no token needed. Kept for checks configured with it: use
    ``/v1/health/hierarchy/{tag}``, which also says 503 while unprotected."""
    cluster = await cached(operations)
    here = tag in cluster.resources and all(
        cluster.state_of(operations.server, t).state.in_service for t in cluster.hierarchy(tag).tags
    )
    return JSONResponse({"in_service": here}, status_code=200 if here else 503)
