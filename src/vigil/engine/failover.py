"""Which server takes a hierarchy over, and when: failover, cascading, N+1, switchback.

Pure rules (DESIGN.md section 4). The target of a failover is the preferred server (lowest
priority number) that is alive, not stopped or in maintenance, has the hierarchy extended,
passes its kits' eligibility (what its agent last reported: a mirror target that is not
in sync is not eligible), passes the N+1 rule, and has not already failed to restore it in
this failover. When none qualifies the hierarchy stays out of service and the reason says
why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vigil.model.cluster import Cluster, Hierarchy
from vigil.model.policies import Switchback
from vigil.model.states import InstanceState


@dataclass(frozen=True)
class Target:
    """The chosen server, or None with the reason no server qualifies."""

    server: str | None
    reason: str


def priorities(cluster: Cluster, hierarchy: Hierarchy) -> dict[str, int]:
    """server -> priority of the hierarchy (its root's instances)."""
    return dict(cluster.resources[hierarchy.name].instances)


def primary(cluster: Cluster, hierarchy: Hierarchy) -> str:
    """The hierarchy's most preferred server (priority 1 normally)."""
    prio = priorities(cluster, hierarchy)
    return min(prio, key=lambda s: prio[s])


def n_plus_one_conflict(cluster: Cluster, hierarchy: Hierarchy, server: str) -> str | None:
    """Why ``server``, a shared standby, may not take ``hierarchy`` now (None: it may).

    An N+1 standby serves at most one primary at a time: it refuses a hierarchy whose
    primary differs from the primary of an N+1 hierarchy it already holds for another."""
    if not cluster.hierarchy_policy(hierarchy).n_plus_one:
        return None
    mine = primary(cluster, hierarchy)
    for other in cluster.hierarchies:
        if other.tags == hierarchy.tags or not cluster.hierarchy_policy(other).n_plus_one:
            continue
        if cluster.intended_server(other) != server:
            continue
        served = primary(cluster, other)
        if served not in (server, mine):
            return f"{server} already serves {other.name} for {served} (N+1: one primary at a time)"
    return None


def ineligibility(
    cluster: Cluster, hierarchy: Hierarchy, server: str, tried: tuple[str, ...]
) -> str | None:
    """Why ``server`` cannot take ``hierarchy`` over now, or None when it can."""
    known = cluster.servers.get(server)
    if server in tried:
        return f"{server} already failed to restore it"
    if known is None or not known.alive:
        return f"{server} is down"
    if server in cluster.stopped:
        return f"{server} is stopped ({cluster.stopped[server]})"
    if server not in cluster.hierarchy_servers(hierarchy):
        return f"{hierarchy.name} is not extended to {server}"
    return cluster.ineligible(server, hierarchy.tags) or n_plus_one_conflict(
        cluster, hierarchy, server
    )


def choose_target(cluster: Cluster, hierarchy: Hierarchy, exclude: tuple[str, ...] = ()) -> Target:
    """The preferred eligible server for ``hierarchy``, skipping ``exclude``."""
    prio = priorities(cluster, hierarchy)
    refusals = []
    for server in sorted(prio, key=lambda s: (prio[s], s)):
        why = ineligibility(cluster, hierarchy, server, exclude)
        if why is None:
            return Target(
                server, f"{server} is the preferred eligible server (priority {prio[server]})"
            )
        refusals.append(why)
    return Target(None, "no server can take it: " + "; ".join(refusals))


def failover_blocked(cluster: Cluster, hierarchy: Hierarchy, origin: str) -> str | None:
    """Why automatic failover of ``hierarchy`` away from ``origin`` is off, or None."""
    if not cluster.hierarchy_policy(hierarchy).automatic_failover:
        return f"automatic failover is off for {hierarchy.name}"
    if not cluster.server_policy(origin).failover:
        return f"automatic failover is off for {origin}"
    return None


def resource_failover_blocked(
    cluster: Cluster, hierarchy: Hierarchy, tag: str, server: str
) -> str | None:
    """Why a failed resource on ``server`` may not move the hierarchy, or None."""
    blocked = failover_blocked(cluster, hierarchy, server)
    if blocked:
        return blocked
    if not cluster.resource_policy(tag).failover:
        return f"failover is off for resource {tag}"
    if cluster.server_policy(server).block_resource_failover:
        return f"resource failover is blocked on {server}"
    return None


def orphaned_by(cluster: Cluster, hierarchy: Hierarchy) -> str | None:
    """The dead server a hierarchy must be taken over from, or None.

    A hierarchy needs a takeover when it is wanted on a server whose agent is gone (its
    lease expired) without an orderly stop, and no server owns any of its resources any more
    (the owner keys died with the lease: the old owner has fenced itself)."""
    wanted = cluster.intended_server(hierarchy)
    if wanted is None or wanted in cluster.stopped:
        return None
    server = cluster.servers.get(wanted)
    if server is not None and server.alive:
        return None
    if cluster.owner_of(hierarchy):
        return None
    return wanted


def failed_restore_on(cluster: Cluster, hierarchy: Hierarchy) -> str | None:
    """During a failover (an intent with an origin), the live target that reported a failed
    restore of this very intent and owns nothing of it: the cascade goes on without it."""
    intent = cluster.intent(hierarchy)
    if intent is None or intent.origin is None or intent.server is None:
        return None
    target = intent.server
    if cluster.owner_of(hierarchy):
        return None
    revision = cluster.intent_revision(hierarchy)
    for tag in hierarchy.tags:
        seen = cluster.observed.get((target, tag))
        if seen and seen.state is InstanceState.OSF and seen.intent_revision == revision:
            return target
    return None


def restored_by(cluster: Cluster, hierarchy: Hierarchy, server: str) -> bool:
    """Whether ``server`` had the hierarchy in service for its current intent (a failover to
    it completed, so a later failover away from it starts afresh)."""
    revision = cluster.intent_revision(hierarchy)
    for tag in hierarchy.tags:
        seen = cluster.observed.get((server, tag))
        if not (seen and seen.state.in_service and seen.intent_revision == revision):
            return False
    return True


def switchback_target(cluster: Cluster, hierarchy: Hierarchy) -> str | None:
    """With automatic switchback, the more preferred server the hierarchy should return to
    (never a less preferred one), once it is fully in service where it is now."""
    if cluster.hierarchy_policy(hierarchy).switchback is not Switchback.AUTOMATIC:
        return None
    current = cluster.intended_server(hierarchy)
    if current is None or cluster.owner_of(hierarchy) != {current}:
        return None
    if not all(cluster.state_of(current, t).state.in_service for t in hierarchy.tags):
        return None
    prio = priorities(cluster, hierarchy)
    best = choose_target(cluster, hierarchy)
    if not best.server or best.server == current or prio[best.server] >= prio.get(current, 1000):
        return None
    # a server whose instances failed there (OSF) has not "come back": no ping-pong
    if any(cluster.state_of(best.server, t).state is InstanceState.OSF for t in hierarchy.tags):
        return None
    return best.server


def what_if_down(cluster: Cluster, server: str) -> list[tuple[str, str | None, str]]:
    """``vigil plan --fail SERVER``: for each hierarchy in service (or wanted) on ``server``,
    where it would go if ``server`` died now: (hierarchy, target or None, why)."""
    servers = dict(cluster.servers)
    if server in servers:
        servers[server] = replace(servers[server], alive=False)
    owners = {t: o for t, o in cluster.owners.items() if o.server != server}
    dead = replace(cluster, servers=servers, owners=owners)
    answers: list[tuple[str, str | None, str]] = []
    for hierarchy in dead.hierarchies:
        if dead.intended_server(hierarchy) != server:
            continue
        blocked = failover_blocked(dead, hierarchy, server)
        if blocked:
            answers.append((hierarchy.name, None, f"stays out of service: {blocked}"))
            continue
        target = choose_target(dead, hierarchy, (server,))
        answers.append((hierarchy.name, target.server, target.reason))
    return answers
