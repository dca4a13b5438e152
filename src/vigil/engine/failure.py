"""What a server does about a resource of its own whose check failed (pure).

The seed's order: local recovery first, when the policies and the temporal limit allow it
(``engine.recovery``); when it is not allowed or does not work, the whole hierarchy fails
over to the preferred eligible server (``engine.failover``). A failover the policies forbid
leaves the failed resource out of service here (OSF), unchecked, with the hierarchy still
owned here; a failover no server can take takes the hierarchy out of service.

The agent runs the checks and the recovery, and carries out the step these functions
return: it never decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from vigil.engine import failover, recovery
from vigil.model.cluster import Cluster


class FailureResponse(StrEnum):
    RECOVER = "recover"  # local recovery here; if it fails, ask again (on_failed_recovery)
    FAIL_OVER = "fail-over"  # want the hierarchy on ``target``
    TAKE_OUT = "take-out"  # no server can take it: want the hierarchy out of service
    BLOCKED = "blocked"  # it may not move: OSF here, no longer checked, still owned here


@dataclass(frozen=True)
class FailureStep:
    """One decision about a failed resource ``tag`` on ``server``."""

    response: FailureResponse
    tag: str
    hierarchy: str
    server: str
    #: RECOVER: why recovery is allowed; FAIL_OVER and TAKE_OUT: the new intent's reason
    #: (its event's message); BLOCKED: the event's message
    reason: str
    #: what the failed instance reports (OSF): BLOCKED at once, FAIL_OVER and TAKE_OUT
    #: once it is removed here
    state_reason: str = ""
    #: FAIL_OVER: the server to take the hierarchy over
    target: str | None = None
    #: the intent revision the decision was taken on (BLOCKED: not retried before it
    #: changes; FAIL_OVER and TAKE_OUT: the compare-and-set of the new intent)
    intent_revision: int = 0
    #: FAIL_OVER: the failover's origin and the servers already tried
    origin: str | None = None
    tried: tuple[str, ...] = ()


def on_failed_check(
    cluster: Cluster, tag: str, server: str, what: str, recoveries: Sequence[float], now: float
) -> FailureStep:
    """The response to a failed (or stopped) check of ``tag`` on ``server``. ``what`` says
    which check said what; ``recoveries`` are the times of the resource's past local
    recoveries here (the temporal limit counts them)."""
    decision = recovery.after_failed_check(
        tag,
        server,
        cluster.resource_policy(tag),
        cluster.server_policy(server),
        recoveries,
        now,
    )
    if decision.response is recovery.Response.RECOVER:
        hierarchy = cluster.hierarchy(tag)
        return FailureStep(
            FailureResponse.RECOVER,
            tag,
            hierarchy.name,
            server,
            decision.reason,
            intent_revision=cluster.intent_revision(hierarchy),
        )
    return _move(cluster, tag, server, f"{what}; {decision.reason}")


def on_failed_recovery(cluster: Cluster, tag: str, server: str, what: str) -> FailureStep:
    """The response once the local recovery allowed after ``what`` did not work."""
    return _move(cluster, tag, server, f"{what}; local recovery of {tag} failed")


def _move(cluster: Cluster, tag: str, server: str, cause: str) -> FailureStep:
    """Fail the hierarchy over, take it out of service, or leave it blocked here."""
    hierarchy = cluster.hierarchy(tag)
    name, revision = hierarchy.name, cluster.intent_revision(hierarchy)
    blocked = failover.resource_failover_blocked(cluster, hierarchy, tag, server)
    if blocked:
        return FailureStep(
            FailureResponse.BLOCKED,
            tag,
            name,
            server,
            f"{name} stays on {server}: {blocked}",
            state_reason=f"{cause}; not failed over: {blocked}",
            intent_revision=revision,
        )
    target = failover.choose_target(cluster, hierarchy, (server,))
    if target.server is None:
        return FailureStep(
            FailureResponse.TAKE_OUT,
            tag,
            name,
            server,
            f"{name} taken out of service on {server}: {cause}; {target.reason}",
            state_reason=cause,
            intent_revision=revision,
        )
    return FailureStep(
        FailureResponse.FAIL_OVER,
        tag,
        name,
        server,
        f"failing {name} over from {server} to {target.server}: {cause}; {target.reason}",
        state_reason=cause,
        target=target.server,
        intent_revision=revision,
        origin=server,
        tried=(server,),
    )
