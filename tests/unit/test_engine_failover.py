"""Which server takes a hierarchy over: the target, N+1, blocked failovers, orphans,
switchback and ``vigil plan --fail``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from builders import app_resource, make_cluster, three_level, with_observed
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.engine import failover
from vigil.model.cluster import Cluster, Dependency, Intent, Resource, Server
from vigil.model.policies import StopMode

THREE = ("n1", "n2", "n3")


def target(cluster: Cluster, tag: str = "app", exclude: tuple[str, ...] = ()) -> failover.Target:
    return failover.choose_target(cluster, cluster.hierarchy(tag), exclude)


def spread(**kwargs: Any) -> Cluster:
    """``app`` on n1 (1), n3 (10) and n2 (20): priority order is n1, n3, n2."""
    defaults: dict[str, Any] = {
        "servers": THREE,
        "resources": {"app": {"n1": 1, "n2": 20, "n3": 10}},
    }
    defaults.update(kwargs)
    cluster: Cluster = make_cluster(**defaults)
    return cluster


# --- priorities ---------------------------------------------------------------------------


def test_priorities_and_primary_come_from_the_root() -> None:
    cluster = make_cluster(
        servers=THREE,
        resources={"app": {"n1": 5, "n2": 3}, "ip": {"n1": 5, "n2": 3, "n3": 1}},
        deps=[("app", "ip")],
    )
    hierarchy = cluster.hierarchy("ip")
    assert failover.priorities(cluster, hierarchy) == {"n1": 5, "n2": 3}
    assert failover.primary(cluster, hierarchy) == "n2"


# --- choose_target ------------------------------------------------------------------------


def test_lowest_priority_number_first() -> None:
    cluster = spread()
    assert target(cluster) == failover.Target(
        "n1", "n1 is the preferred eligible server (priority 1)"
    )
    assert target(cluster, exclude=("n1",)) == failover.Target(
        "n3", "n3 is the preferred eligible server (priority 10)"
    )
    assert target(cluster, exclude=("n1", "n3")).server == "n2"


def test_dead_servers_are_skipped() -> None:
    assert target(spread(dead=("n1", "n3"))).server == "n2"


def test_stopped_servers_are_skipped_even_while_alive() -> None:
    # the stopped record is written before the agent's lease is revoked
    for mode in StopMode:
        assert target(spread(stopped={"n1": mode})).server == "n3"
    assert target(spread(dead=("n1",), stopped={"n3": "hold"})).server == "n2"


def test_servers_missing_a_member_of_the_hierarchy_are_skipped() -> None:
    cluster = make_cluster(
        servers=THREE,
        resources={"app": {"n1": 1, "n2": 10, "n3": 20}, "ip": {"n1": 1, "n3": 20}},
        deps=[("app", "ip")],
    )
    assert target(cluster, exclude=("n1",)).server == "n3"
    nowhere = target(cluster, exclude=("n1", "n3"))
    assert nowhere.server is None
    assert "app is not extended to n2" in nowhere.reason


def test_servers_already_tried_are_skipped() -> None:
    assert target(spread(), exclude=("n1", "n3")).server == "n2"
    assert target(spread(dead=("n1",)), exclude=("n3",)).server == "n2"
    assert target(spread(), exclude=THREE).reason == (
        "no server can take it: n1 already failed to restore it; "
        "n3 already failed to restore it; n2 already failed to restore it"
    )


def test_no_target_names_every_refusal_in_priority_order() -> None:
    cluster = make_cluster(
        servers=("n1", "n2", "n3", "n4"),
        dead=("n3",),
        resources={"app": {"n1": 1, "n2": 5, "n3": 7, "n4": 9}, "ip": {"n1": 1, "n2": 5, "n3": 7}},
        deps=[("app", "ip")],
        stopped={"n2": "maintenance"},
    )
    assert target(cluster, exclude=("n1",)) == failover.Target(
        None,
        "no server can take it: n1 already failed to restore it; n2 is stopped (maintenance); "
        "n3 is down; app is not extended to n4",
    )


def test_a_server_unknown_to_the_cluster_is_down() -> None:
    cluster = make_cluster(servers=("n1",), resources={"app": {"n1": 1, "gone": 10}})
    assert target(cluster, exclude=("n1",)).reason.endswith("gone is down")


# --- N+1 ----------------------------------------------------------------------------------


def n_plus_one(
    *, standby_serves: str | None = None, n_plus_one_b: bool = True, **kwargs: Any
) -> Cluster:
    """Primaries p1 (hierarchy ha) and p2 (hb), one shared standby s (priority 10 for both).
    ``standby_serves``: a hierarchy already wanted on s."""
    resources = {
        "ha": app_resource("ha", {"p1": 1, "s": 10}, n_plus_one=True),
        "hb": app_resource("hb", {"p2": 1, "s": 10}, n_plus_one=n_plus_one_b),
    }
    intents = {"ha": "p1", "hb": "p2"}
    if standby_serves:
        intents[standby_serves] = "s"
    defaults: dict[str, Any] = {
        "servers": ("p1", "p2", "s"),
        "resources": resources,
        "intents": intents,
    }
    defaults.update(kwargs)
    cluster: Cluster = make_cluster(**defaults)
    return cluster


def test_n_plus_one_standby_refuses_a_second_primary() -> None:
    cluster = n_plus_one(standby_serves="ha", dead=("p1", "p2"))
    assert target(cluster, "hb", exclude=("p2",)) == failover.Target(
        None,
        "no server can take it: p2 already failed to restore it; "
        "s already serves ha for p1 (N+1: one primary at a time)",
    )
    assert failover.n_plus_one_conflict(cluster, cluster.hierarchy("hb"), "s") == (
        "s already serves ha for p1 (N+1: one primary at a time)"
    )


def test_n_plus_one_standby_takes_another_hierarchy_of_the_same_primary() -> None:
    resources = {
        "ha": app_resource("ha", {"p1": 1, "s": 10}, n_plus_one=True),
        "hc": app_resource("hc", {"p1": 1, "s": 10}, n_plus_one=True),
    }
    cluster = make_cluster(
        servers=("p1", "s"), dead=("p1",), resources=resources, intents={"ha": "s", "hc": "p1"}
    )
    assert target(cluster, "hc", exclude=("p1",)).server == "s"


def test_n_plus_one_standby_that_serves_nobody_takes_it() -> None:
    cluster = n_plus_one(dead=("p2",))
    assert target(cluster, "hb", exclude=("p2",)).server == "s"


def test_n_plus_one_does_not_apply_to_other_hierarchies() -> None:
    # hb is not an N+1 hierarchy: the standby may take it beside ha
    cluster = n_plus_one(standby_serves="ha", n_plus_one_b=False, dead=("p1", "p2"))
    assert target(cluster, "hb", exclude=("p2",)).server == "s"
    assert failover.n_plus_one_conflict(cluster, cluster.hierarchy("hb"), "s") is None


def test_a_non_n_plus_one_hierarchy_held_by_the_standby_does_not_count() -> None:
    resources = {
        "ha": app_resource("ha", {"p1": 1, "s": 10}),
        "hb": app_resource("hb", {"p2": 1, "s": 10}, n_plus_one=True),
    }
    cluster = make_cluster(
        servers=("p1", "p2", "s"), dead=("p2",), resources=resources, intents={"ha": "s"}
    )
    assert target(cluster, "hb", exclude=("p2",)).server == "s"


def test_the_standby_may_take_back_its_own_primary_hierarchy() -> None:
    # s is the primary of hs: holding hs does not make it anybody's standby
    resources = {
        "hs": app_resource("hs", {"s": 1, "p2": 10}, n_plus_one=True),
        "hb": app_resource("hb", {"p2": 1, "s": 10}, n_plus_one=True),
    }
    cluster = make_cluster(
        servers=("p2", "s"), dead=("p2",), resources=resources, intents={"hs": "s", "hb": "p2"}
    )
    assert target(cluster, "hb", exclude=("p2",)).server == "s"


# --- blocked failovers --------------------------------------------------------------------


def test_failover_is_allowed_by_default() -> None:
    cluster = three_level()
    hierarchy = cluster.hierarchy("app")
    assert failover.failover_blocked(cluster, hierarchy, "n1") is None
    assert failover.resource_failover_blocked(cluster, hierarchy, "vol", "n1") is None


def test_hierarchy_automatic_failover_off_blocks_both() -> None:
    cluster = make_cluster(
        resources={"app": app_resource("app", {"n1": 1, "n2": 10}, automatic_failover=False)}
    )
    hierarchy = cluster.hierarchy("app")
    why = "automatic failover is off for app"
    assert failover.failover_blocked(cluster, hierarchy, "n1") == why
    assert failover.resource_failover_blocked(cluster, hierarchy, "app", "n1") == why


def test_server_failover_off_blocks_failovers_away_from_that_server_only() -> None:
    cluster = three_level(server_policies={"n1": {"failover": False}})
    hierarchy = cluster.hierarchy("app")
    why = "automatic failover is off for n1"
    assert failover.failover_blocked(cluster, hierarchy, "n1") == why
    assert failover.resource_failover_blocked(cluster, hierarchy, "ip", "n1") == why
    assert failover.failover_blocked(cluster, hierarchy, "n2") is None


def test_resource_failover_off_blocks_failures_of_that_resource_only() -> None:
    cluster = three_level()
    vol = replace(cluster.resources["vol"], policies={"failover": False})
    cluster = replace(cluster, resources={**cluster.resources, "vol": vol})
    hierarchy = cluster.hierarchy("app")
    assert failover.resource_failover_blocked(cluster, hierarchy, "vol", "n1") == (
        "failover is off for resource vol"
    )
    assert failover.resource_failover_blocked(cluster, hierarchy, "ip", "n1") is None
    assert failover.failover_blocked(cluster, hierarchy, "n1") is None, "server death still moves"


def test_block_resource_failover_affects_resource_failures_only() -> None:
    cluster = three_level(server_policies={"n1": {"block_resource_failover": True}})
    hierarchy = cluster.hierarchy("app")
    assert failover.resource_failover_blocked(cluster, hierarchy, "app", "n1") == (
        "resource failover is blocked on n1"
    )
    assert failover.failover_blocked(cluster, hierarchy, "n1") is None, "server death still moves"
    assert failover.resource_failover_blocked(cluster, hierarchy, "app", "n2") is None


# --- orphaned_by --------------------------------------------------------------------------


def test_wanted_on_a_dead_server_without_owners_is_orphaned() -> None:
    cluster = three_level(dead=("n1",), intents={"app": "n1"})
    assert failover.orphaned_by(cluster, cluster.hierarchy("app")) == "n1"


def test_not_orphaned_when_the_server_was_stopped_on_purpose() -> None:
    for mode in ("hold", "maintenance"):
        cluster = three_level(dead=("n1",), intents={"app": "n1"}, stopped={"n1": mode})
        assert failover.orphaned_by(cluster, cluster.hierarchy("app")) is None


def test_not_orphaned_while_the_server_is_alive() -> None:
    cluster = three_level(intents={"app": "n1"})
    assert failover.orphaned_by(cluster, cluster.hierarchy("app")) is None


def test_not_orphaned_while_any_owner_key_remains() -> None:
    for owner in ("n1", "n2"):
        cluster = three_level(dead=("n1",), intents={"app": "n1"}, owners={"disk": owner})
        assert failover.orphaned_by(cluster, cluster.hierarchy("app")) is None


def test_not_orphaned_when_wanted_nowhere() -> None:
    cluster = three_level(dead=("n1",), intents={"app": None})
    assert failover.orphaned_by(cluster, cluster.hierarchy("app")) is None
    cluster = three_level(dead=("n1",))
    assert failover.orphaned_by(cluster, cluster.hierarchy("app")) is None


def test_wanted_on_a_server_unknown_to_the_cluster_is_orphaned() -> None:
    cluster = three_level(intents={"app": "gone"})
    assert failover.orphaned_by(cluster, cluster.hierarchy("app")) == "gone"


# --- switchback_target --------------------------------------------------------------------


def back_home(switchback: str = "automatic", **kwargs: Any) -> Cluster:
    """``app`` (priorities n1 1, n2 10, n3 20) in service on n2, owned and ISP there."""
    defaults: dict[str, Any] = {
        "servers": THREE,
        "resources": {
            "app": app_resource("app", {"n1": 1, "n2": 10, "n3": 20}, switchback=switchback)
        },
        "intents": {"app": "n2"},
        "owners": {"app": "n2"},
        "observed": {("n2", "app"): "ISP"},
    }
    defaults.update(kwargs)
    cluster: Cluster = make_cluster(**defaults)
    return cluster


def switchback(cluster: Cluster) -> str | None:
    return failover.switchback_target(cluster, cluster.hierarchy("app"))


def test_automatic_switchback_returns_to_the_preferred_server() -> None:
    assert switchback(back_home()) == "n1"


def test_intelligent_switchback_stays() -> None:
    assert switchback(back_home("intelligent")) is None


def test_no_switchback_before_it_is_fully_in_service_here() -> None:
    assert switchback(back_home(owners={})) is None
    assert switchback(back_home(owners={"app": "n1"})) is None
    assert switchback(back_home(observed={("n2", "app"): "OSF"})) is None
    assert switchback(back_home(observed={})) is None, "not reported yet"
    assert switchback(back_home(intents={"app": None})) is None


def test_no_switchback_before_every_member_is_in_service() -> None:
    resources = {
        tag: app_resource(tag, {"n1": 1, "n2": 10}, switchback="automatic") for tag in ("app", "ip")
    }
    cluster = make_cluster(
        resources=resources,
        deps=[("app", "ip")],
        intents={"app": "n2", "ip": "n2"},
        owners={"app": "n2", "ip": "n2"},
        observed={("n2", "app"): "ISP", ("n2", "ip"): "OSU"},
    )
    assert switchback(cluster) is None
    assert switchback(with_observed(cluster, "n2", "ip", "ISP")) == "n1"


def test_no_switchback_to_a_server_that_is_not_back() -> None:
    assert switchback(back_home(dead=("n1",))) is None
    assert switchback(back_home(stopped={"n1": "hold"})) is None


def test_no_switchback_from_the_preferred_server() -> None:
    cluster = back_home(
        intents={"app": "n1"}, owners={"app": "n1"}, observed={("n1", "app"): "ISP"}
    )
    assert switchback(cluster) is None


def test_never_switch_back_to_a_less_preferred_server() -> None:
    assert switchback(back_home(dead=("n1",))) is None  # n3 (20) is alive but worse than n2
    on_n3 = back_home(
        dead=("n1",), intents={"app": "n3"}, owners={"app": "n3"}, observed={("n3", "app"): "ISP"}
    )
    assert switchback(on_n3) == "n2", "a more preferred server, though not the primary"


# --- what_if_down -------------------------------------------------------------------------


def plan_cluster(**kwargs: Any) -> Cluster:
    defaults: dict[str, Any] = {
        "servers": THREE,
        "resources": {
            "web": {"n1": 1, "n2": 10, "n3": 20},
            "db": {"n1": 1, "n3": 10, "n2": 20},
            "mail": app_resource("mail", {"n1": 1, "n2": 10}, automatic_failover=False),
            "dns": {"n2": 1, "n1": 10},
        },
        "intents": {"web": "n1", "db": "n1", "mail": "n1", "dns": "n2"},
        "owners": {"web": "n1", "db": "n1", "mail": "n1", "dns": "n2"},
    }
    defaults.update(kwargs)
    cluster: Cluster = make_cluster(**defaults)
    return cluster


def test_what_if_down_lists_each_hierarchy_wanted_there() -> None:
    cluster = plan_cluster()
    assert failover.what_if_down(cluster, "n1") == [
        ("db", "n3", "n3 is the preferred eligible server (priority 10)"),
        ("mail", None, "stays out of service: automatic failover is off for mail"),
        ("web", "n2", "n2 is the preferred eligible server (priority 10)"),
    ]
    assert failover.what_if_down(cluster, "n2") == [
        ("dns", "n1", "n1 is the preferred eligible server (priority 10)")
    ]
    assert failover.what_if_down(cluster, "n3") == []
    assert cluster.servers["n1"].alive, "the cluster itself is unchanged"


def test_what_if_down_when_the_server_blocks_failover() -> None:
    cluster = plan_cluster(server_policies={"n1": {"failover": False}})
    answers = failover.what_if_down(cluster, "n1")
    assert [a[1] for a in answers] == [None, None, None]
    assert answers[0] == ("db", None, "stays out of service: automatic failover is off for n1")


def test_what_if_down_without_a_target_says_why() -> None:
    cluster = plan_cluster(dead=("n3",), stopped={"n2": "hold"})
    answers = dict(
        (name, (server, why)) for name, server, why in failover.what_if_down(cluster, "n1")
    )
    server, why = answers["db"]
    assert server is None
    assert why == (
        "no server can take it: n1 already failed to restore it; n3 is down; n2 is stopped (hold)"
    )


# --- properties on random clusters --------------------------------------------------------

SERVERS = ["s0", "s1", "s2", "s3", "s4"]


@st.composite
def target_cases(draw: st.DrawFn) -> tuple[Cluster, tuple[str, ...]]:
    """Servers alive or dead, some stopped; ``app`` (with a child ``ip`` extended to some of
    its servers) and ``other``, both maybe N+1, ``other`` maybe wanted somewhere; and an
    exclude list."""
    alive = draw(st.lists(st.booleans(), min_size=len(SERVERS), max_size=len(SERVERS)))
    servers = {s: Server(s, f"http://{s}", alive=a) for s, a in zip(SERVERS, alive, strict=True)}
    stopped = draw(st.dictionaries(st.sampled_from(SERVERS), st.sampled_from(list(StopMode))))
    some = st.lists(st.sampled_from(SERVERS), unique=True, min_size=1)
    priorities = st.lists(st.integers(1, 999), unique=True, min_size=5, max_size=5)
    mostly = st.integers(0, 3).map(bool)
    app_on = draw(some)
    app_prio = dict(zip(app_on, draw(priorities), strict=False))
    ip_on = [s for s in app_on if draw(st.integers(0, 4))] or app_on[:1]
    # ``other`` mostly shares app's servers, so that it can stand in the way (N+1)
    other_on = list(dict.fromkeys([*draw(some), *draw(st.lists(st.sampled_from(ip_on)))]))
    other_prio = dict(zip(other_on, draw(priorities), strict=False))
    resources = {
        "app": Resource("app", "app", instances=app_prio, policies={"n_plus_one": draw(mostly)}),
        "ip": Resource("ip", "app", instances={s: app_prio[s] for s in ip_on}),
        "other": Resource(
            "other", "app", instances=other_prio, policies={"n_plus_one": draw(mostly)}
        ),
    }
    other_primary = min(other_on, key=other_prio.__getitem__)
    standbys = [s for s in other_on if s in ip_on and s != other_primary]
    other_wanted = draw(st.sampled_from([None, *other_on, *standbys, *standbys, *standbys]))
    cluster = Cluster(
        servers=servers,
        resources=resources,
        dependencies=frozenset({Dependency("app", "ip")}),
        intents={"other": Intent("other", other_wanted, 1)},
        stopped=stopped,
    )
    exclude = tuple(draw(st.lists(st.sampled_from(SERVERS), unique=True, max_size=3)))
    return cluster, exclude


def eligible(cluster: Cluster, server: str, exclude: tuple[str, ...]) -> bool:
    """The rule, restated independently of the module under test."""
    app, ip, other = (cluster.resources[t] for t in ("app", "ip", "other"))
    if server in exclude or not cluster.servers[server].alive or server in cluster.stopped:
        return False
    if server not in ip.instances:
        return False
    both_n_plus_one = app.policies["n_plus_one"] and other.policies["n_plus_one"]
    if both_n_plus_one and cluster.intents["other"].server == server:
        app_primary = min(app.instances, key=app.instances.__getitem__)
        other_primary = min(other.instances, key=other.instances.__getitem__)
        return other_primary in (server, app_primary)
    return True


@settings(max_examples=400, deadline=None)
@given(target_cases())
def test_the_target_is_the_best_eligible_server(case: tuple[Cluster, tuple[str, ...]]) -> None:
    cluster, exclude = case
    chosen = target(cluster, exclude=exclude)
    prio = cluster.resources["app"].instances
    candidates = [s for s in prio if eligible(cluster, s, exclude)]
    if chosen.server is None:
        assert candidates == []
        refusals = chosen.reason.removeprefix("no server can take it: ").split("; ")
        assert len(refusals) == len(prio), "every refusal is named"
        for server, refusal in zip(sorted(prio, key=prio.__getitem__), refusals, strict=True):
            assert server in refusal
        return
    assert chosen.server not in exclude
    assert cluster.servers[chosen.server].alive
    assert chosen.server not in cluster.stopped
    assert chosen.server in candidates
    assert all(prio[chosen.server] <= prio[s] for s in candidates), "none better"
    assert chosen.reason == (
        f"{chosen.server} is the preferred eligible server (priority {prio[chosen.server]})"
    )
