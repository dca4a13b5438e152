"""Restore and remove order within a hierarchy.

Restore brings children up before their parents (an address before the service that binds
it); remove takes parents down before their children. Resources in one wave do not depend
on each other and the agent runs them in parallel.
"""

from __future__ import annotations

from collections.abc import Iterable

from vigil.model import graph
from vigil.model.cluster import Cluster


def restore_waves(cluster: Cluster, tags: Iterable[str]) -> list[list[str]]:
    """``tags`` in restore order: waves, children first."""
    return graph.layers_children_first(tags, cluster.edges)


def remove_waves(cluster: Cluster, tags: Iterable[str]) -> list[list[str]]:
    """``tags`` in remove order: waves, parents first."""
    return graph.layers_parents_first(tags, cluster.edges)
