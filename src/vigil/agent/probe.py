"""Probing at start: what is really running on this server, reconciled with the store.

An agent that starts (after a crash, a reboot or maintenance) may find resources still in
service that it did not start in this life. Each resource extended here is checked once;
the engine says, per hierarchy found running, whether it is adopted (claimed, and
monitored from now on) or removed at once (``engine.start``), and this module does it.
"""

from __future__ import annotations

import logging

from vigil.agent.actor import Actor
from vigil.engine.plan import StepKind
from vigil.engine.start import after_probe
from vigil.errors import VigilError
from vigil.kits.base import CheckStatus
from vigil.model.cluster import Cluster, Hierarchy
from vigil.model.states import InstanceState

log = logging.getLogger("vigil.agent")


async def probe(actor: Actor, cluster: Cluster) -> None:
    """Adopt or remove what is found running here."""
    me = actor.server
    for hierarchy in cluster.hierarchies:
        if me not in cluster.hierarchy_servers(hierarchy):
            continue
        found = await _running(actor, cluster, hierarchy)
        if not found:
            continue
        step = after_probe(cluster, me, hierarchy, found)
        if step.kind is StepKind.ADOPT:
            if await actor.claim(cluster, step) is not None:
                actor.local.adopted(cluster.resources[tag] for tag in found)
                for tag in found:
                    await actor.report(tag, InstanceState.ISP, step.state_reason)
                await actor.event("probe-adopted", step.reason, hierarchy.name)
                continue
            step = after_probe(cluster, me, hierarchy, found, refused=True)
        await actor.event("probe-removed", step.reason, hierarchy.name)
        actor.local.found_running(found)
        await actor.remove_waves(cluster, step.waves, step, step.state_reason)


async def _running(actor: Actor, cluster: Cluster, hierarchy: Hierarchy) -> list[str]:
    """The resources of ``hierarchy`` whose check here does not say stopped."""
    found = []
    for tag in sorted(hierarchy.tags):
        try:
            check = await actor.runner.check(cluster.resources[tag])
        except VigilError as exc:
            log.warning("probe of %s on %s failed: %s", tag, actor.server, exc)
            continue
        if check.status is not CheckStatus.STOPPED:
            found.append(tag)
    return found
