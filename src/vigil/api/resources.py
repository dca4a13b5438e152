"""API routes for resources: show, create (forwarded to the server it is created on),
properties, dependencies."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from vigil.api import schemas, views
from vigil.api.auth import Who
from vigil.api.deps import Ops, cached
from vigil.api.forward import forward_to
from vigil.api.results import result
from vigil.engine import changes

router = APIRouter(tags=["resources"])


@router.get("/v1/resources/{tag}", response_model=schemas.ResourceView)
async def show_resource(tag: str, who: Who, operations: Ops) -> schemas.ResourceView:
    cluster = await cached(operations)
    changes.require_resource(cluster, tag)
    return views.resource_view(cluster, tag, operations.secret_fields)


@router.post("/v1/resources", response_model=schemas.OperationResult)
async def create_resource(
    body: schemas.ResourceCreate, who: Who, operations: Ops, request: Request
) -> Any:
    who.require("administrator", "create resources")
    forwarded = await forward_to(operations, body.server, request)
    if forwarded is not None:
        return forwarded
    outcome = await operations.create_resource(
        body.tag, body.kit, body.properties, who.name, body.timeout
    )
    return result(outcome)


@router.patch("/v1/resources/{tag}/properties", response_model=schemas.OperationResult)
async def edit_properties(
    tag: str, body: schemas.PropertiesUpdate, who: Who, operations: Ops
) -> schemas.OperationResult:
    who.require("administrator", "edit properties")
    # a secret shown masked and sent back unchanged keeps its value
    kept = {k: v for k, v in body.properties.items() if v != views.MASK}
    per_server = {
        s: {k: v for k, v in p.items() if v != views.MASK}
        for s, p in body.server_properties.items()
    }
    return result(
        await operations.configure(changes.update_properties, who.name, tag, kept, per_server)
    )


@router.post("/v1/dependencies", response_model=schemas.OperationResult)
async def create_dependency(
    body: schemas.DependencyCreate, who: Who, operations: Ops
) -> schemas.OperationResult:
    who.require("administrator", "create dependencies")
    return result(
        await operations.configure(changes.create_dependency, who.name, body.parent, body.child)
    )


@router.delete("/v1/dependencies/{parent}/{child}", response_model=schemas.OperationResult)
async def delete_dependency(
    parent: str, child: str, who: Who, operations: Ops
) -> schemas.OperationResult:
    who.require("administrator", "delete dependencies")
    return result(await operations.configure(changes.delete_dependency, who.name, parent, child))
