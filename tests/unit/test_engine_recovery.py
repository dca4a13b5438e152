"""After a failed check: recover locally, or fail the hierarchy over (the temporal limit)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.engine.recovery import RecoveryDecision, Response, after_failed_check
from vigil.model.policies import ResourcePolicy, ServerPolicy

NOW = 10_000.0


def decide(
    recoveries: list[float] | tuple[float, ...] = (),
    *,
    resource: ResourcePolicy | None = None,
    server: ServerPolicy | None = None,
    now: float = NOW,
) -> RecoveryDecision:
    return after_failed_check(
        "app", "n1", resource or ResourcePolicy(), server or ServerPolicy(), recoveries, now
    )


def test_first_failure_is_recovered_locally() -> None:
    decision = decide()
    assert decision.response is Response.RECOVER
    assert decision.reason == "local recovery 1 of 3 allowed in 300s"


def test_recover_while_under_the_temporal_limit() -> None:
    decision = decide([NOW - 200, NOW - 10])
    assert decision.response is Response.RECOVER
    assert decision.reason == "local recovery 3 of 3 allowed in 300s"


def test_fail_over_at_the_temporal_limit() -> None:
    decision = decide([NOW - 250, NOW - 100, NOW - 1])
    assert decision.response is Response.FAILOVER
    assert decision.reason == (
        "temporal limit reached: 3 recoveries of app in the last 300s (limit 3)"
    )


def test_recoveries_older_than_the_period_do_not_count() -> None:
    old = [NOW - 5000, NOW - 400, NOW - 300]  # exactly one period ago is already out
    decision = decide([*old, NOW - 299, NOW - 5])
    assert decision.response is Response.RECOVER
    assert decision.reason == "local recovery 3 of 3 allowed in 300s"


def test_custom_limit_and_period() -> None:
    policy = ResourcePolicy(recovery_limit=1, recovery_period=60.0)
    assert decide([NOW - 61], resource=policy).response is Response.RECOVER
    decision = decide([NOW - 59], resource=policy)
    assert decision.response is Response.FAILOVER
    assert (
        decision.reason == "temporal limit reached: 1 recoveries of app in the last 60s (limit 1)"
    )


def test_a_limit_of_zero_always_fails_over() -> None:
    decision = decide(resource=ResourcePolicy(recovery_limit=0))
    assert decision.response is Response.FAILOVER
    assert "temporal limit reached: 0 recoveries" in decision.reason


def test_local_recovery_off_on_the_server_fails_over() -> None:
    decision = decide(server=ServerPolicy(local_recovery=False))
    assert decision == RecoveryDecision(Response.FAILOVER, "local recovery is off on n1")


def test_local_recovery_off_for_the_resource_fails_over() -> None:
    decision = decide(resource=ResourcePolicy(local_recovery=False))
    assert decision == RecoveryDecision(Response.FAILOVER, "local recovery is off for app")


def test_the_server_policy_is_named_first_when_both_are_off() -> None:
    decision = decide(
        resource=ResourcePolicy(local_recovery=False), server=ServerPolicy(local_recovery=False)
    )
    assert decision.reason == "local recovery is off on n1"


def test_failover_policies_do_not_change_the_recovery_decision() -> None:
    # whether a failover may happen is decided elsewhere (failover.resource_failover_blocked)
    decision = decide(
        resource=ResourcePolicy(failover=False),
        server=ServerPolicy(failover=False, block_resource_failover=True),
    )
    assert decision.response is Response.RECOVER


@settings(max_examples=300, deadline=None)
@given(
    server_local=st.booleans(),
    resource_local=st.booleans(),
    limit=st.integers(min_value=0, max_value=6),
    period=st.floats(min_value=0.5, max_value=1000.0),
    ages=st.lists(st.floats(min_value=-5.0, max_value=2000.0), max_size=10),
)
def test_failover_iff_recovery_is_off_or_the_limit_is_reached(
    server_local: bool, resource_local: bool, limit: int, period: float, ages: list[float]
) -> None:
    resource = ResourcePolicy(
        local_recovery=resource_local, recovery_limit=limit, recovery_period=period
    )
    server = ServerPolicy(local_recovery=server_local)
    recoveries = [NOW - age for age in ages]
    decision = decide(recoveries, resource=resource, server=server)
    recent = sum(1 for age in ages if NOW - (NOW - age) < period)
    expected_failover = not server_local or not resource_local or recent >= limit
    assert (decision.response is Response.FAILOVER) == expected_failover
    if decision.response is Response.RECOVER:
        assert decision.reason.startswith(f"local recovery {recent + 1} of {limit} ")
    elif server_local and resource_local:
        assert decision.reason.startswith(f"temporal limit reached: {recent} recoveries of app")
    else:
        assert "local recovery is off" in decision.reason
