"""The global status of a hierarchy across its servers (the seed's status display)."""

from __future__ import annotations

from dataclasses import dataclass

from vigil.model.cluster import Cluster, Hierarchy
from vigil.model.states import HierarchyStatus, InstanceState


@dataclass(frozen=True)
class HierarchyView:
    """A hierarchy's status, where it is in service, and why."""

    name: str
    status: HierarchyStatus
    active_server: str | None
    reason: str


def in_service_servers(cluster: Cluster, hierarchy: Hierarchy) -> list[str]:
    """Servers on which any resource of the hierarchy is reported in service."""
    servers = cluster.hierarchy_servers(hierarchy) | {
        server for tag in hierarchy.tags for server in cluster.observed_of(tag)
    }
    return sorted(
        server
        for server in servers
        if any(cluster.state_of(server, tag).state.in_service for tag in hierarchy.tags)
    )


def hierarchy_status(cluster: Cluster, hierarchy: Hierarchy) -> HierarchyView:
    """Normal: in service, backups ready. Warning: in service, a backup OSF/UNKNOWN.
    Failed: in service nowhere. Unknown: the server that should hold it is unreachable."""
    active = in_service_servers(cluster, hierarchy)
    servers = sorted(cluster.hierarchy_servers(hierarchy))
    intended = cluster.intended_server(hierarchy)
    if not active:
        if intended and not _alive(cluster, intended):
            why = f"wanted on {intended}, whose agent is not running"
            return HierarchyView(hierarchy.name, HierarchyStatus.UNKNOWN, None, why)
        why = f"in service nowhere (wanted on {intended})" if intended else "out of service"
        return HierarchyView(hierarchy.name, HierarchyStatus.FAILED, None, why)
    if len(active) > 1:
        why = f"in service on several servers: {', '.join(active)}"
        return HierarchyView(hierarchy.name, HierarchyStatus.WARNING, active[0], why)
    server = active[0]
    troubled = [
        f"{tag} on {other} is {cluster.state_of(other, tag).state}"
        for other in servers
        if other != server
        for tag in sorted(hierarchy.tags)
        if cluster.state_of(other, tag).state in (InstanceState.OSF, InstanceState.UNKNOWN)
    ]
    partial = [
        tag for tag in sorted(hierarchy.tags) if not cluster.state_of(server, tag).state.in_service
    ]
    if partial:
        why = f"in service on {server}, but not {', '.join(partial)}"
        return HierarchyView(hierarchy.name, HierarchyStatus.WARNING, server, why)
    if troubled:
        return HierarchyView(hierarchy.name, HierarchyStatus.WARNING, server, "; ".join(troubled))
    return HierarchyView(hierarchy.name, HierarchyStatus.NORMAL, server, f"in service on {server}")


def _alive(cluster: Cluster, server: str) -> bool:
    known = cluster.servers.get(server)
    return bool(known and known.alive)
