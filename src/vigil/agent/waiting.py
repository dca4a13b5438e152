"""Waiting for the agents to carry out a change an operation wrote: on the agent's cached
view of the cluster, which its watch keeps current (no polling), until the outcome is known
or the caller's time runs out.

``Waiting`` is a part of ``Operations``: it needs its ``cache`` (and, for an
``Operations`` without an agent, a watch of its own).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from vigil.agent.cache import ClusterCache
from vigil.model.cluster import Cluster, Hierarchy
from vigil.model.states import InstanceState


@dataclass(frozen=True)
class Outcome:
    """What an operation did, and where things stand after it."""

    summary: str
    ok: bool = True
    detail: str = ""
    revision: int = 0


class Waiting:
    cache: ClusterCache
    _own_cache: bool
    _own_watch: asyncio.Task[None] | None

    async def wait_in_service(
        self, tag: str, server: str, revision: int, timeout: float, summary: str
    ) -> Outcome:
        """Wait, on the cache's watch, until the hierarchy of ``tag`` is in service on
        ``server`` after the change written at ``revision`` (or failed, moved, timed out)."""
        deadline = time.monotonic() + timeout
        cluster = await self._view_after(revision, deadline)
        while True:
            if tag not in cluster.resources:
                return Outcome(summary, False, f"{tag} was deleted meanwhile")
            hierarchy = cluster.hierarchy(tag)
            states = {t: cluster.state_of(server, t) for t in hierarchy.tags}
            failed = [
                s
                for s in states.values()
                if s.state is InstanceState.OSF and s.intent_revision >= revision
            ]
            if failed:
                detail = "; ".join(f"{s.tag}: {s.reason}" for s in failed)
                return Outcome(
                    summary,
                    False,
                    f"{hierarchy.name} could not be brought in service on {server}: {detail}",
                )
            intent = cluster.intent(hierarchy)
            if intent and intent.revision > revision and intent.server != server:
                detail = f"{hierarchy.name} is now wanted on {intent.server}: {intent.reason}"
                return Outcome(summary, False, detail)
            if all(s.state.in_service for s in states.values()) and _owned_by(
                cluster, hierarchy, server
            ):
                return Outcome(
                    summary, True, f"{hierarchy.name} is in service on {server}", revision
                )
            if time.monotonic() > deadline:
                pending = ", ".join(
                    f"{t} {s.state} ({s.reason})" for t, s in sorted(states.items())
                )
                return Outcome(
                    summary, False, f"not in service on {server} after {timeout:g}s: {pending}"
                )
            cluster = await self._next_view(cluster, deadline)

    async def wait_released(
        self, tags: frozenset[str], revision: int, timeout: float, summary: str
    ) -> Outcome:
        """Wait, on the cache's watch, until no server owns any of ``tags`` after the change
        written at ``revision`` (or they are wanted somewhere again, or time runs out)."""
        deadline = time.monotonic() + timeout
        cluster = await self._view_after(revision, deadline)
        while True:
            owned = sorted(t for t in tags if t in cluster.owners)
            if not owned:
                return Outcome(summary, True, "out of service on every server", revision)
            moved = [
                cluster.intents[t]
                for t in owned
                if t in cluster.intents
                and cluster.intents[t].revision > revision
                and cluster.intents[t].server
            ]
            if moved:  # e.g. a remove failed and the owner took the hierarchy back
                return Outcome(
                    summary, False, f"wanted on {moved[0].server} again: {moved[0].reason}"
                )
            if time.monotonic() > deadline:
                where = ", ".join(f"{t} on {cluster.owners[t].server}" for t in owned)
                return Outcome(summary, False, f"still in service after {timeout:g}s: {where}")
            cluster = await self._next_view(cluster, deadline)

    # --- waiting on the cache's watch ---------------------------------------------------------

    async def _view_after(self, revision: int, deadline: float) -> Cluster:
        """The cached view once it holds the change written at ``revision`` (or the newest
        one at ``deadline``, on ``time.monotonic``)."""
        self._watching()
        if self.cache.revision < revision:
            await self.cache.changed(revision - 1, max(0.0, deadline - time.monotonic()))
        return self.cache.cluster

    async def _next_view(self, cluster: Cluster, deadline: float) -> Cluster:
        """The next cached view after ``cluster`` (or the same one at ``deadline``)."""
        await self.cache.changed(cluster.revision, max(0.0, deadline - time.monotonic()))
        return self.cache.cluster

    def _watching(self) -> None:
        """Start the watch of a cache of this object's own (an agent's cache is fed by the
        agent): until cancelled, it lives as long as the event loop."""
        if self._own_cache and self._own_watch is None:
            self._own_watch = asyncio.create_task(self.cache.run(), name="operations watch")


def _owned_by(cluster: Cluster, hierarchy: Hierarchy, server: str) -> bool:
    return all(t in cluster.owners and cluster.owners[t].server == server for t in hierarchy.tags)
