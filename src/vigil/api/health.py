"""API routes for load balancers and monitors (no token needed): is this agent alive, is a
hierarchy in service here."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from vigil import __version__
from vigil.api.deps import Ops, cached

router = APIRouter(tags=["health"])


@router.get("/v1/health")
async def health(operations: Ops) -> dict[str, str]:
    """Liveness of this agent (no token needed)."""
    return {"server": operations.server, "status": "ok", "version": __version__}


@router.get("/v1/hierarchies/{tag}/in-service-here")
async def in_service_here(tag: str, operations: Ops) -> JSONResponse:
    """200 when the hierarchy of ``tag`` is in service on this server, else 503 (for load
    balancers; no token needed)."""
    cluster = await cached(operations)
    here = tag in cluster.resources and all(
        cluster.state_of(operations.server, t).state.in_service for t in cluster.hierarchy(tag).tags
    )
    return JSONResponse({"in_service": here}, status_code=200 if here else 503)
