"""Before deleting a hierarchy (pure): the change that takes it out of service first, and
the refusal while it is in service on a backup.

A delete takes ``tag`` and the resources below it that nothing else needs
(``changes.deletion_set``). Anything of it that is in service (or wanted in service) is
first detached from the rest of the cluster and taken out of service everywhere
(``detach``); the deletion itself (``changes.delete_hierarchy``) is refused while any of it
is still owned.
"""

from __future__ import annotations

from collections.abc import Mapping

from vigil.engine.changes import Change, deletion_set
from vigil.errors import Conflict
from vigil.model.cluster import Cluster


def detach(cluster: Cluster, tag: str, requested_by: str) -> Change | None:
    """Before deleting ``tag``: the change that takes what is doomed out of service on
    every server and cuts its dependencies with resources that stay (None when nothing of
    it is in service or wanted in service anywhere)."""
    doomed = deletion_set(cluster, tag)
    if not any(
        t in cluster.owners or (cluster.intents.get(t) and cluster.intents[t].server)
        for t in doomed
    ):
        return None
    crossing = frozenset(
        d for d in cluster.dependencies if (d.parent in doomed) != (d.child in doomed)
    )
    return Change(
        deleted_dependencies=crossing,
        intents=dict.fromkeys(doomed),
        intent_reason=f"being deleted by {requested_by}",
        summary=f"{tag}: out of service before deletion",
    )


def refuse_on_backup(cluster: Cluster, tag: str, warnings: Mapping[str, str]) -> None:
    """Refuse (``Conflict``) to delete ``tag`` while its hierarchy is in service on a
    backup (not its priority-1 server) when the kit of a doomed resource warns against
    that: ``warnings`` maps a kit's name to its warning (``Kit.delete_on_backup``, where
    ``TAG`` stands for the hierarchy)."""
    doomed = deletion_set(cluster, tag)
    hierarchy = cluster.hierarchy(tag)
    active = cluster.intended_server(hierarchy)
    primary = cluster.resources[hierarchy.name].servers_by_priority[0]
    if active is None or primary == active:
        return
    for member in sorted(doomed):
        warning = warnings.get(cluster.resources[member].kit)
        if warning:
            raise Conflict(
                f"{hierarchy.name} is in service on {active}, a backup (its primary is "
                f"{primary}): {warning.replace('TAG', hierarchy.name)}",
            )
