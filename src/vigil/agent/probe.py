"""Probing at start: what is really running on this server, reconciled with the store.

An agent that starts (after a crash, a reboot or maintenance) may find resources still in
service that it did not start in this life. Each resource extended here is checked once:
one that runs and is wanted here, with nobody else owning it, is adopted (claimed, and
monitored from now on); one that runs but is wanted elsewhere, or owned by another server,
is removed at once, so a hierarchy is never left active in two places.
"""

from __future__ import annotations

import logging

from vigil.agent.actor import Actor
from vigil.engine.order import remove_waves
from vigil.engine.plan import Step, StepKind
from vigil.errors import VigilError
from vigil.kits.base import CheckStatus
from vigil.model.cluster import Cluster
from vigil.model.states import InstanceState

log = logging.getLogger("vigil.agent")


async def probe(actor: Actor, cluster: Cluster) -> None:
    """Adopt or remove what is found running here."""
    me = actor.server
    for hierarchy in cluster.hierarchies:
        if me not in cluster.hierarchy_servers(hierarchy):
            continue
        found = []
        for tag in sorted(hierarchy.tags):
            try:
                check = await actor.runner.check(cluster.resources[tag])
            except VigilError as exc:
                log.warning("probe of %s on %s failed: %s", tag, me, exc)
                continue
            if check.status is not CheckStatus.STOPPED:
                found.append(tag)
        if not found:
            continue
        others = cluster.owner_of(hierarchy) - {me}
        wanted = cluster.intended_server(hierarchy)
        step = Step(
            StepKind.RESTORE,
            hierarchy.name,
            hierarchy.tags,
            f"probe: {', '.join(found)} found running on {me}",
            claim=frozenset(hierarchy.tags),
            intent_revision=cluster.intent_revision(hierarchy),
        )
        if wanted == me and not others and await actor.claim(cluster, step):
            actor.running.update(found)
            for tag in found:
                actor.known[tag] = cluster.resources[tag]
                await actor.report(tag, InstanceState.ISP, "in service (found running at start)")
            await actor.event(
                "probe-adopted", f"{step.reason}: wanted here, adopted", hierarchy.name
            )
            continue
        where = (
            f"owned by {', '.join(sorted(others))}"
            if others
            else f"wanted on {wanted or 'no server'}"
        )
        await actor.event(
            "probe-removed", f"{step.reason} but {where}: removing it here", hierarchy.name
        )
        actor.running.update(found)
        waves = remove_waves(cluster, found)
        await actor.remove_waves(cluster, waves, step, f"removed at start: {where}")
