"""API routes for hierarchies: extend (forwarded to the new server), unextend, delete, in
service (a switchover when elsewhere), out of service."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from vigil.api import schemas
from vigil.api.auth import Who
from vigil.api.deps import Ops
from vigil.api.forward import forward_to
from vigil.api.results import result

router = APIRouter(tags=["hierarchies"])


@router.post("/v1/hierarchies/{tag}/extend", response_model=schemas.OperationResult)
async def extend(
    tag: str, body: schemas.Extend, who: Who, operations: Ops, request: Request
) -> Any:
    who.require("administrator", "extend hierarchies")
    forwarded = await forward_to(operations, body.server, request)
    if forwarded is not None:
        return forwarded
    return result(
        await operations.extend(tag, body.priority, body.properties, who.name, fix=body.fix)
    )


@router.post("/v1/hierarchies/{tag}/unextend", response_model=schemas.OperationResult)
async def unextend(
    tag: str, body: schemas.Unextend, who: Who, operations: Ops
) -> schemas.OperationResult:
    who.require("administrator", "unextend hierarchies")
    return result(await operations.unextend(tag, body.server, who.name))


@router.delete("/v1/hierarchies/{tag}", response_model=schemas.OperationResult)
async def delete_hierarchy(
    tag: str, who: Who, operations: Ops, timeout: float = 120.0, force: bool = False
) -> schemas.OperationResult:
    who.require("administrator", "delete hierarchies")
    return result(await operations.delete(tag, who.name, timeout, force=force))


@router.post("/v1/hierarchies/{tag}/in-service", response_model=schemas.OperationResult)
async def in_service(
    tag: str, body: schemas.InService, who: Who, operations: Ops
) -> schemas.OperationResult:
    who.require("operator", "bring hierarchies in service")
    return result(await operations.in_service(tag, body.server, who.name, body.timeout))


@router.post("/v1/hierarchies/{tag}/out-of-service", response_model=schemas.OperationResult)
async def out_of_service(
    tag: str, body: schemas.OutOfService, who: Who, operations: Ops
) -> schemas.OperationResult:
    who.require("operator", "take hierarchies out of service")
    return result(await operations.out_of_service(tag, who.name, body.timeout))
