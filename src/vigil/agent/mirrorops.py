"""The mirror kit's administrator operations (``vigil mirror``), carried out by an agent
for the API: this server's view of a mirror; pause, continue, resync and break of a
target (on the source's server); forcing this server's copy eligible (the seed's chapter
7: the source failed while this target was not in sync); discarding this copy's
split-brain changes. Each is recorded in the cluster event log with who asked.

The API forwards each request to the server it concerns (``vigil.api.mirror``).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from vigil.agent.operations import Operations, Outcome
from vigil.agent.storeio import event_operation
from vigil.engine import changes
from vigil.errors import Conflict, StoreError, ValidationError
from vigil.kits.mirror import ops
from vigil.model.cluster import Cluster, Resource

__all__ = ["MirrorOperations", "active_server"]

ACTIONS = {"pause", "continue", "resync", "break"}


def active_server(cluster: Cluster, tag: str) -> str | None:
    """The server that has the mirror's hierarchy in service (its source), or None."""
    owners = cluster.owner_of(cluster.hierarchy(tag))
    return min(owners) if owners else None


class MirrorOperations:
    """Operations on mirror resources, through the agent's ``Operations``."""

    def __init__(self, operations: Operations) -> None:
        self.operations = operations

    async def mirror(self, tag: str) -> tuple[Cluster, Resource]:
        """The mirror resource ``tag`` (``ValidationError`` when it is another kind)."""
        cluster = await self.operations.cluster()
        resource = changes.require_resource(cluster, tag)
        if resource.kit != "mirror":
            raise ValidationError(f"{tag} is a {resource.kit} resource, not a mirror")
        return cluster, resource

    def state_dir(self, tag: str) -> Path:
        return self.operations.runner.state_dir / "kits" / tag

    async def event(self, kind: str, message: str, hierarchy: str) -> None:
        """Record ``message`` in the cluster event log (a failure to record is not the
        operation's failure: it is logged by the caller's agent)."""
        op = event_operation(self.operations.server, kind, message, hierarchy=hierarchy)
        with contextlib.suppress(StoreError):
            await self.operations.store.txn((), (op,))

    async def local(self, tag: str) -> dict[str, Any]:
        """This server's view of its copy of ``tag``."""
        await self.mirror(tag)
        view = await asyncio.to_thread(ops.local_view, self.state_dir(tag))
        return {"server": self.operations.server, **view}

    async def command(self, tag: str, action: str, target: str, user: str) -> Outcome:
        """Pause, continue, resync or break ``target``, on the source's server."""
        if action not in ACTIONS:
            raise ValidationError(f"unknown mirror operation {action!r}")
        cluster, resource = await self.mirror(tag)
        me = self.operations.server
        source = active_server(cluster, tag)
        if source is None:
            raise Conflict(
                f"{tag} is in service nowhere: no source runs; bring it in service first"
            )
        if source != me:
            raise Conflict(f"the source of {tag} is {source}: ask its agent (the API forwards)")
        if target not in resource.instances or target == me:
            others = ", ".join(s for s in resource.servers_by_priority if s != me)
            raise ValidationError(f"{target} is not a target of {tag} (its targets: {others})")
        request = {"command": action, "target": target, "by": user}
        try:
            answer = await asyncio.to_thread(ops.source_command, self.state_dir(tag), request)
        except ops.MirrorUnavailable as exc:
            raise Conflict(f"{tag} on {me}: {exc}") from exc
        if not answer.get("ok"):
            raise Conflict(f"{tag}: {answer.get('error')}")
        message = f"{tag}: {answer.get('message')} ({action} by {user})"
        await self.event(f"mirror-{action}", message, cluster.hierarchy(tag).name)
        return Outcome(message)

    async def force(self, tag: str, user: str, reason: str) -> Outcome:
        """Make this server's copy eligible (refused while another server has the
        mirror: its source holds the newest data)."""
        cluster, _ = await self.mirror(tag)
        me = self.operations.server
        source = active_server(cluster, tag)
        if source is not None and source != me:
            raise Conflict(
                f"{tag} is in service on {source}, whose copy is the newest: forcing {me} "
                "would go on from older data; switch over once it is Mirroring instead"
            )
        try:
            said = await asyncio.to_thread(ops.force, self.state_dir(tag), user, reason)
        except ops.MirrorUnavailable as exc:
            raise Conflict(f"{tag} on {me}: {exc}") from exc
        message = f"{tag} on {me}: {said} (reason: {reason or 'none given'})"
        await self.event("mirror-forced", message, cluster.hierarchy(tag).name)
        return Outcome(
            message,
            detail=(
                "a failover blocked for want of an eligible server goes on by itself; "
                f"otherwise bring it in service: vigil in-service {tag} --on {me}"
            ),
        )

    async def discard(self, tag: str, user: str, ancestor: str, winner: str, full: bool) -> Outcome:
        """Discard this copy's changes since it diverged from ``winner``'s."""
        cluster, _ = await self.mirror(tag)
        me = self.operations.server
        try:
            said = await asyncio.to_thread(
                ops.discard, self.state_dir(tag), user, ancestor, winner, full
            )
        except ops.MirrorUnavailable as exc:
            raise Conflict(f"{tag} on {me}: {exc}") from exc
        message = f"{tag} on {me}: {said} (split brain resolved by {user})"
        await self.event("mirror-discarded", message, cluster.hierarchy(tag).name)
        return Outcome(message)
