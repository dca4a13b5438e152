"""At an agent's start: what to do with resources found running here (pure).

An agent that starts (after a crash, a reboot or maintenance) may find resources in
service that it did not start in this life (its probe checks each resource extended
here once). A hierarchy found running that is wanted here, with nobody else owning any of
it, is adopted: claimed, and monitored from now on. One wanted elsewhere, or owned by
another server, or whose claim was refused, is removed at once, so that it is never left
active in two places.
"""

from __future__ import annotations

from collections.abc import Sequence

from vigil.engine.order import remove_waves
from vigil.engine.plan import Step, StepKind
from vigil.model.cluster import Cluster, Hierarchy

#: what adopted instances report
ADOPTED = "in service (found running at start)"


def after_probe(
    cluster: Cluster, me: str, hierarchy: Hierarchy, found: Sequence[str], *, refused: bool = False
) -> Step:
    """ADOPT (claim the whole hierarchy, keep ``found`` running) or REMOVE (``found``,
    parents first). ``refused``: the claim of an adoption was refused (another server
    came first): remove. The step's reason is the event that records it."""
    found = sorted(found)
    seen = f"probe: {', '.join(found)} found running on {me}"
    revision = cluster.intent_revision(hierarchy)
    others = cluster.owner_of(hierarchy) - {me}
    wanted = cluster.intended_server(hierarchy)
    if wanted == me and not others and not refused:
        return Step(
            StepKind.ADOPT,
            hierarchy.name,
            hierarchy.tags,
            f"{seen}: wanted here, adopted",
            waves=(tuple(found),),
            claim=hierarchy.tags,
            intent_revision=revision,
            state_reason=ADOPTED,
        )
    where = (
        f"owned by {', '.join(sorted(others))}" if others else f"wanted on {wanted or 'no server'}"
    )
    return Step(
        StepKind.REMOVE,
        hierarchy.name,
        hierarchy.tags,
        f"{seen} but {where}: removing it here",
        waves=tuple(tuple(wave) for wave in remove_waves(cluster, found)),
        intent_revision=revision,
        state_reason=f"removed at start: {where}",
        forced=True,
    )
