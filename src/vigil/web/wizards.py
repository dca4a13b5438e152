"""The create and extend wizards (the seed's Create Resource Hierarchy and Extend Resource
Hierarchy), built from each kit's property schema (``vigil.web.forms``).

Create: choose a kit, fill its properties, choose the server; the page's script sends
``POST /v1/resources``, which the API forwards to that server's agent (the kit's checks
run there). Extend: choose the target; the page asks ``GET
/v1/hierarchies/{tag}/extend-preview?server=...`` (run by the target's agent: the kits'
proposed values and the problems their pre-extend checks find) and fills each resource's
per-server fields with them; ``POST /v1/hierarchies/{tag}/extend`` sends what the person
changed. A refusal shows the API's own message.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from vigil.engine import changes
from vigil.errors import ValidationError
from vigil.web.forms import kit_fields
from vigil.web.render import cached, missing, operations_of, render, to_login, viewer_of

router = APIRouter(include_in_schema=False)


def _kits(request: Request) -> dict[str, dict[str, Any]]:
    registry = operations_of(request).runner.kits
    return {name: registry.get(name).describe() for name in registry.names()}


@router.get("/ui/create")
async def create_page(request: Request, kit: str = "") -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    kits = _kits(request)
    cluster = await cached(request)
    return render(
        request,
        "create.html",
        viewer,
        kits=kits,
        chosen=kit if kit in kits else "",
        fields=kit_fields(kits[kit]) if kit in kits else [],
        servers=sorted(s for s, info in cluster.servers.items() if info.alive),
        digest="",
    )


@router.get("/ui/fragments/create-form")
async def create_form(request: Request, kit: str) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    kits = _kits(request)
    if kit not in kits:
        return Response("", status_code=200)
    return render(request, "_kit_fields.html", viewer, chosen=kit, fields=kit_fields(kits[kit]))


@router.get("/ui/hierarchies/{tag}/extend")
async def extend_page(tag: str, request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    cluster = await cached(request)
    try:
        changes.require_resource(cluster, tag)
    except ValidationError as exc:
        return missing(request, viewer, str(exc))
    hierarchy = cluster.hierarchy(tag)
    kits = _kits(request)
    extended = cluster.hierarchy_servers(hierarchy)
    resources = []
    for member in sorted(hierarchy.tags):
        kit = cluster.resources[member].kit
        fields = [f for f in kit_fields(kits[kit]) if f.per_server] if kit in kits else []
        resources.append({"tag": member, "kit": kit, "fields": fields})
    return render(
        request,
        "extend.html",
        viewer,
        hierarchy=hierarchy.name,
        resources=resources,
        targets=sorted(s for s in cluster.servers if s not in extended),
        extended=sorted(extended),
        digest="",
    )
