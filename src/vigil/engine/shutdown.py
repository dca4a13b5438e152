"""What an agent does with its hierarchies when it stops, or must let them go (pure).

An orderly stop follows the mode the agent was stopped with, else its server's shutdown
strategy (DESIGN.md section 4):

* ``hold`` (the seed's default, "Do Not Switch Over Resources"): everything in service here
  is taken out of service, and stays so (nobody takes it over) until the server is back;
* ``switchover``: each hierarchy wanted here is wanted on its next eligible server first,
  then everything here is taken out of service;
* ``maintenance`` (``vigil agent stop --leave-resources``): everything keeps running,
  unmonitored (ISU), and nobody takes it over until the agent is back.

Without a lease (fencing) everything in service here is taken out of service at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vigil.engine import failover
from vigil.engine.order import remove_waves
from vigil.engine.plan import Step, StepKind
from vigil.model.cluster import Cluster, Resource
from vigil.model.policies import ShutdownStrategy, StopMode

#: what resources left running in maintenance report (ISU)
LEFT_RUNNING = "maintenance: left running, not monitored"


@dataclass(frozen=True)
class Move:
    """Want ``hierarchy`` on ``target`` (a switchover before the stop)."""

    hierarchy: str
    target: str
    reason: str


@dataclass(frozen=True)
class Removal:
    """Take ``step.tags`` out of service here, parents first, in ``cluster``: the view with
    the last known definitions of resources deleted meanwhile, so they are removed too."""

    cluster: Cluster
    step: Step


@dataclass(frozen=True)
class Leaving:
    """An orderly stop: the moves first, then the event, then the removal (None: nothing
    is removed). ``left_running``: the resources that keep running (maintenance)."""

    mode: StopMode
    moves: tuple[Move, ...]
    event: str
    removal: Removal | None
    left_running: tuple[str, ...] = ()


def leave(
    cluster: Cluster,
    me: str,
    mode: StopMode,
    running: Iterable[str],
    known: Mapping[str, Resource],
) -> Leaving:
    """The orderly stop of ``me`` in ``mode``; ``running`` is what it has in service,
    ``known`` the last definitions it has of them."""
    if mode is StopMode.MAINTENANCE:
        event = f"{me} stopped for maintenance; resources left running"
        return Leaving(mode, (), event, None, tuple(sorted(running)))
    moves: tuple[Move, ...] = ()
    if cluster.server_policy(me).shutdown_strategy is ShutdownStrategy.SWITCHOVER:
        moves = switchover_targets(cluster, me)
    event = f"{me} stopped; its hierarchies are out of service"
    removal = remove_everything(cluster, running, known, "the agent is stopping")
    return Leaving(mode, moves, event, removal)


def switchover_targets(cluster: Cluster, me: str) -> tuple[Move, ...]:
    """Where each hierarchy wanted on ``me`` goes when ``me`` stops with the switchover
    strategy: its preferred eligible server; one that has none stays (and goes out of
    service with the rest)."""
    moves = []
    for hierarchy in cluster.hierarchies:
        if cluster.intended_server(hierarchy) != me:
            continue
        target = failover.choose_target(cluster, hierarchy, (me,))
        if target.server:
            why = (
                f"{me} is stopping (shutdown strategy switchover): "
                f"{hierarchy.name} moves to {target.server}"
            )
            moves.append(Move(hierarchy.name, target.server, why))
    return tuple(moves)


def remove_everything(
    cluster: Cluster, running: Iterable[str], known: Mapping[str, Resource], why: str
) -> Removal | None:
    """Take everything in ``running`` out of service (None: nothing runs), including
    resources deleted from ``cluster`` meanwhile (by their ``known`` definitions)."""
    tags = sorted(running)
    if not tags:
        return None
    found = {tag: known.get(tag) or cluster.resources.get(tag) for tag in tags}
    resources = {tag: r for tag, r in found.items() if r is not None}
    merged = Cluster(
        resources={**cluster.resources, **resources}, dependencies=cluster.dependencies
    )
    waves = tuple(tuple(wave) for wave in remove_waves(merged, tags))
    step = Step(
        StepKind.REMOVE, ", ".join(tags), frozenset(tags), why, waves, state_reason=why, forced=True
    )
    return Removal(merged, step)
