"""What one agent should do now: the pure decision step of observe → decide → act.

``decide`` takes one consistent ``Cluster`` view, the agent's own server name and what the
agent knows only locally (which resources it has in service, which restores failed), and
returns one ``Step`` per hierarchy that needs action, each with a readable reason that the
agent logs once and tests assert.

The ownership rule it enforces: a hierarchy is restored on a server only when no other
server owns any of its resources (owner keys are bound to their holder's lease, so an owner
key exists exactly while its owner may still have the resource in service).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from vigil.engine import failover
from vigil.engine.order import remove_waves, restore_waves
from vigil.model.cluster import Cluster, Hierarchy, Intent
from vigil.model.policies import ConfirmDefault


class StepKind(StrEnum):
    RESTORE = "restore"  # claim ownership, then restore children-first
    REMOVE = "remove"  # remove parents-first, then release ownership
    ADOPT = "adopt"  # at start: claim ownership of what was found running, keep it running
    TAKEOVER = "takeover"  # want the hierarchy here: its server died (a failover)
    SWITCHBACK = "switchback"  # want the hierarchy back here, its preferred server
    CONFIRM = "confirm"  # ask an operator before taking over (confirm failover)
    WAIT = "wait"  # nothing to do until something changes elsewhere
    BLOCKED = "blocked"  # a failover cannot happen: said once in the event log, then wait


@dataclass(frozen=True)
class LocalView:
    """What only this agent knows.

    ``running``: resources this agent has in service now. ``failed``: hierarchy name ->
    the intent revision whose restore failed here (not retried until the intent changes).
    """

    running: frozenset[str] = frozenset()
    failed: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One decision about one hierarchy."""

    kind: StepKind
    hierarchy: str
    tags: frozenset[str]
    reason: str
    #: restore or remove order, in waves of resources that may run in parallel
    waves: tuple[tuple[str, ...], ...] = ()
    #: resources whose ownership this server must claim before restoring
    claim: frozenset[str] = frozenset()
    #: resources whose ownership this server releases after removing
    release: frozenset[str] = frozenset()
    intent_revision: int = 0
    #: for TAKEOVER/CONFIRM: the server failed over from, and the servers already tried
    origin: str | None = None
    tried: tuple[str, ...] = ()
    #: for BLOCKED: the server that records it in the event log (None: the first alive one)
    announcer: str | None = None
    #: for REMOVE: what the removed instances report (OSU); for ADOPT: what the adopted
    #: ones report (ISP)
    state_reason: str = ""
    #: for REMOVE: the resources must go whatever it takes (fencing, an orderly stop, a
    #: copy found running at start): a remove that fails is escalated (see ``escalates``)
    forced: bool = False


def decide(cluster: Cluster, me: str, local: LocalView, now: float = 0.0) -> list[Step]:
    """Every step this server should take now, one per hierarchy that needs one.

    ``now`` (wall-clock seconds) times out pending failover confirmations."""
    steps = []
    view = cluster
    for hierarchy in cluster.hierarchies:
        step = _decide_hierarchy(cluster, me, local, hierarchy) or _takeover(
            view, me, hierarchy, now
        )
        if step is not None:
            steps.append(step)
        if step is not None and step.kind in (StepKind.TAKEOVER, StepKind.CONFIRM):
            # later decisions in this pass see this hierarchy as coming here (N+1 rule)
            intents = {t: Intent(t, me, cluster.intent_revision(hierarchy)) for t in hierarchy.tags}
            view = view.evolve(intents={**view.intents, **intents})
    orphans = local.running - set(cluster.resources)
    if orphans:
        steps.append(
            Step(
                StepKind.REMOVE,
                ", ".join(sorted(orphans)),
                frozenset(orphans),
                "resources deleted from the cluster are still in service here",
                waves=(tuple(sorted(orphans)),),
                release=frozenset(orphans),
                state_reason="deleted",
            )
        )
    return steps


def escalates(step: Step, timed_out: bool) -> bool:
    """Whether a failed remove in ``step`` is escalated through its kit (the forceful stop:
    kill, force unmount, delete the address). Always when the remove overran its timeout
    (the kit hangs, and only force ends it); when it failed otherwise, only for a
    ``forced`` removal. A hierarchy moving on request stays owned here instead, and the
    failure (a process holding a volume) is reported for an operator to act on."""
    return timed_out or step.forced


def _decide_hierarchy(
    cluster: Cluster, me: str, local: LocalView, hierarchy: Hierarchy
) -> Step | None:
    tags = hierarchy.tags
    wanted = cluster.intended_server(hierarchy)
    running = tags & local.running
    owners = cluster.owner_of(hierarchy)
    if wanted != me and not running and me not in owners:
        return None  # not wanted here, and nothing of it is here (most hierarchies)
    revision = cluster.intent_revision(hierarchy)
    mine = (
        frozenset(t for t in tags if t in cluster.owners and cluster.owners[t].server == me)
        if me in owners
        else frozenset()
    )
    others = sorted(owners - {me})
    name = hierarchy.name
    if wanted == me and me in cluster.hierarchy_servers(hierarchy):
        if local.failed.get(name) == revision:
            return None
        if others:
            why = (
                f"{name} is wanted here but still owned by {', '.join(others)}: waiting for release"
            )
            return Step(StepKind.WAIT, name, tags, why, intent_revision=revision)
        if running == tags and mine == tags:
            return None
        waves = tuple(tuple(w) for w in restore_waves(cluster, tags))
        why = f"restoring {name} on {me}: " + _restore_cause(cluster, hierarchy, me)
        return Step(
            StepKind.RESTORE, name, tags, why, waves, claim=tags - mine, intent_revision=revision
        )
    if running or mine:
        waves = tuple(tuple(w) for w in remove_waves(cluster, running))
        where = f"it is wanted on {wanted}" if wanted else "it is wanted out of service"
        if wanted == me:
            where = f"{me} no longer has every resource of {name} extended here"
        why = f"removing {name} from {me}: {where}"
        return Step(
            StepKind.REMOVE,
            name,
            tags,
            why,
            waves,
            release=mine,
            intent_revision=revision,
            state_reason=standby_reason(cluster, hierarchy, me),
        )
    return None


def _takeover(cluster: Cluster, me: str, hierarchy: Hierarchy, now: float) -> Step | None:
    """A failover to this server (its old server died), or an automatic switchback here."""
    name, tags = hierarchy.name, hierarchy.tags
    revision = cluster.intent_revision(hierarchy)
    dead = failover.orphaned_by(cluster, hierarchy)
    failed = None if dead else failover.failed_restore_on(cluster, hierarchy)
    if dead is None and failed is None:
        back = failover.switchback_target(cluster, hierarchy)
        if back == me:
            why = f"switching {name} back to {me}, its preferred server (automatic switchback)"
            return Step(StepKind.SWITCHBACK, name, tags, why, intent_revision=revision)
        return None
    away = dead or failed or ""
    blocked = failover.failover_blocked(cluster, hierarchy, away)
    if blocked:
        return Step(StepKind.BLOCKED, name, tags, f"{name} stays off {away}: {blocked}")
    intent = cluster.intent(hierarchy)
    if intent and intent.origin and not failover.restored_by(cluster, hierarchy, away):
        # the failover in progress goes on: skip every server that already failed it
        tried, origin = tuple(dict.fromkeys([*intent.tried, away])), intent.origin
    else:
        tried, origin = (away,), away
    target = failover.choose_target(cluster, hierarchy, tried)
    if target.server is None:
        why = f"{name} cannot fail over from {away}: {target.reason}"
        return Step(StepKind.BLOCKED, name, tags, why)
    if target.server != me:
        return None
    cause = f"{away} is down" if dead else f"{away} failed to restore it"
    why = f"failing {name} over from {away} to {me}: {cause}; {target.reason}"
    step = Step(
        StepKind.TAKEOVER, name, tags, why, intent_revision=revision, origin=origin, tried=tried
    )
    return _confirmed(cluster, me, hierarchy, step, now)


def _confirmed(cluster: Cluster, me: str, hierarchy: Hierarchy, step: Step, now: float) -> Step:
    """Apply the seed's "confirm failover": ask, wait for the answer or the timeout."""
    policy = cluster.server_policy(me)
    if not policy.confirm_failover:
        return step
    pending = cluster.confirmations.get(hierarchy.name)
    if pending is None or pending.target != me or pending.origin != step.origin:
        why = (
            f"{step.reason}; waiting for an operator: vigil confirm-failover {hierarchy.name} "
            f"--yes|--no (default {policy.confirm_default} in {policy.confirm_timeout:g}s)"
        )
        return replace(step, kind=StepKind.CONFIRM, reason=why)
    if pending.decision is None and now - pending.since < policy.confirm_timeout:
        return replace(
            step, kind=StepKind.WAIT, reason=f"{hierarchy.name}: failover awaits confirmation"
        )
    proceed = pending.decision
    if proceed is None:
        proceed = policy.confirm_default is ConfirmDefault.PROCEED
        answer = f"no answer in {policy.confirm_timeout:g}s: default {policy.confirm_default}"
    else:
        answer = "confirmed by an operator" if proceed else "refused by an operator"
    if not proceed:
        why = f"{hierarchy.name} stays out of service: failover to {me} {answer}"
        return replace(step, kind=StepKind.BLOCKED, reason=why, announcer=me)
    return replace(step, reason=f"{step.reason} ({answer})")


def _restore_cause(cluster: Cluster, hierarchy: Hierarchy, me: str) -> str:
    intent = cluster.intents.get(hierarchy.name)
    if intent and intent.reason:
        return intent.reason
    return f"it is wanted in service on {me}"


def standby_reason(cluster: Cluster, hierarchy: Hierarchy, me: str) -> str:
    """The reason shown for an out-of-service instance on ``me`` ("in service on node2")."""
    owners = sorted(cluster.owner_of(hierarchy) - {me})
    if owners:
        return f"in service on {', '.join(owners)}"
    wanted = cluster.intended_server(hierarchy)
    if wanted and wanted != me:
        return f"wanted in service on {wanted}"
    return "out of service"
