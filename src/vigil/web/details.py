"""Properties pages (the seed's resource and server Properties): a resource's properties
(secrets masked, as the API shows them) and policies, and a server's state, policies and
"what if it died now". Editing goes through the REST API from the page's script
(``PATCH /v1/resources/{tag}/properties``, ``.../policies``, ``/v1/servers/{name}/policies``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from vigil.api import recovery, views
from vigil.engine import changes
from vigil.errors import ValidationError
from vigil.model.policies import HierarchyPolicy, ResourcePolicy, ServerPolicy
from vigil.web.forms import Field, kit_fields, policy_fields
from vigil.web.render import cached, missing, operations_of, render, to_login, viewer_of

router = APIRouter(include_in_schema=False)


def _kit(request: Request, name: str) -> dict[str, Any] | None:
    registry = operations_of(request).runner.kits
    return registry.get(name).describe() if name in registry.names() else None


def _policy_values(
    fields: list[Field], effective: Any, set_values: dict[str, Any]
) -> list[dict[str, Any]]:
    return [
        {
            "field": f,
            "value": getattr(effective, f.name),
            "set": f.name in set_values,
        }
        for f in fields
    ]


@router.get("/ui/resources/{tag}")
async def resource_page(tag: str, request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    cluster = await cached(request)
    try:
        changes.require_resource(cluster, tag)
    except ValidationError as exc:
        return missing(request, viewer, str(exc))
    view = views.resource_view(cluster, tag, operations_of(request).secret_fields)
    hierarchy = cluster.hierarchy(tag)
    kit = _kit(request, view.kit)
    fields = kit_fields(kit) if kit else []
    known = {f.name for f in fields}
    # a property the kit no longer declares is still shown, as JSON
    extra = sorted(
        {*view.properties, *(k for p in view.server_properties.values() for k in p)} - known
    )
    fields += [Field(name, name, "json") for name in extra]
    policies = _policy_values(
        policy_fields(ResourcePolicy), cluster.resource_policy(tag), view.policies
    )
    root_policies = (
        _policy_values(
            policy_fields(HierarchyPolicy), cluster.hierarchy_policy(hierarchy), view.policies
        )
        if tag == hierarchy.name
        else []
    )
    return render(
        request,
        "resource.html",
        viewer,
        resource=view,
        hierarchy=hierarchy.name,
        fields=fields,
        policies=policies,
        root_policies=root_policies,
        digest="",
    )


@router.get("/ui/servers/{name}")
async def server_page(name: str, request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    cluster = await cached(request)
    try:
        changes.require_server(cluster, name)
    except ValidationError as exc:
        return missing(request, viewer, str(exc))
    server = views.server_view(cluster, name)
    set_values = await recovery.server_policies(name, viewer.caller, request)
    stored = cluster.server_policies.get(name)
    defaults = ServerPolicy()
    explicitly = {
        k for k in set_values if stored is not None and getattr(stored, k) != getattr(defaults, k)
    }
    policies = _policy_values(policy_fields(ServerPolicy), cluster.server_policy(name), {})
    policies = [{**p, "set": p["field"].name in explicitly} for p in policies]
    paths = [
        views.path_view(cluster, p) for p in cluster.comm_paths if name in (p.server_a, p.server_b)
    ]
    plan = await recovery.plan(name, viewer.caller, request)
    return render(
        request,
        "server.html",
        viewer,
        server=server,
        stopped=str(cluster.stopped.get(name, "")),
        policies=policies,
        paths=paths,
        plan=plan,
        digest="",
    )
