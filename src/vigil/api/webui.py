"""API routes the web UI needs beyond the CLI's: who the caller is, and what an extend to a
server would do (the extend wizard's proposed values). Thin: the work is in
``Operations.preview_extend``, run by the target server's agent (forwarded), where the
kit's pre-extend checks must run."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from vigil.agent.operations import Operations
from vigil.api.auth import Who
from vigil.api.forward import forward_to

router = APIRouter(tags=["web"])


@router.get("/v1/whoami")
async def whoami(who: Who, request: Request) -> dict[str, str]:
    """The caller's name and role, and the agent that answers."""
    operations: Operations = request.app.state.operations
    return {"name": who.name, "role": who.role, "server": operations.server}


@router.get("/v1/hierarchies/{tag}/extend-preview")
async def extend_preview(tag: str, server: str, who: Who, request: Request) -> Any:
    """What ``extend`` of the hierarchy of ``tag`` to ``server`` would store there (the
    kits' proposed per-server values) and the problems its pre-extend checks find. Changes
    nothing; needs the administrator role, as extend does."""
    who.require("administrator", "extend hierarchies")
    operations: Operations = request.app.state.operations
    forwarded = await forward_to(operations, server, request)
    if forwarded is not None:
        return forwarded
    return await operations.preview_extend(tag)
