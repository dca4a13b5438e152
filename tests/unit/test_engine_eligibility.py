"""Kits' eligibility in the engine (DESIGN.md section 4): a server whose kit says it may not
take a resource over (a mirror target not in sync) is skipped by failover and switchback,
with the kit's reason in the decision; an operator's in-service there is refused; the
agents' reports come from the store (``eligible/<server>/<tag>``)."""

from __future__ import annotations

from typing import Any

from builders import make_cluster
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.engine import changes, failover
from vigil.engine.plan import LocalView, StepKind, decide
from vigil.errors import Conflict
from vigil.model.assembly import ClusterBuilder
from vigil.model.cluster import Cluster, EligibilityReport
from vigil.model.records import EligibleRecord, key, parse_item

THREE = ("n1", "n2", "n3")
TAGS = frozenset({"app", "data"})
NOT_IN_SYNC = "mirror target Resync Pending (lost contact with n1 12 s ago)"


def with_reports(cluster: Cluster, reports: dict[tuple[str, str], bool]) -> Cluster:
    """``cluster`` with eligibility reports: (server, tag) -> eligible."""
    eligibility = {
        (server, tag): EligibilityReport(tag, server, ok, "in sync" if ok else NOT_IN_SYNC)
        for (server, tag), ok in reports.items()
    }
    return cluster.evolve(eligibility=eligibility)


def n1_died(**kwargs: Any) -> Cluster:
    """``app -> data`` on n1 (1), n2 (10), n3 (20), wanted on n1, which died."""
    defaults: dict[str, Any] = {
        "servers": THREE,
        "dead": ("n1",),
        "resources": {t: {"n1": 1, "n2": 10, "n3": 20} for t in TAGS},
        "deps": [("app", "data")],
        "intents": dict.fromkeys(TAGS, "n1"),
    }
    defaults.update(kwargs)
    cluster: Cluster = make_cluster(**defaults)
    return cluster


def test_no_report_means_eligible() -> None:
    cluster = n1_died()
    target = failover.choose_target(cluster, cluster.hierarchy("app"), ("n1",))
    assert target.server == "n2"


def test_an_ineligible_server_is_skipped_with_the_kits_reason() -> None:
    cluster = with_reports(n1_died(), {("n2", "data"): False, ("n3", "data"): True})
    target = failover.choose_target(cluster, cluster.hierarchy("app"), ("n1",))
    assert target.server == "n3"
    assert cluster.ineligible("n2", TAGS) == f"n2 is not eligible (data: {NOT_IN_SYNC})"


def test_no_eligible_server_blocks_the_failover_and_says_why() -> None:
    cluster = with_reports(n1_died(), {("n2", "data"): False, ("n3", "data"): False})
    for me in ("n2", "n3"):
        [step] = decide(cluster, me, LocalView())
        assert step.kind is StepKind.BLOCKED
        assert "cannot fail over from n1" in step.reason
        assert NOT_IN_SYNC in step.reason and "n2 is not eligible" in step.reason


def test_a_server_that_becomes_eligible_takes_the_blocked_failover_over() -> None:
    blocked = with_reports(n1_died(), {("n2", "data"): False, ("n3", "data"): False})
    assert decide(blocked, "n2", LocalView())[0].kind is StepKind.BLOCKED
    forced = with_reports(blocked, {("n2", "data"): True, ("n3", "data"): False})
    [step] = decide(forced, "n2", LocalView())
    assert step.kind is StepKind.TAKEOVER and step.origin == "n1"
    assert decide(forced, "n3", LocalView()) == []


def test_switchover_to_an_ineligible_server_is_refused_and_in_service_where_it_is_not() -> None:
    cluster = with_reports(
        make_cluster(
            servers=THREE,
            resources={t: {"n1": 1, "n2": 10} for t in TAGS},
            deps=[("app", "data")],
            intents=dict.fromkeys(TAGS, "n1"),
        ),
        {("n2", "data"): False, ("n1", "data"): False},
    )
    try:
        changes.bring_in_service(cluster, "app", "n2", "admin")
    except Conflict as exc:
        assert "cannot be brought in service on n2" in str(exc) and NOT_IN_SYNC in str(exc)
    else:
        raise AssertionError("a switchover to an ineligible server was accepted")
    # asking again for where it is wanted already is not a takeover: allowed
    assert changes.bring_in_service(cluster, "app", "n1", "admin").intents["app"] == "n1"


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["n2", "n3"]), st.booleans()))
def test_the_target_is_always_an_eligible_live_server(reports: dict[str, bool]) -> None:
    cluster = with_reports(n1_died(), {(s, "data"): ok for s, ok in reports.items()})
    target = failover.choose_target(cluster, cluster.hierarchy("app"), ("n1",))
    eligible = [s for s in ("n2", "n3") if reports.get(s, True)]
    assert target.server == (eligible[0] if eligible else None)
    if target.server is None:
        assert all(f"{s} is not eligible" in target.reason for s in ("n2", "n3"))


def test_reports_are_read_from_the_store() -> None:
    record = EligibleRecord(eligible=False, reason=NOT_IN_SYNC, since=12.5).dump()
    item = parse_item(key("eligible", "n2", "data"), record, 7, 9)
    assert item is not None and item.kind == "eligible"
    assert item.entry == EligibilityReport("data", "n2", False, NOT_IN_SYNC, 12.5)
    builder = ClusterBuilder()
    builder.put(key("eligible", "n2", "data"), record, 9, 7)
    assert builder.build(10).eligibility[("n2", "data")].reason == NOT_IN_SYNC
    builder.delete(key("eligible", "n2", "data"))
    assert builder.build(11).eligibility == {}
