"""API routes that show the cluster: its status and the kits installed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from vigil.api import schemas, views
from vigil.api.auth import Who
from vigil.api.deps import Ops, cached

router = APIRouter(tags=["status"])


@router.get("/v1/status", response_model=schemas.StatusView)
async def status(who: Who, operations: Ops) -> schemas.StatusView:
    return views.status_view(await cached(operations), operations.secret_fields)


@router.get("/v1/kits")
async def kits(who: Who, operations: Ops) -> dict[str, Any]:
    registry = operations.runner.kits
    return {
        "kits": [registry.get(name).describe() for name in registry.names()],
        "errors": [str(error) for error in registry.errors],
    }
