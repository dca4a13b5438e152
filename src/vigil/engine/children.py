"""Child resources made or adopted when a resource is created (pure).

A kit's ``create`` may ask for resources below the new one (the mail kit: the volumes its
queue and mailboxes live on, the ip and dns resources its clients use). ``add_children``
turns those requests into one ``Change`` with the new resource: a requested child is

* **adopted** when it exists (named by tag, or found by the same unique values, e.g. the
  volume resource for the same mount point): only if it belongs to no other hierarchy (no
  parent), lives on the creating server alone (it will share the new resource's one
  priority there) and is not wanted in service elsewhere; else the create is refused,
  naming the resource and what to do;
* **created** otherwise, on the creating server with priority 1, wanted in service there.

Everything is refused or accepted together: nothing is written when one child fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from vigil.engine.changes import Change
from vigil.errors import Conflict, ValidationError
from vigil.model.cluster import Cluster, Dependency, Resource
from vigil.model.names import CREATE_PRIORITY, tag_problems

__all__ = ["ChildRequest", "add_children"]


@dataclass(frozen=True)
class ChildRequest:
    """A child as the kit asked for it, its properties split by its kit's declaration."""

    tag: str
    kit: str
    properties: Mapping[str, object] = field(default_factory=dict)
    server_properties: Mapping[str, object] = field(default_factory=dict)
    adopt: bool = False
    #: the child kit's unique property names (an existing resource with the same values
    #: of these is the same thing: it is adopted instead of created)
    unique: frozenset[str] = frozenset()


def add_children(
    cluster: Cluster, change: Change, parent: str, server: str, requests: Sequence[ChildRequest]
) -> tuple[Change, list[str]]:
    """``change`` (which creates ``parent`` on ``server``) with its children added; and the
    tags of the children it creates (the caller runs their kits' checks)."""
    resources = dict(change.resources)
    intents = dict(change.intents)
    dependencies = set(change.dependencies)
    created: list[str] = []
    adopted: list[str] = []
    refusals: list[ValidationError] = []
    for request in requests:
        try:
            existing = _existing(cluster, request, server)
            if existing is not None:
                _check_adoptable(cluster, existing, parent, server)
        except ValidationError as exc:
            refusals.append(exc)  # every refused child is named, not only the first
            continue
        if existing is not None:
            tag = existing.tag
            adopted.append(tag)
            for member in cluster.hierarchy(tag).tags:
                intents[member] = server
        else:
            tag = _free_tag(cluster, resources, request.tag)
            resources[tag] = Resource(
                tag=tag,
                kit=request.kit,
                properties=dict(request.properties),
                server_properties=(
                    {server: dict(request.server_properties)} if request.server_properties else {}
                ),
                instances={server: CREATE_PRIORITY},
            )
            intents[tag] = server
            created.append(tag)
        dependencies.add(Dependency(parent, tag))
    if refusals:
        problems = [str(exc) for exc in refusals]
        raise type(refusals[0])(problems[0], problems)
    parts = [change.summary]
    if created:
        parts.append(f"created {', '.join(created)} below it")
    if adopted:
        parts.append(f"{', '.join(adopted)} now below it")
    combined = replace(
        change,
        resources=resources,
        intents=intents,
        dependencies=frozenset(dependencies),
        summary="; ".join(parts),
    )
    return combined, created


def _existing(cluster: Cluster, request: ChildRequest, server: str) -> Resource | None:
    if request.adopt:
        resource = cluster.resources.get(request.tag)
        if resource is None:
            raise ValidationError(
                f"there is no resource {request.tag!r} to put below the new resource: "
                "create it first (see 'vigil status' for the tags in use)"
            )
        if resource.kit != request.kit:
            raise Conflict(
                f"{request.tag} is a {resource.kit} resource, not a {request.kit} resource"
            )
        return resource
    wanted = {
        name: value
        for name, value in {**request.properties, **request.server_properties}.items()
        if name in request.unique and value is not None
    }
    for resource in cluster.resources.values():
        if resource.kit != request.kit:
            continue
        for name, value in wanted.items():
            if any(resource.properties_on(s).get(name) == value for s in resource.instances):
                return resource
    return None


def _check_adoptable(cluster: Cluster, child: Resource, parent: str, server: str) -> None:
    parents = cluster.parents(child.tag)
    if parents:
        owner = cluster.hierarchy(child.tag).name
        raise Conflict(
            f"{child.tag} ({child.kit}) belongs to hierarchy {owner} (below "
            f"{', '.join(parents)}): a resource may be part of one hierarchy only; give "
            f"{parent} its own"
        )
    if set(child.instances) != {server}:
        others = ", ".join(sorted(set(child.instances) - {server})) or "other servers"
        if server not in child.instances:
            raise Conflict(
                f"{child.tag} is not extended to {server}, where {parent} is created: "
                f"create {parent} where {child.tag} is, or extend {child.tag} to {server}"
            )
        raise Conflict(
            f"{child.tag} is extended to {others} already: create {parent} first and extend "
            f"the whole hierarchy, or unextend {child.tag} from {others}"
        )
    wanted = cluster.intended_server(cluster.hierarchy(child.tag))
    if wanted not in (None, server) or cluster.owner_of(cluster.hierarchy(child.tag)) - {server}:
        raise Conflict(
            f"{child.tag} is in service on {wanted}: bring it in service on {server} first"
        )


def _free_tag(cluster: Cluster, new: Mapping[str, Resource], tag: str) -> str:
    problems = tag_problems(tag)
    if problems:
        raise ValidationError(f"the child tag {tag!r} is not valid: {problems[0]}", problems)
    candidate, number = tag, 2
    while candidate in cluster.resources or candidate in new:
        candidate, number = f"{tag}{number}", number + 1
    return candidate
