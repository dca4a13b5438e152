"""API routes for comm paths (the seed's TCP/IP communication paths)."""

from __future__ import annotations

from fastapi import APIRouter

from vigil.api import schemas, views
from vigil.api.auth import Who
from vigil.api.deps import Ops, cached
from vigil.api.results import result
from vigil.engine import changes

router = APIRouter(tags=["comm paths"])


@router.get("/v1/commpaths", response_model=list[schemas.CommPathView])
async def list_paths(who: Who, operations: Ops) -> list[schemas.CommPathView]:
    cluster = await cached(operations)
    return [views.path_view(cluster, p) for p in cluster.comm_paths]


@router.post("/v1/commpaths", response_model=schemas.OperationResult)
async def create_path(
    body: schemas.CommPathCreate, who: Who, operations: Ops
) -> schemas.OperationResult:
    who.require("administrator", "create comm paths")
    return result(
        await operations.configure(
            changes.create_comm_path,
            who.name,
            body.local,
            body.local_address,
            body.remote,
            body.remote_address,
            body.heartbeat_interval,
            body.max_missed,
        )
    )


@router.delete("/v1/commpaths/{path_id}", response_model=schemas.OperationResult)
async def delete_path(
    path_id: str, who: Who, operations: Ops, force: bool = False
) -> schemas.OperationResult:
    who.require("administrator", "delete comm paths")
    return result(
        await operations.configure(changes.delete_comm_path, who.name, path_id, force=force)
    )
