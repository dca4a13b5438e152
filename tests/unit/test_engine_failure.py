"""After a failed check on this server: recover here, fail over (where), stay blocked here,
or take the hierarchy out of service (``engine.failure``)."""

from __future__ import annotations

from dataclasses import replace

from builders import app_resource, make_cluster, three_level
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.engine.failure import (
    FailureResponse,
    FailureStep,
    on_failed_check,
    on_failed_recovery,
)
from vigil.model.cluster import Cluster

NOW = 10_000.0
WHAT = "quick_check of vol on n1 says failed: unreadable"
ALL = {"app": "n1", "ip": "n1", "vol": "n1", "disk": "n1"}


def failed(cluster: Cluster, tag: str = "vol", recoveries: tuple[float, ...] = ()) -> FailureStep:
    return on_failed_check(cluster, tag, "n1", WHAT, recoveries, NOW)


def test_first_failure_is_recovered_here() -> None:
    step = failed(three_level(intents=ALL, intent_revision=8))
    assert step == FailureStep(
        FailureResponse.RECOVER,
        "vol",
        "app",
        "n1",
        "local recovery 1 of 3 allowed in 300s",
        intent_revision=8,
    )


def test_a_failed_recovery_fails_the_hierarchy_over_to_the_next_server() -> None:
    cluster = three_level(intents=ALL, intent_revision=8)
    step = on_failed_recovery(cluster, "vol", "n1", WHAT)
    cause = f"{WHAT}; local recovery of vol failed"
    assert step == FailureStep(
        FailureResponse.FAIL_OVER,
        "vol",
        "app",
        "n1",
        f"failing app over from n1 to n2: {cause}; "
        "n2 is the preferred eligible server (priority 10)",
        state_reason=cause,
        target="n2",
        intent_revision=8,
        origin="n1",
        tried=("n1",),
    )


def test_the_temporal_limit_fails_over_without_recovering() -> None:
    step = failed(three_level(intents=ALL), recoveries=(NOW - 250, NOW - 100, NOW - 1))
    assert step.response is FailureResponse.FAIL_OVER
    assert step.target == "n2"
    limit = "temporal limit reached: 3 recoveries of vol in the last 300s (limit 3)"
    assert step.state_reason == f"{WHAT}; {limit}"
    assert step.reason.startswith(f"failing app over from n1 to n2: {WHAT}; {limit}; ")


def test_local_recovery_off_fails_over_at_once() -> None:
    step = failed(three_level(intents=ALL, server_policies={"n1": {"local_recovery": False}}))
    assert step.response is FailureResponse.FAIL_OVER
    assert step.state_reason == f"{WHAT}; local recovery is off on n1"


def test_no_eligible_server_takes_the_hierarchy_out_of_service() -> None:
    step = on_failed_recovery(three_level(intents=ALL, dead=("n2",)), "vol", "n1", WHAT)
    cause = f"{WHAT}; local recovery of vol failed"
    assert step.response is FailureResponse.TAKE_OUT
    assert step.target is None and step.origin is None and step.tried == ()
    assert step.state_reason == cause
    assert step.reason == (
        f"app taken out of service on n1: {cause}; no server can take it: "
        "n1 already failed to restore it; n2 is down"
    )


def test_a_failover_the_policies_forbid_leaves_it_blocked_here() -> None:
    cluster = three_level(
        intents=ALL, intent_revision=8, server_policies={"n1": {"block_resource_failover": True}}
    )
    step = on_failed_recovery(cluster, "vol", "n1", WHAT)
    blocked = "resource failover is blocked on n1"
    assert step == FailureStep(
        FailureResponse.BLOCKED,
        "vol",
        "app",
        "n1",
        f"app stays on n1: {blocked}",
        state_reason=f"{WHAT}; local recovery of vol failed; not failed over: {blocked}",
        intent_revision=8,
    )


def test_resource_failover_off_blocks_only_that_resource() -> None:
    cluster = three_level(intents=ALL)
    vol = replace(cluster.resources["vol"], policies={"failover": False})
    cluster = replace(cluster, resources={**cluster.resources, "vol": vol})
    assert on_failed_recovery(cluster, "vol", "n1", WHAT).response is FailureResponse.BLOCKED
    assert on_failed_recovery(cluster, "ip", "n1", WHAT).response is FailureResponse.FAIL_OVER


def test_automatic_failover_off_for_the_hierarchy_blocks_it() -> None:
    cluster = make_cluster(
        resources={"app": app_resource("app", {"n1": 1, "n2": 10}, automatic_failover=False)},
        intents={"app": "n1"},
    )
    step = on_failed_recovery(cluster, "app", "n1", WHAT)
    assert step.response is FailureResponse.BLOCKED
    assert step.reason == "app stays on n1: automatic failover is off for app"


@settings(max_examples=60, deadline=None)
@given(
    dead=st.sets(st.sampled_from(["n2", "n3"])),
    recoveries=st.lists(st.floats(min_value=0, max_value=NOW), max_size=5),
    block=st.booleans(),
)
def test_a_failure_never_moves_the_hierarchy_to_itself_or_a_dead_server(
    dead: set[str], recoveries: list[float], block: bool
) -> None:
    cluster = make_cluster(
        servers=("n1", "n2", "n3"),
        dead=dead,
        resources={"app": {"n1": 1, "n2": 10, "n3": 20}},
        intents={"app": "n1"},
        server_policies={"n1": {"block_resource_failover": block}},
    )
    step = on_failed_check(cluster, "app", "n1", WHAT, recoveries, NOW)
    if step.response is FailureResponse.RECOVER:
        return
    assert step.response is not FailureResponse.BLOCKED or block
    if step.response is FailureResponse.FAIL_OVER:
        assert step.target not in ({"n1"} | dead)
        assert step.target == min({"n2", "n3"} - dead)
    else:
        assert step.target is None
        assert block or dead == {"n2", "n3"}
