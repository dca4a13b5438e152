"""Turning a ``Cluster`` into the API's status views (pure)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from vigil.agent.secrets import SEALED_PREFIX
from vigil.api.schemas import (
    CommPathView,
    HierarchyView,
    InstanceView,
    PathEndView,
    ResourceView,
    ServerView,
    StatusView,
)
from vigil.engine.status import hierarchy_status
from vigil.model.cluster import Cluster, CommPath
from vigil.model.states import PathState, ServerState

#: which properties of a kit are secret (kit name -> field names); never shown
Secrets = Callable[[str], set[str]]
MASK = "********"


def no_secrets(kit: str) -> set[str]:
    return set()


def status_view(cluster: Cluster, secrets: Secrets = no_secrets) -> StatusView:
    return StatusView(
        revision=cluster.revision,
        servers=[server_view(cluster, name) for name in sorted(cluster.servers)],
        comm_paths=[path_view(cluster, path) for path in cluster.comm_paths],
        hierarchies=[hierarchy_view(cluster, h.name, secrets) for h in cluster.hierarchies],
    )


def _masked(values: Mapping[str, Any], secret: set[str]) -> dict[str, Any]:
    """``values`` with every secret field masked, and any sealed value (a secret of a kit
    that is not loaded here, or no longer declares it) too."""
    return {
        k: (MASK if k in secret or (isinstance(v, str) and v.startswith(SEALED_PREFIX)) else v)
        for k, v in values.items()
    }


def resource_view(cluster: Cluster, tag: str, secrets: Secrets = no_secrets) -> ResourceView:
    resource = cluster.resources[tag]
    secret = secrets(resource.kit)
    instances = []
    for server in resource.servers_by_priority:
        observed = cluster.state_of(server, tag)
        instances.append(
            InstanceView(
                server=server,
                priority=resource.instances[server],
                state=str(observed.state),
                reason=observed.reason,
                since=observed.since,
            )
        )
    return ResourceView(
        tag=tag,
        kit=resource.kit,
        parents=cluster.parents(tag),
        children=cluster.children(tag),
        properties=_masked(resource.properties, secret),
        server_properties={s: _masked(p, secret) for s, p in resource.server_properties.items()},
        policies=dict(resource.policies),
        instances=instances,
    )


def hierarchy_view(cluster: Cluster, name: str, secrets: Secrets = no_secrets) -> HierarchyView:
    hierarchy = cluster.hierarchy(name)
    status = hierarchy_status(cluster, hierarchy)
    # parents before children, as the seed's tree shows them
    order: list[str] = []
    todo = list(hierarchy.roots)
    while todo:
        tag = todo.pop(0)
        if tag not in order:
            order.append(tag)
            todo.extend(cluster.children(tag))
    return HierarchyView(
        name=hierarchy.name,
        status=str(status.status),
        reason=status.reason,
        active_server=status.active_server,
        wanted_on=cluster.intended_server(hierarchy),
        resources=[resource_view(cluster, tag, secrets) for tag in order],
    )


def path_view(cluster: Cluster, path: CommPath) -> CommPathView:
    ends = [
        PathEndView(server=o.server, state=str(o.state), last_heartbeat=o.last_heartbeat)
        for o in cluster.path_observations
        if o.path_id == path.id
    ]
    states = {e.state for e in ends}
    if not ends:
        state = PathState.UNKNOWN
    elif states == {PathState.ALIVE}:
        state = PathState.ALIVE
    else:
        state = PathState.DEAD
    return CommPathView(
        id=path.id,
        server_a=path.server_a,
        address_a=path.address_a,
        server_b=path.server_b,
        address_b=path.address_b,
        heartbeat_interval=path.heartbeat_interval,
        max_missed=path.max_missed,
        state=str(state),
        ends=ends,
    )


def server_view(cluster: Cluster, name: str) -> ServerView:
    server = cluster.servers[name]
    if not server.alive:
        state, reason = ServerState.DEAD, "its agent is not running"
    else:
        warnings = []
        for other in sorted(cluster.servers):
            if other == name or not cluster.servers[other].alive:
                continue
            paths = [path_view(cluster, p) for p in cluster.comm_paths_between(name, other)]
            dead = [p for p in paths if p.state == PathState.DEAD]
            if dead:
                warnings.append(f"{len(dead)} of {len(paths)} paths to {other} dead")
            elif len(paths) == 1:
                warnings.append(f"only one comm path to {other}")
        state = ServerState.ALIVE_WARNING if warnings else ServerState.ALIVE
        reason = "; ".join(warnings) or "agent running"
        if server.maintenance:
            reason = "maintenance: resources left running, not monitored"
    return ServerView(
        name=name,
        state=str(state),
        reason=reason,
        api_url=server.api_url,
        addresses=list(server.addresses),
        maintenance=server.maintenance,
    )
