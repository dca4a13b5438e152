"""The status display (the seed's main window: hierarchies against servers, states in
colour), a hierarchy's page (its tree, actions, why, failover timelines), the event log
and "what if this server died now". Each live part is a fragment of its own, asked for
again when the page's event stream says the cluster changed (``vigil.web.live``).

What is shown comes from the API's own code: the status views (``vigil.api.views``, on the
agent's cached view, as ``GET /v1/status``), and ``why``, ``plan`` and ``events`` by calling
the API's route functions with the person's role. Changes are made by the page's script
through the REST API itself, never here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from vigil.api import recovery, schemas, views
from vigil.engine import changes
from vigil.errors import ValidationError
from vigil.model.cluster import Cluster
from vigil.web.live import feed_of
from vigil.web.render import Viewer, cached, missing, operations_of, render, to_login, viewer_of
from vigil.web.timeline import failover_timelines

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Row:
    """One line of a hierarchy's tree: a resource at ``depth`` (0: a root) below
    ``parent``."""

    depth: int
    resource: schemas.ResourceView
    parent: str | None


def tree_rows(hierarchy: schemas.HierarchyView) -> list[Row]:
    """Parents above their children, depth first, as the seed's tree shows them (a child
    of two parents appears under each)."""
    by_tag = {r.tag: r for r in hierarchy.resources}
    rows: list[Row] = []

    def visit(tag: str, depth: int, parent: str | None, seen: frozenset[str]) -> None:
        resource = by_tag.get(tag)
        if resource is None or tag in seen:
            return
        rows.append(Row(depth, resource, parent))
        for child in resource.children:
            visit(child, depth + 1, tag, seen | {tag})

    roots = [r.tag for r in hierarchy.resources if not r.parents]
    for root in roots:
        visit(root, 0, None, frozenset())
    return rows


def confirmations(cluster: Cluster) -> list[dict[str, Any]]:
    """Failovers waiting for an operator, not answered yet."""
    return [
        {"hierarchy": name, "target": c.target, "origin": c.origin, "since": c.since}
        for name, c in sorted(cluster.confirmations.items())
        if c.decision is None
    ]


async def _status(request: Request, viewer: Viewer) -> dict[str, Any]:
    cluster = await cached(request)
    status = views.status_view(cluster, operations_of(request).secret_fields)
    return {
        "status": status,
        "rows": {h.name: tree_rows(h) for h in status.hierarchies},
        "servers": [s.name for s in status.servers],
        "stopped": {s: str(m) for s, m in cluster.stopped.items()},
        "confirmations": confirmations(cluster),
        "digest": feed_of(request.app).current(),
    }


@router.get("/")
async def root() -> Response:
    return RedirectResponse("/ui/", status_code=303)


@router.get("/ui/")
async def status_page(request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    return render(request, "status.html", viewer, **await _status(request, viewer))


@router.get("/ui/fragments/status")
async def status_fragment(request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    return render(request, "_status.html", viewer, **await _status(request, viewer))


async def _hierarchy(request: Request, viewer: Viewer, tag: str) -> dict[str, Any]:
    cluster = await cached(request)
    changes.require_resource(cluster, tag)  # NotFound: the page says so
    name = cluster.hierarchy(tag).name
    view = views.hierarchy_view(cluster, name, operations_of(request).secret_fields)
    pending = [c for c in confirmations(cluster) if c["hierarchy"] == name]
    tags = sorted(cluster.hierarchy(tag).tags)
    return {
        "hierarchy": view,
        "rows": tree_rows(view),
        "servers": sorted(cluster.servers),
        "extended_to": sorted(cluster.hierarchy_servers(cluster.hierarchy(tag))),
        "confirmations": pending,
        "tags": tags,
        "all_tags": sorted(cluster.resources),
        "dependencies": sorted(
            (d.parent, d.child) for d in cluster.dependencies if d.parent in tags or d.child in tags
        ),
        "digest": feed_of(request.app).current(),
    }


@router.get("/ui/hierarchies/{tag}")
async def hierarchy_page(tag: str, request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    try:
        context = await _hierarchy(request, viewer, tag)
    except ValidationError as exc:
        return missing(request, viewer, str(exc))
    return render(request, "hierarchy.html", viewer, **context)


@router.get("/ui/fragments/hierarchies/{tag}")
async def hierarchy_fragment(tag: str, request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    try:
        context = await _hierarchy(request, viewer, tag)
    except ValidationError as exc:
        return missing(request, viewer, str(exc))
    return render(request, "_hierarchy.html", viewer, **context)


@router.get("/ui/fragments/why/{tag}")
async def why_fragment(tag: str, request: Request) -> Response:
    """``vigil why TAG`` (the API's own route), and the failovers' timelines."""
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    try:
        why = await recovery.why(tag, viewer.caller, request)
    except ValidationError as exc:
        return missing(request, viewer, str(exc))
    cluster = await cached(request)
    hierarchy = cluster.hierarchy(tag)
    active = cluster.intended_server(hierarchy)
    states = {}
    if active:
        for member in hierarchy.tags:
            seen = cluster.state_of(active, member)
            states[member] = {"server": active, "state": str(seen.state), "since": seen.since}
    timelines = failover_timelines(why["events"], states)
    events = list(reversed(why["events"]))[:50]
    return render(request, "_why.html", viewer, why=why, events=events, timelines=timelines)


async def _events(request: Request, viewer: Viewer) -> list[schemas.EventView]:
    found = await recovery.events(viewer.caller, request, limit=200, after="", wait=0.0)
    return list(reversed(found))


@router.get("/ui/events")
async def events_page(request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    events = await _events(request, viewer)
    return render(request, "events.html", viewer, events=events, digest="")


@router.get("/ui/fragments/events")
async def events_fragment(request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    return render(request, "_events.html", viewer, events=await _events(request, viewer))


@router.get("/ui/what-if")
async def what_if_page(request: Request, server: str = "") -> Response:
    """``vigil plan --fail SERVER``: what would happen if this server died now."""
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    cluster = await cached(request)
    servers = sorted(cluster.servers)
    chosen = server if server in servers else (servers[0] if servers else "")
    plan = await recovery.plan(chosen, viewer.caller, request) if chosen else []
    return render(
        request, "what_if.html", viewer, servers=servers, chosen=chosen, plan=plan, digest=""
    )


@router.get("/ui/fragments/what-if")
async def what_if_fragment(request: Request, server: str) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    try:
        plan = await recovery.plan(server, viewer.caller, request)
    except ValidationError as exc:
        return missing(request, viewer, str(exc))
    return render(request, "_what_if.html", viewer, chosen=server, plan=plan)
