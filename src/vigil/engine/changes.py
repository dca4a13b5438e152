"""The administrator's operations (the seed's chapter 4) as pure, validated changes.

Each function takes one consistent ``Cluster`` view and a request, checks every rule, and
returns a ``Change``: what to write to the store, in one transaction. Nothing is written
when any check fails; the ``ValidationError`` raised names every problem found. Kit checks
(``validate_create``, ``can_extend``) run on the target server and are not here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import Enum

from vigil.errors import Conflict, NotFound, ValidationError
from vigil.model import graph
from vigil.model.cluster import Cluster, CommPath, Dependency, Hierarchy, Resource
from vigil.model.names import (
    CREATE_PRIORITY,
    check_priority,
    next_free_priority,
    tag_problems,
)
from vigil.model.policies import (
    HIERARCHY_POLICY_NAMES,
    RESOURCE_POLICY_NAMES,
    HierarchyPolicy,
    ResourcePolicy,
    ServerPolicy,
    parse_policy,
)


@dataclass(frozen=True)
class Change:
    """Records to write (or delete) together. ``intents`` maps tag -> server or None."""

    resources: Mapping[str, Resource] = field(default_factory=dict)
    deleted_resources: frozenset[str] = frozenset()
    dependencies: frozenset[Dependency] = frozenset()
    deleted_dependencies: frozenset[Dependency] = frozenset()
    intents: Mapping[str, str | None] = field(default_factory=dict)
    intent_reason: str = ""
    comm_paths: tuple[CommPath, ...] = ()
    deleted_comm_paths: tuple[str, ...] = ()
    #: server -> its whole new policy (validated values)
    server_policies: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    #: what the change did, for the API's answer and the event log
    summary: str = ""


def require_server(cluster: Cluster, server: str) -> None:
    if server not in cluster.servers:
        known = ", ".join(sorted(cluster.servers)) or "none yet"
        raise NotFound(f"unknown server {server!r}: the servers of this cluster are {known}")


def require_resource(cluster: Cluster, tag: str) -> Resource:
    resource = cluster.resources.get(tag)
    if resource is None:
        raise NotFound(f"no resource is tagged {tag!r}: see 'vigil status' for the tags in use")
    return resource


def require_alive(cluster: Cluster, server: str) -> None:
    require_server(cluster, server)
    if not cluster.servers[server].alive:
        raise Conflict(f"the agent of {server} is not running: start it ('vigil agent start')")


# --- resources -------------------------------------------------------------------------


def create_resource(
    cluster: Cluster,
    *,
    tag: str,
    kit: str,
    server: str,
    properties: Mapping[str, object],
    server_properties: Mapping[str, object],
    known_kits: Iterable[str],
) -> Change:
    """A new resource on ``server`` with priority 1, to be brought in service there."""
    problems = tag_problems(tag)
    kits = sorted(known_kits)
    if kit not in kits:
        problems.append(f"unknown kit {kit!r}: available kits are {', '.join(kits) or 'none'}")
    if tag in cluster.resources:
        problems.append(f"tag {tag!r} is already used by a {cluster.resources[tag].kit} resource")
    if problems:
        raise ValidationError(problems[0], problems)
    require_alive(cluster, server)
    resource = Resource(
        tag=tag,
        kit=kit,
        properties=dict(properties),
        server_properties={server: dict(server_properties)} if server_properties else {},
        instances={server: CREATE_PRIORITY},
    )
    return Change(
        resources={tag: resource},
        intents={tag: server},
        intent_reason=f"created on {server}",
        summary=f"created {kit} resource {tag} on {server} (priority {CREATE_PRIORITY})",
    )


def update_properties(
    cluster: Cluster,
    tag: str,
    properties: Mapping[str, object],
    server_properties: Mapping[str, Mapping[str, object]],
) -> Change:
    """New property values (merged over the old ones; a None value removes a property)."""
    resource = require_resource(cluster, tag)
    for server in server_properties:
        if server not in resource.instances:
            raise Conflict(
                f"{tag} is not extended to {server}: extend it before setting its properties there"
            )
    merged = _merge(resource.properties, properties)
    per_server = {s: dict(p) for s, p in resource.server_properties.items()}
    for server, values in server_properties.items():
        per_server[server] = _merge(per_server.get(server, {}), values)
    updated = replace(resource, properties=merged, server_properties=per_server)
    return Change(resources={tag: updated}, summary=f"updated the properties of {tag}")


def _merge(old: Mapping[str, object], new: Mapping[str, object]) -> dict[str, object]:
    merged = dict(old)
    for name, value in new.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def update_policies(cluster: Cluster, tag: str, values: Mapping[str, object]) -> Change:
    """Resource policies (local_recovery, failover, recovery_limit...) and, on a hierarchy's
    root, hierarchy policies (switchback, automatic_failover, n_plus_one). None resets."""
    resource = require_resource(cluster, tag)
    unknown = sorted(set(values) - RESOURCE_POLICY_NAMES - HIERARCHY_POLICY_NAMES)
    if unknown:
        known = ", ".join(sorted(RESOURCE_POLICY_NAMES | HIERARCHY_POLICY_NAMES))
        raise ValidationError(f"unknown policy {unknown[0]!r} for {tag}: the policies are {known}")
    hierarchy_level = sorted((set(values) & HIERARCHY_POLICY_NAMES) - RESOURCE_POLICY_NAMES)
    if hierarchy_level and cluster.hierarchy(tag).name != tag:
        raise ValidationError(
            f"{', '.join(hierarchy_level)} is set on a hierarchy: give its root, "
            f"{cluster.hierarchy(tag).name}, not {tag}"
        )
    merged = _merge(resource.policies, values)
    parse_policy(
        ResourcePolicy, {k: v for k, v in merged.items() if k in RESOURCE_POLICY_NAMES}, tag
    )
    parse_policy(
        HierarchyPolicy, {k: v for k, v in merged.items() if k in HIERARCHY_POLICY_NAMES}, tag
    )
    return Change(
        resources={tag: replace(resource, policies=merged)},
        summary=f"updated the policies of {tag}: "
        + ", ".join(f"{k}={v}" for k, v in sorted(values.items())),
    )


def update_server_policy(cluster: Cluster, server: str, values: Mapping[str, object]) -> Change:
    """A server's recovery and failover policies (None resets one to its default)."""
    require_server(cluster, server)
    current = asdict(cluster.server_policy(server))
    merged = {k: v for k, v in _merge(current, values).items()}
    policy = parse_policy(ServerPolicy, merged, server)
    stored = {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(policy).items()}
    return Change(
        server_policies={server: stored},
        summary=f"updated the policies of {server}: "
        + ", ".join(f"{k}={v}" for k, v in sorted(values.items())),
    )


# --- dependencies ----------------------------------------------------------------------


def create_dependency(cluster: Cluster, parent: str, child: str) -> Change:
    """``parent`` will need ``child``: refused on a cycle or when they do not share servers."""
    p, c = require_resource(cluster, parent), require_resource(cluster, child)
    if parent == child:
        raise ValidationError(f"{parent} cannot depend on itself")
    if Dependency(parent, child) in cluster.dependencies:
        raise Conflict(f"{parent} already depends on {child}")
    cycle = graph.find_cycle([*cluster.edges, (parent, child)])
    if cycle:
        raise Conflict(
            f"{parent} cannot depend on {child}: that would make a cycle ({' -> '.join(cycle)})"
        )
    if set(p.instances) != set(c.instances):
        raise Conflict(
            f"{parent} is extended to {', '.join(sorted(p.instances))} but {child} to "
            f"{', '.join(sorted(c.instances))}: extend both to the same servers first"
        )
    if dict(p.instances) != dict(c.instances):
        raise Conflict(
            f"{parent} has priorities {_priorities(p)} but {child} has {_priorities(c)}: "
            "a hierarchy has one priority per server; unextend and extend one of them again"
        )
    wanted_p = cluster.intended_server(cluster.hierarchy(parent))
    wanted_c = cluster.intended_server(cluster.hierarchy(child))
    if wanted_p != wanted_c:
        raise Conflict(
            f"{parent} is wanted in service on {wanted_p or 'no server'} and {child} on "
            f"{wanted_c or 'no server'}: bring both in service on the same server first"
        )
    return Change(
        dependencies=frozenset({Dependency(parent, child)}),
        summary=f"{parent} now depends on {child} (on every server)",
    )


def _priorities(resource: Resource) -> str:
    return ", ".join(f"{s} {p}" for s, p in sorted(resource.instances.items(), key=lambda i: i[1]))


def delete_dependency(cluster: Cluster, parent: str, child: str) -> Change:
    require_resource(cluster, parent)
    require_resource(cluster, child)
    if Dependency(parent, child) not in cluster.dependencies:
        raise NotFound(f"{parent} does not depend on {child}")
    return Change(
        deleted_dependencies=frozenset({Dependency(parent, child)}),
        summary=f"{parent} no longer depends on {child} (on every server)",
    )


# --- extend, unextend, delete -----------------------------------------------------------


def hierarchy_priorities(cluster: Cluster, hierarchy: Hierarchy) -> dict[str, int]:
    """server -> priority of the hierarchy there (its root's instance priority)."""
    root = cluster.resources[hierarchy.name]
    return dict(root.instances)


def extend(cluster: Cluster, tag: str, target: str, priority: int | None) -> tuple[Change, int]:
    """Extend the whole hierarchy of ``tag`` to ``target`` with one priority."""
    require_resource(cluster, tag)
    require_server(cluster, target)
    hierarchy = cluster.hierarchy(tag)
    current = hierarchy_priorities(cluster, hierarchy)
    if target in current:
        raise Conflict(
            f"{hierarchy.name} is already extended to {target} (priority {current[target]})"
        )
    used = set(current.values())
    if priority is None:
        priority = next_free_priority(used)
    check_priority(priority)
    if priority in used:
        owner = next(s for s, p in current.items() if p == priority)
        raise Conflict(
            f"priority {priority} is already used by {owner} in {hierarchy.name}: "
            f"choose another (free: {next_free_priority(used)})"
        )
    missing = [s for s in sorted(current) if not cluster.comm_paths_between(s, target)]
    if missing:
        raise Conflict(
            f"no comm path joins {target} and {', '.join(missing)}: create one first "
            f"('vigil commpath create')"
        )
    require_alive(cluster, target)
    resources = {}
    for member in sorted(hierarchy.tags):
        resource = cluster.resources[member]
        resources[member] = replace(resource, instances={**resource.instances, target: priority})
    summary = f"extended {hierarchy.name} to {target} with priority {priority}"
    return Change(resources=resources, summary=summary), priority


def unextend(cluster: Cluster, tag: str, server: str) -> Change:
    """Remove the hierarchy of ``tag`` from ``server``; refused where it is in service."""
    require_resource(cluster, tag)
    require_server(cluster, server)
    hierarchy = cluster.hierarchy(tag)
    current = hierarchy_priorities(cluster, hierarchy)
    if server not in current:
        raise NotFound(f"{hierarchy.name} is not extended to {server}")
    if _in_service_on(cluster, hierarchy, server):
        raise Conflict(
            f"{hierarchy.name} is in service on {server}: switch it over to another server "
            "first, or delete the hierarchy"
        )
    if len(current) == 1:
        raise Conflict(
            f"{server} is the only server of {hierarchy.name}: delete the hierarchy instead"
        )
    resources = {}
    for member in sorted(hierarchy.tags):
        resource = cluster.resources[member]
        instances = {s: p for s, p in resource.instances.items() if s != server}
        per_server = {s: p for s, p in resource.server_properties.items() if s != server}
        resources[member] = replace(resource, instances=instances, server_properties=per_server)
    return Change(resources=resources, summary=f"unextended {hierarchy.name} from {server}")


def _in_service_on(cluster: Cluster, hierarchy: Hierarchy, server: str) -> bool:
    if cluster.intended_server(hierarchy) == server or server in cluster.owner_of(hierarchy):
        return True
    return any(cluster.state_of(server, t).state.in_service for t in hierarchy.tags)


def deletion_set(cluster: Cluster, tag: str) -> set[str]:
    """``tag`` and the resources below it that no resource outside the set needs."""
    require_resource(cluster, tag)
    needed_by = cluster.parents(tag)
    if needed_by:
        raise Conflict(
            f"{tag} is needed by {', '.join(needed_by)}: delete "
            f"{'that hierarchy' if len(needed_by) == 1 else 'those hierarchies'} first, "
            "or delete the dependency"
        )
    doomed = {tag}
    changed = True
    candidates = graph.descendants(tag, cluster.edges)
    while changed:
        changed = False
        for child in sorted(candidates - doomed):
            parents = set(cluster.parents(child))
            if parents and parents <= doomed:
                doomed.add(child)
                changed = True
    return doomed


def delete_hierarchy(cluster: Cluster, tag: str) -> Change:
    """Delete ``tag`` and its children no other hierarchy uses, from every server.

    Refused while any of them is owned (in service) anywhere: take it out of service first
    (the API does that for the caller)."""
    doomed = deletion_set(cluster, tag)
    owned = sorted(t for t in doomed if t in cluster.owners)
    if owned:
        where = ", ".join(f"{t} on {cluster.owners[t].server}" for t in owned)
        raise Conflict(f"cannot delete while in service ({where}): take it out of service first")
    deps = frozenset(d for d in cluster.dependencies if d.parent in doomed or d.child in doomed)
    return Change(
        deleted_resources=frozenset(doomed),
        deleted_dependencies=deps,
        summary=f"deleted {', '.join(sorted(doomed))} from every server",
    )


# --- in service / out of service ---------------------------------------------------------


def bring_in_service(cluster: Cluster, tag: str, server: str, requested_by: str) -> Change:
    """Want the hierarchy of ``tag`` in service on ``server`` (a switchover if elsewhere).
    Refused (``Conflict``) when a kit on ``server`` says it may not take it over now (a
    mirror target not in sync), with the kit's reason."""
    require_resource(cluster, tag)
    require_server(cluster, server)
    hierarchy = cluster.hierarchy(tag)
    if server not in cluster.hierarchy_servers(hierarchy):
        raise Conflict(f"{hierarchy.name} is not extended to {server}: extend it first")
    require_alive(cluster, server)
    current = cluster.intended_server(hierarchy)
    refused = cluster.ineligible(server, hierarchy.tags) if current != server else None
    if refused:
        raise Conflict(f"{hierarchy.name} cannot be brought in service on {server}: {refused}")
    verb = "switchover" if current and current != server else "in service"
    reason = f"{verb} requested by {requested_by}" + (
        f" (from {current})" if verb == "switchover" else ""
    )
    return Change(
        intents=dict.fromkeys(hierarchy.tags, server),
        intent_reason=reason,
        summary=f"{hierarchy.name}: {verb} on {server}",
    )


def take_out_of_service(cluster: Cluster, tag: str, requested_by: str) -> Change:
    require_resource(cluster, tag)
    hierarchy = cluster.hierarchy(tag)
    return Change(
        intents=dict.fromkeys(hierarchy.tags),
        intent_reason=f"out of service requested by {requested_by}",
        summary=f"{hierarchy.name}: out of service",
    )


# --- comm paths --------------------------------------------------------------------------


def create_comm_path(
    cluster: Cluster,
    local: str,
    local_address: str,
    remote: str,
    remote_address: str,
    heartbeat_interval: float = 1.0,
    max_missed: int = 5,
) -> Change:
    require_server(cluster, local)
    require_server(cluster, remote)
    if local == remote:
        raise ValidationError(f"a comm path joins two different servers, not {local} to itself")
    for address in (local_address, remote_address):
        try:
            ipaddress.ip_address(address)
        except ValueError as exc:
            raise ValidationError(f"{address!r} is not an IP address") from exc
    for server, address in ((local, local_address), (remote, remote_address)):
        registered = cluster.servers[server].addresses
        if registered and address not in registered:
            raise ValidationError(
                f"{address} is not an address of {server} (its addresses: {', '.join(registered)})"
            )
    if heartbeat_interval <= 0 or max_missed < 1:
        raise ValidationError("heartbeat interval must be > 0 and max missed heartbeats >= 1")
    path = CommPath.between(
        local, local_address, remote, remote_address, heartbeat_interval, max_missed
    )
    if any(p.id == path.id for p in cluster.comm_paths):
        raise Conflict(f"a comm path {local_address} <-> {remote_address} already exists")
    return Change(comm_paths=(path,), summary=f"created comm path {path.id}")


def delete_comm_path(cluster: Cluster, path_id: str, *, force: bool = False) -> Change:
    path = next((p for p in cluster.comm_paths if p.id == path_id), None)
    if path is None:
        raise NotFound(f"no comm path {path_id!r}: see 'vigil commpath list'")
    others = [
        p for p in cluster.comm_paths_between(path.server_a, path.server_b) if p.id != path_id
    ]
    if not others and not force:
        shared = [
            h.name
            for h in cluster.hierarchies
            if {path.server_a, path.server_b} <= cluster.hierarchy_servers(h)
        ]
        if shared:
            raise Conflict(
                f"{path_id} is the last comm path between {path.server_a} and {path.server_b}, "
                f"which share {', '.join(shared)}: create another path first, or use --force"
            )
    return Change(deleted_comm_paths=(path_id,), summary=f"deleted comm path {path_id}")
