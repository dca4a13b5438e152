"""The cluster view: hierarchies, their servers, instance states, intents."""

from __future__ import annotations

from dataclasses import replace

import pytest
from builders import make_cluster, three_level

from vigil.model.cluster import CommPath, Hierarchy, Intent, Observed, Resource
from vigil.model.states import InstanceState

# --- hierarchies --------------------------------------------------------------------------


def test_hierarchies_are_connected_components_named_by_their_first_root() -> None:
    cluster = make_cluster(
        resources={"b-app": {"n1": 1}, "a-disk": {"n1": 1}, "zz": {"n1": 1}, "c": {"n1": 1}},
        deps=[("b-app", "a-disk")],
    )
    names = [h.name for h in cluster.hierarchies]
    # "b-app" names its hierarchy although "a-disk" sorts first: a-disk is not a root
    assert names == ["b-app", "c", "zz"]
    hierarchy = cluster.hierarchy("a-disk")
    assert hierarchy.tags == frozenset({"b-app", "a-disk"})
    assert hierarchy.roots == ("b-app",)
    assert cluster.hierarchy("b-app") == hierarchy
    assert cluster.hierarchy("zz").tags == frozenset({"zz"})


def test_hierarchy_with_two_roots_sharing_a_child() -> None:
    cluster = make_cluster(
        resources={t: {"n1": 1} for t in ("web", "mail", "vol")},
        deps=[("web", "vol"), ("mail", "vol")],
    )
    (hierarchy,) = cluster.hierarchies
    assert hierarchy.roots == ("mail", "web")
    assert hierarchy.name == "mail"


def test_three_level_hierarchy() -> None:
    cluster = three_level()
    (hierarchy,) = cluster.hierarchies
    assert hierarchy.name == "app"
    assert hierarchy.tags == frozenset({"app", "ip", "vol", "disk"})
    assert cluster.children("app") == ["ip", "vol"]
    assert cluster.parents("disk") == ["vol"]
    assert cluster.parents("app") == []
    assert cluster.edges == [("app", "ip"), ("app", "vol"), ("vol", "disk")]


def test_hierarchy_of_an_unknown_tag_raises_key_error() -> None:
    with pytest.raises(KeyError):
        three_level().hierarchy("nope")


def test_hierarchy_without_roots_is_named_by_its_smallest_tag() -> None:
    assert Hierarchy(frozenset({"b", "a"}), ()).name == "a"


# --- hierarchy servers --------------------------------------------------------------------


def test_hierarchy_servers_are_those_every_resource_is_extended_to() -> None:
    cluster = make_cluster(
        servers=("n1", "n2", "n3"),
        resources={"app": {"n1": 1, "n2": 10, "n3": 20}, "ip": {"n1": 1, "n2": 10}},
        deps=[("app", "ip")],
    )
    assert cluster.hierarchy_servers(cluster.hierarchy("app")) == {"n1", "n2"}


def test_hierarchy_servers_of_a_resource_without_instances_is_empty() -> None:
    cluster = make_cluster(resources={"app": {}})
    assert cluster.hierarchy_servers(cluster.hierarchy("app")) == set()


# --- state_of -----------------------------------------------------------------------------


def test_state_of_returns_what_a_live_agent_reported() -> None:
    cluster = make_cluster(resources={"app": {"n1": 1}}, observed={("n1", "app"): "ISP"})
    observed = cluster.state_of("n1", "app")
    assert observed.state is InstanceState.ISP
    assert observed.server == "n1"
    assert observed.tag == "app"


def test_state_of_is_osu_not_reported_yet_without_an_observation() -> None:
    cluster = make_cluster(resources={"app": {"n1": 1}})
    observed = cluster.state_of("n1", "app")
    assert observed.state is InstanceState.OSU
    assert observed.reason == "not reported yet"


def test_state_of_on_a_dead_server_is_unknown_with_the_last_report() -> None:
    cluster = make_cluster(
        resources={"app": {"n1": 1}}, dead=["n1"], observed={("n1", "app"): InstanceState.ISP}
    )
    observed = cluster.state_of("n1", "app")
    assert observed.state is InstanceState.UNKNOWN
    assert "the agent of this server is not running" in observed.reason
    assert "last reported ISP" in observed.reason


def test_state_of_on_a_dead_server_without_a_report() -> None:
    cluster = make_cluster(resources={"app": {"n1": 1}}, dead=["n1"])
    observed = cluster.state_of("n1", "app")
    assert observed.state is InstanceState.UNKNOWN
    assert observed.reason == "the agent of this server is not running"


def test_state_of_on_an_unknown_server() -> None:
    observed = make_cluster().state_of("ghost", "app")
    assert observed.state is InstanceState.UNKNOWN
    assert observed.reason == "unknown server"


# --- intents and owners -------------------------------------------------------------------


def test_intended_server_is_the_intent_of_the_root() -> None:
    cluster = three_level(intents={"app": "n2", "ip": "n1"})
    assert cluster.intended_server(cluster.hierarchy("disk")) == "n2"


def test_intended_server_is_none_without_intent_or_when_out_of_service() -> None:
    assert three_level().intended_server(three_level().hierarchy("app")) is None
    cluster = three_level(intents={"app": None})
    assert cluster.intended_server(cluster.hierarchy("app")) is None
    # an intent on a child alone does not decide where the hierarchy goes
    cluster = three_level(intents={"ip": "n1"})
    assert cluster.intended_server(cluster.hierarchy("app")) is None


def test_intent_revision_is_the_newest_among_the_resources() -> None:
    cluster = three_level(intents={"app": "n1", "ip": "n1"}, intent_revision=7)
    newer = {**cluster.intents, "disk": Intent("disk", "n1", 9)}
    cluster = replace(cluster, intents=newer)
    assert cluster.intent_revision(cluster.hierarchy("app")) == 9
    alone = make_cluster(resources={"x": {"n1": 1}})
    assert alone.intent_revision(alone.hierarchy("x")) == 0


def test_owner_of_lists_every_owning_server() -> None:
    cluster = three_level(owners={"ip": "n1", "disk": "n2"})
    assert cluster.owner_of(cluster.hierarchy("app")) == {"n1", "n2"}
    assert three_level().owner_of(three_level().hierarchy("app")) == set()


# --- small model pieces -------------------------------------------------------------------


def test_comm_path_between_normalises_the_order() -> None:
    one = CommPath.between("n2", "10.0.0.2", "n1", "10.0.0.1")
    other = CommPath.between("n1", "10.0.0.1", "n2", "10.0.0.2")
    assert one == other
    assert (one.server_a, one.address_a) == ("n1", "10.0.0.1")
    assert one.id == "n1~10.0.0.1~n2~10.0.0.2"
    assert one.joins("n2", "n1") and not one.joins("n1", "n3")
    assert one.end("n2") == ("10.0.0.2", "n1", "10.0.0.1")
    assert one.end("n1") == ("10.0.0.1", "n2", "10.0.0.2")


def test_comm_paths_between() -> None:
    cluster = make_cluster(servers=("n1", "n2", "n3"), paths=[("n1", "n2"), ("n2", "n3")])
    assert len(cluster.comm_paths_between("n2", "n1")) == 1
    assert cluster.comm_paths_between("n1", "n3") == []


def test_resource_properties_on_a_server_overlay_the_cluster_wide_ones() -> None:
    resource = Resource(
        "ip",
        "ip",
        properties={"address": "10.9.0.1", "prefix": 24},
        server_properties={"n2": {"interface": "eth1", "prefix": 16}},
        instances={"n2": 10, "n1": 1, "n3": 5},
    )
    assert resource.properties_on("n2") == {
        "address": "10.9.0.1",
        "prefix": 16,
        "interface": "eth1",
    }
    assert resource.properties_on("n1") == {"address": "10.9.0.1", "prefix": 24}
    assert resource.servers_by_priority == ["n1", "n3", "n2"]


def test_in_service_states() -> None:
    assert {s for s in InstanceState if s.in_service} == {InstanceState.ISP, InstanceState.ISU}
    assert Observed("a", "n1", InstanceState.OSF).state.in_service is False


# --- indexes and views of the same configuration -----------------------------------------


def test_dependency_indexes_answer_as_a_scan_of_every_dependency_would() -> None:
    cluster = make_cluster(
        resources={t: {"n1": 1} for t in ("web", "mail", "vol", "ip", "db", "alone")},
        deps=[("web", "vol"), ("web", "ip"), ("mail", "vol"), ("db", "vol")],
    )
    for tag in cluster.resources:
        assert cluster.children(tag) == sorted(
            d.child for d in cluster.dependencies if d.parent == tag
        )
        assert cluster.parents(tag) == sorted(
            d.parent for d in cluster.dependencies if d.child == tag
        )
        assert tag in cluster.hierarchy(tag).tags
    assert cluster.parents("vol") == ["db", "mail", "web"]
    assert cluster.children("alone") == []
    cluster.children("web").append("changed")  # a copy: the index is not touched
    assert cluster.children("web") == ["ip", "vol"]
    with pytest.raises(KeyError):
        cluster.hierarchy("unknown")


def test_evolve_keeps_what_was_derived_from_the_same_configuration() -> None:
    cluster = three_level()
    hierarchies = cluster.hierarchies
    policy = cluster.hierarchy_policy(hierarchies[0])
    other = cluster.evolve(revision=cluster.revision + 1, owners={})
    assert other.owners == {} and other.revision == cluster.revision + 1
    assert other.hierarchies is hierarchies
    assert other.hierarchy_policy(hierarchies[0]) is policy
    changed = cluster.evolve(resources=dict(cluster.resources))  # equal, not the same object
    assert changed.hierarchies == hierarchies
    assert changed.hierarchies is not hierarchies
    plain = replace(cluster, owners={})  # dataclasses.replace derives everything again
    assert plain.hierarchies == hierarchies


def test_evolve_derives_again_what_depends_on_a_changed_mapping() -> None:
    cluster = make_cluster(
        resources={"app": {"n1": 1, "n2": 10}, "ip": {"n1": 1, "n2": 10}},
        deps=[("app", "ip")],
        intents={"app": "n1", "ip": "n1"},
        owners={"app": "n1", "ip": "n1"},
        observed={("n1", "app"): InstanceState.ISP, ("n2", "app"): InstanceState.OSU},
    )
    (hierarchy,) = cluster.hierarchies
    assert cluster.intent_revision(hierarchy) == 5
    assert cluster.owner_of(hierarchy) == {"n1"}
    assert cluster.hierarchy_servers(hierarchy) == {"n1", "n2"}
    assert set(cluster.observed_of("app")) == {"n1", "n2"}
    assert set(cluster.observed_on("n2")) == {"app"}
    moved = cluster.evolve(
        intents={**cluster.intents, "ip": Intent("ip", "n2", 9)},
        owners={"ip": replace(cluster.owners["ip"], server="n2")},
        observed={("n2", "ip"): Observed("ip", "n2", InstanceState.ISP)},
    )
    assert moved.intent_revision(hierarchy) == 9
    assert moved.owner_of(hierarchy) == {"n2"}
    assert set(moved.observed_of("app")) == set() and set(moved.observed_on("n2")) == {"ip"}
    assert moved.hierarchy_servers(hierarchy) == {"n1", "n2"}  # carried: same resources
    assert cluster.owner_of(hierarchy) == {"n1"}  # the first view is unchanged
    cluster.owner_of(hierarchy).add("n3")  # a copy: the memo is not touched
    assert cluster.owner_of(hierarchy) == {"n1"}
