"""The decision step when a server died: takeover, cascading, blocked failovers, confirm
failover, and automatic switchback (``plan.decide``'s ``_takeover`` / ``_confirmed`` paths)."""

from __future__ import annotations

from typing import Any

from builders import app_resource, make_cluster, with_intent, with_observed
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.engine import failover
from vigil.engine.plan import LocalView, Step, StepKind, decide
from vigil.model.cluster import Cluster, Confirmation, Dependency, Intent, Resource, Server
from vigil.model.policies import StopMode
from vigil.model.records import (
    AliveRecord,
    ConfirmRecord,
    IntentRecord,
    ResourceRecord,
    ServerPolicyRecord,
    ServerRecord,
    StateRecord,
    cluster_from_snapshot,
    key,
)
from vigil.model.states import InstanceState

THREE = ("n1", "n2", "n3")
TAGS = frozenset({"app", "ip"})


def n1_died(**kwargs: Any) -> Cluster:
    """``app -> ip`` on n1 (1), n2 (10), n3 (20), wanted on n1 (intent revision 5), which
    died: its owner keys are gone with its lease."""
    defaults: dict[str, Any] = {
        "servers": THREE,
        "dead": ("n1",),
        "resources": {t: {"n1": 1, "n2": 10, "n3": 20} for t in TAGS},
        "deps": [("app", "ip")],
        "intents": dict.fromkeys(TAGS, "n1"),
    }
    defaults.update(kwargs)
    cluster: Cluster = make_cluster(**defaults)
    return cluster


def steps(cluster: Cluster, me: str, now: float = 0.0) -> list[Step]:
    return decide(cluster, me, LocalView(), now)


def only(cluster: Cluster, me: str, now: float = 0.0) -> Step:
    result = steps(cluster, me, now)
    assert len(result) == 1, result
    return result[0]


# --- takeover -----------------------------------------------------------------------------


def test_the_preferred_survivor_takes_over() -> None:
    step = only(n1_died(), "n2")
    assert step.kind is StepKind.TAKEOVER
    assert (step.hierarchy, step.tags) == ("app", TAGS)
    assert step.origin == "n1"
    assert step.tried == ("n1",)
    assert step.intent_revision == 5
    assert (step.waves, step.claim, step.release) == ((), frozenset(), frozenset())
    assert step.reason == (
        "failing app over from n1 to n2: n1 is down; "
        "n2 is the preferred eligible server (priority 10)"
    )


def test_other_survivors_do_nothing() -> None:
    assert steps(n1_died(), "n3") == []


def test_the_next_survivor_takes_over_when_the_preferred_one_cannot() -> None:
    stopped_n2 = n1_died(stopped={"n2": "maintenance"})
    for cluster in (n1_died(dead=("n1", "n2")), stopped_n2):
        step = only(cluster, "n3")
        assert step.kind is StepKind.TAKEOVER
        assert step.tried == ("n1",)
        assert step.reason.endswith("n3 is the preferred eligible server (priority 20)")
    assert steps(stopped_n2, "n2") == []


def test_no_takeover_while_an_owner_key_of_the_dead_server_remains() -> None:
    # the lease has not expired everywhere yet: the old owner may still hold the address
    cluster = n1_died(owners={"ip": "n1"})
    assert steps(cluster, "n2") == []
    assert steps(cluster, "n3") == []


def test_no_takeover_from_a_server_stopped_on_purpose() -> None:
    for mode in StopMode:
        cluster = n1_died(stopped={"n1": mode})
        assert steps(cluster, "n2") == []


def test_no_takeover_while_the_server_is_alive() -> None:
    assert steps(n1_died(dead=()), "n2") == []


def test_block_resource_failover_does_not_stop_a_takeover_after_a_death() -> None:
    cluster = n1_died(server_policies={"n1": {"block_resource_failover": True}})
    assert only(cluster, "n2").kind is StepKind.TAKEOVER


def test_the_failover_policy_of_the_target_does_not_matter() -> None:
    cluster = n1_died(server_policies={"n2": {"failover": False}})
    assert only(cluster, "n2").kind is StepKind.TAKEOVER


# --- cascading ----------------------------------------------------------------------------


def cascade(dead: tuple[str, ...] = ("n1", "n2")) -> Cluster:
    """n1 failed over to n2 (intent on n2, origin n1, tried n1), then n2 died before it
    restored the hierarchy."""
    cluster = n1_died(dead=dead)
    moved: Cluster = with_intent(cluster, "app", "n2", origin="n1", tried=("n1",), revision=8)
    return moved


def test_cascade_to_the_next_server_when_the_target_died_too() -> None:
    step = only(cascade(), "n3")
    assert step.kind is StepKind.TAKEOVER
    assert step.origin == "n1", "the failover still comes from n1"
    assert step.tried == ("n1", "n2")
    assert step.intent_revision == 8
    assert step.reason.startswith("failing app over from n2 to n3: n2 is down; ")


def test_cascade_skips_servers_already_tried_even_when_alive() -> None:
    cluster = cascade(dead=("n2",))  # n1 is alive again, but failed to keep it
    assert steps(cluster, "n1") == []
    assert only(cluster, "n3").tried == ("n1", "n2")


def test_tried_lists_each_server_once() -> None:
    cluster = with_intent(n1_died(dead=("n2",)), "app", "n2", origin="n1", tried=("n1", "n2"))
    assert only(cluster, "n3").tried == ("n1", "n2")


def test_a_takeover_without_origin_in_the_intent_comes_from_the_dead_server() -> None:
    cluster = with_intent(n1_died(dead=("n2",)), "app", "n2")  # a switchover to n2, then death
    step = only(cluster, "n1")
    assert (step.kind, step.origin, step.tried) == (StepKind.TAKEOVER, "n2", ("n2",))


def test_cascade_with_no_server_left_waits() -> None:
    cluster = cascade(dead=("n1", "n2", "n3"))
    assert failover.orphaned_by(cluster, cluster.hierarchy("app")) == "n2"
    cluster = with_intent(n1_died(dead=("n2",)), "app", "n2", origin="n1", tried=("n1", "n3"))
    step = only(cluster, "n1")
    assert step.kind is StepKind.BLOCKED
    assert step.reason == (
        "app cannot fail over from n2: no server can take it: n1 already failed to restore it; "
        "n2 already failed to restore it; n3 already failed to restore it"
    )


# --- blocked, or nowhere to go ------------------------------------------------------------


def test_hierarchy_automatic_failover_off_waits_with_the_reason() -> None:
    resources = {
        "app": app_resource("app", {"n1": 1, "n2": 10, "n3": 20}, automatic_failover=False),
        "ip": {"n1": 1, "n2": 10, "n3": 20},
    }
    cluster = n1_died(resources=resources)
    for me in ("n2", "n3"):
        step = only(cluster, me)
        assert step.kind is StepKind.BLOCKED
        assert step.reason == "app stays off n1: automatic failover is off for app"
        assert (step.origin, step.tried) == (None, ())


def test_server_failover_off_waits_with_the_reason() -> None:
    cluster = n1_died(server_policies={"n1": {"failover": False}})
    step = only(cluster, "n2")
    assert step.kind is StepKind.BLOCKED
    assert step.reason == "app stays off n1: automatic failover is off for n1"


def test_no_eligible_server_waits_naming_every_refusal() -> None:
    cluster = n1_died(dead=("n1", "n3"), stopped={"n2": "hold"})
    step = only(cluster, "n2")
    assert step.kind is StepKind.BLOCKED
    assert step.reason == (
        "app cannot fail over from n1: no server can take it: n1 already failed to restore it; "
        "n2 is stopped (hold); n3 is down"
    )


def test_n_plus_one_standby_already_serving_another_primary_waits() -> None:
    resources = {
        "ha": app_resource("ha", {"p1": 1, "s": 10}, n_plus_one=True),
        "hb": app_resource("hb", {"p2": 1, "s": 10}, n_plus_one=True),
    }
    cluster = make_cluster(
        servers=("p1", "p2", "s"),
        dead=("p2",),
        resources=resources,
        intents={"ha": "s", "hb": "p2"},
        owners={"ha": "s"},
    )
    (step,) = decide(cluster, "s", LocalView(frozenset({"ha"})))
    assert (step.hierarchy, step.kind) == ("hb", StepKind.BLOCKED)
    assert step.reason == (
        "hb cannot fail over from p2: no server can take it: p2 already failed to restore it; "
        "s already serves ha for p1 (N+1: one primary at a time)"
    )


# --- confirm failover ---------------------------------------------------------------------


def confirming(default: str = "proceed", *confirmations: Confirmation) -> Cluster:
    policy = {"confirm_failover": True, "confirm_timeout": 60, "confirm_default": default}
    return n1_died(server_policies={"n2": policy}, confirmations=confirmations)


def pending(
    decision: bool | None = None, target: str = "n2", since: float = 1000.0
) -> Confirmation:
    return Confirmation("app", target, "n1", since, decision)


def test_confirm_is_asked_when_no_confirmation_exists() -> None:
    step = only(confirming(), "n2", now=1000.0)
    assert step.kind is StepKind.CONFIRM
    assert (step.origin, step.tried, step.intent_revision) == ("n1", ("n1",), 5)
    assert step.reason == (
        "failing app over from n1 to n2: n1 is down; n2 is the preferred eligible server "
        "(priority 10); waiting for an operator: vigil confirm-failover app --yes|--no "
        "(default proceed in 60s)"
    )


def test_confirm_is_asked_again_when_the_confirmation_is_for_another_target() -> None:
    step = only(confirming("proceed", pending(True, target="n3")), "n2", now=1001.0)
    assert step.kind is StepKind.CONFIRM


def test_wait_while_the_confirmation_is_pending_within_the_timeout() -> None:
    cluster = confirming("proceed", pending())
    for now in (1000.0, 1059.9):
        step = only(cluster, "n2", now)
        assert step.kind is StepKind.WAIT
        assert step.reason == "app: failover awaits confirmation"


def test_after_the_timeout_the_default_proceed_takes_over() -> None:
    step = only(confirming("proceed", pending()), "n2", now=1060.0)
    assert step.kind is StepKind.TAKEOVER
    assert (step.origin, step.tried) == ("n1", ("n1",))
    assert step.reason.endswith("(no answer in 60s: default proceed)")


def test_after_the_timeout_the_default_block_waits() -> None:
    step = only(confirming("block", pending()), "n2", now=5000.0)
    assert step.kind is StepKind.BLOCKED
    assert step.reason == (
        "app stays out of service: failover to n2 no answer in 60s: default block"
    )


def test_an_operator_yes_takes_over_at_once() -> None:
    for default in ("proceed", "block"):
        step = only(confirming(default, pending(True)), "n2", now=1000.0)
        assert step.kind is StepKind.TAKEOVER
        assert step.reason.endswith("(confirmed by an operator)")


def test_an_operator_no_waits_even_after_the_timeout() -> None:
    for now in (1000.0, 9999.0):
        step = only(confirming("proceed", pending(False)), "n2", now)
        assert step.kind is StepKind.BLOCKED
        assert step.reason == "app stays out of service: failover to n2 refused by an operator"


def test_confirm_failover_of_other_servers_does_not_apply() -> None:
    policy = {"confirm_failover": True}
    cluster = n1_died(server_policies={"n1": policy, "n3": policy})
    assert only(cluster, "n2").kind is StepKind.TAKEOVER
    assert steps(cluster, "n3") == []


def test_confirm_failover_from_the_store() -> None:
    """The whole path from stored records: a pending confirmation answered yes."""
    items: list[tuple[str, bytes, int, int]] = []
    for name in THREE:
        items.append((key("servers", name), ServerRecord(name=name, api_url="u").dump(), 1, 1))
    for name in ("n2", "n3"):
        items.append((key("alive", name), AliveRecord(started_at=1.0, pid=1).dump(), 2, 2))
    resource = ResourceRecord(tag="app", kit="app", instances={"n1": 1, "n2": 10, "n3": 20})
    policy = ServerPolicyRecord(policy={"confirm_failover": True})
    confirm = ConfirmRecord(target="n2", origin="n1", since=50.0, decision=True)
    items += [
        (key("resources", "app"), resource.dump(), 3, 3),
        (key("intent", "app"), IntentRecord(server="n1").dump(), 4, 9),
        (key("serverpolicy", "n2"), policy.dump(), 5, 5),
        (key("confirm", "app"), confirm.dump(), 6, 6),
        (key("state", "n1", "app"), StateRecord(state=InstanceState.ISP).dump(), 7, 7),
    ]
    cluster = cluster_from_snapshot(10, items)
    step = only(cluster, "n2", now=60.0)
    assert (step.kind, step.intent_revision, step.tried) == (StepKind.TAKEOVER, 9, ("n1",))
    assert step.reason.endswith("(confirmed by an operator)")


# --- automatic switchback -----------------------------------------------------------------


def switched(switchback: str = "automatic") -> Cluster:
    """After a failover: app (n1 1, n2 10, n3 20) in service on n2; n1 is back."""
    resources = {"app": app_resource("app", {"n1": 1, "n2": 10, "n3": 20}, switchback=switchback)}
    cluster = make_cluster(
        servers=THREE,
        resources=resources,
        intents={"app": "n2"},
        owners={"app": "n2"},
        intent_revision=12,
    )
    seen: Cluster = with_observed(cluster, "n2", "app", "ISP", intent_revision=12)
    return seen


def test_automatic_switchback_on_the_preferred_server_only() -> None:
    cluster = switched()
    step = only(cluster, "n1")
    assert step.kind is StepKind.SWITCHBACK
    assert step.reason == "switching app back to n1, its preferred server (automatic switchback)"
    assert step.intent_revision == 12
    assert decide(cluster, "n2", LocalView(frozenset({"app"}))) == []
    assert steps(cluster, "n3") == []


def test_intelligent_switchback_stays() -> None:
    assert steps(switched("intelligent"), "n1") == []


# --- properties on random clusters --------------------------------------------------------

SERVERS = ["s0", "s1", "s2", "s3"]


@st.composite
def dead_owner_cases(draw: st.DrawFn) -> Cluster:
    """A hierarchy wanted on a random server, servers alive, dead or stopped, a random
    failover in progress (origin, tried), random policies."""
    alive = draw(st.lists(st.booleans(), min_size=len(SERVERS), max_size=len(SERVERS)))
    servers = {s: Server(s, f"http://{s}", alive=a) for s, a in zip(SERVERS, alive, strict=True)}
    on = draw(st.lists(st.sampled_from(SERVERS), unique=True, min_size=1))
    instances = {s: i * 10 + 1 for i, s in enumerate(on)}
    ip_on = [s for s in on if draw(st.integers(0, 5))] or on[:1]
    policies = {"automatic_failover": draw(st.integers(0, 5)) > 0}
    resources = {
        "app": Resource("app", "app", instances=instances, policies=policies),
        "ip": Resource("ip", "app", instances={s: instances[s] for s in ip_on}),
    }
    wanted = draw(st.sampled_from(on))
    tried = tuple(draw(st.lists(st.sampled_from(SERVERS), unique=True, max_size=2)))
    origin = draw(st.sampled_from([None, *SERVERS])) if tried else None
    intents = {t: Intent(t, wanted, 3, "", origin, tried) for t in ("app", "ip")}
    stopped = draw(st.dictionaries(st.sampled_from(SERVERS), st.sampled_from(list(StopMode))))
    return Cluster(
        servers=servers,
        resources=resources,
        dependencies=frozenset({Dependency("app", "ip")}),
        intents=intents,
        stopped=stopped,
    )


@settings(max_examples=400, deadline=None)
@given(dead_owner_cases())
def test_at_most_one_server_takes_over_and_never_a_tried_one(cluster: Cluster) -> None:
    hierarchy = cluster.hierarchy("app")
    dead = failover.orphaned_by(cluster, hierarchy)
    takers = {}
    for me, server in cluster.servers.items():
        if not server.alive:
            continue
        for step in steps(cluster, me):
            if step.kind in (StepKind.TAKEOVER, StepKind.CONFIRM):
                takers[me] = step
    assert len(takers) <= 1, "only one server may take the hierarchy over"
    if dead is None:
        assert takers == {}
        return
    intent = cluster.intents["app"]
    for me, step in takers.items():
        assert me not in step.tried and me != dead
        assert me in cluster.hierarchy_servers(hierarchy)
        assert me not in cluster.stopped
        # the servers tried before, in order, then the dead one, each once
        # a failover in progress goes on; otherwise (no failover, or the last one completed
        # on the dead server) a new one starts from the dead server
        going_on = intent.origin is not None and not failover.restored_by(cluster, hierarchy, dead)
        expected = tuple(dict.fromkeys([*intent.tried, dead])) if going_on else (dead,)
        assert step.tried == expected
        assert step.origin == (intent.origin if going_on else dead)
    if not takers:
        # nobody moves: every survivor says why
        survivors = [s for s, server in cluster.servers.items() if server.alive]
        for me in survivors:
            (step,) = steps(cluster, me)
            assert step.kind is StepKind.BLOCKED
            assert step.reason.startswith(f"app stays off {dead}: ") or step.reason.startswith(
                f"app cannot fail over from {dead}: no server can take it: "
            )


# --- bugs -----------------------------------------------------------------------------------


def test_a_completed_failover_does_not_exclude_its_servers_from_the_next_one() -> None:
    cluster = make_cluster(resources={"app": {"n1": 1, "n2": 10}}, dead=("n2",))
    # n1's monitor moved app to n2 after a resource failure; n2 restored it (ISP for that
    # intent revision); n2 then died
    cluster = with_intent(cluster, "app", "n2", origin="n1", tried=("n1",), revision=7)
    cluster = with_observed(cluster, "n2", "app", "ISP", reason="in service", intent_revision=7)
    step = only(cluster, "n1")
    assert step.kind is StepKind.TAKEOVER
    assert "n1" not in step.tried


def test_cascade_to_the_next_server_when_the_target_failed_to_restore() -> None:
    cluster = with_intent(
        n1_died(dead=("n1",)), "app", "n2", origin="n1", tried=("n1",), revision=7
    )
    for tag in sorted(TAGS):
        cluster = with_observed(
            cluster, "n2", tag, "OSF", reason="restore failed", intent_revision=7
        )
    # n2 itself will not retry this intent (LocalView.failed); n3 is the next server
    assert decide(cluster, "n2", LocalView(failed={"app": 7})) == []
    step = only(cluster, "n3")
    assert step.kind is StepKind.TAKEOVER
    assert step.tried == ("n1", "n2")


def test_an_n_plus_one_standby_takes_one_primary_when_two_die_together() -> None:
    resources = {
        "ha": app_resource("ha", {"p1": 1, "s": 10}, n_plus_one=True),
        "hb": app_resource("hb", {"p2": 1, "s": 10}, n_plus_one=True),
    }
    cluster = make_cluster(
        servers=("p1", "p2", "s"),
        dead=("p1", "p2"),
        resources=resources,
        intents={"ha": "p1", "hb": "p2"},
    )
    takeovers = [s.hierarchy for s in steps(cluster, "s") if s.kind is StepKind.TAKEOVER]
    assert len(takeovers) <= 1, takeovers


def test_no_switchback_to_the_server_a_resource_failure_just_moved_it_from() -> None:
    cluster = switched()
    cluster = with_intent(cluster, "app", "n2", origin="n1", tried=("n1",), revision=12)
    cluster = with_observed(
        cluster, "n1", "app", "OSF", reason="quick check failed; temporal limit reached"
    )
    assert steps(cluster, "n1") == []


def test_an_answer_about_a_failover_from_another_server_is_not_reused() -> None:
    cluster = make_cluster(
        servers=THREE,
        dead=("n1", "n2"),
        resources={"app": {"n1": 1, "n2": 5, "n3": 10}},
        intents={"app": "n2"},  # the operator brought it in service on n2 after the refusal
        server_policies={"n3": {"confirm_failover": True}},
        confirmations=[Confirmation("app", "n3", "n1", 0.0, decision=False)],
    )
    step = only(cluster, "n3", now=10.0)
    assert step.origin == "n2"
    assert step.kind is StepKind.CONFIRM
