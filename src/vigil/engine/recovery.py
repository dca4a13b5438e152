"""What to do about a failed check: recover here, or move the hierarchy (pure).

The seed's rules: local recovery first, unless it is switched off (per server or per
resource) or the temporal limit is reached (``recovery_limit`` recoveries within
``recovery_period`` seconds: the next failure fails over even if recovery would work).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from vigil.model.policies import ResourcePolicy, ServerPolicy


class Response(StrEnum):
    RECOVER = "recover"
    FAILOVER = "failover"


@dataclass(frozen=True)
class RecoveryDecision:
    response: Response
    reason: str


def after_failed_check(
    tag: str,
    server: str,
    resource: ResourcePolicy,
    server_policy: ServerPolicy,
    recoveries: Sequence[float],
    now: float,
) -> RecoveryDecision:
    """Recover locally, or fail over, given the times of this resource's past recoveries."""
    if not server_policy.local_recovery:
        return RecoveryDecision(Response.FAILOVER, f"local recovery is off on {server}")
    if not resource.local_recovery:
        return RecoveryDecision(Response.FAILOVER, f"local recovery is off for {tag}")
    recent = [t for t in recoveries if now - t < resource.recovery_period]
    if len(recent) >= resource.recovery_limit:
        return RecoveryDecision(
            Response.FAILOVER,
            f"temporal limit reached: {len(recent)} recoveries of {tag} in the last "
            f"{resource.recovery_period:g}s (limit {resource.recovery_limit})",
        )
    return RecoveryDecision(
        Response.RECOVER,
        f"local recovery {len(recent) + 1} of {resource.recovery_limit} allowed in "
        f"{resource.recovery_period:g}s",
    )
