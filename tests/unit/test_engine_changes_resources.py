"""Administrator operations on resources and dependencies: create, update, depend."""

from __future__ import annotations

from typing import Any

import pytest
from builders import apply, make_cluster, refused, three_level

from vigil.engine import changes
from vigil.errors import Conflict, NotFound, ValidationError
from vigil.model.cluster import Cluster, Dependency, Resource

KITS = ["volume", "app", "ip"]


def create(
    cluster: Cluster, tag: str = "web", kit: str = "app", server: str = "n1"
) -> changes.Change:
    return changes.create_resource(
        cluster,
        tag=tag,
        kit=kit,
        server=server,
        properties={"start": "/bin/true"},
        server_properties={"home": "/srv"},
        known_kits=KITS,
    )


# --- create_resource ----------------------------------------------------------------------


def test_create_gives_priority_1_and_intent_on_the_server() -> None:
    change = create(make_cluster(), server="n2")
    resource = change.resources["web"]
    assert resource == Resource(
        "web",
        "app",
        properties={"start": "/bin/true"},
        server_properties={"n2": {"home": "/srv"}},
        instances={"n2": 1},
    )
    assert change.intents == {"web": "n2"}
    assert change.intent_reason == "created on n2"
    assert change.deleted_resources == frozenset()
    assert "priority 1" in change.summary


def test_create_without_server_properties_stores_none() -> None:
    change = changes.create_resource(
        make_cluster(),
        tag="web",
        kit="app",
        server="n1",
        properties={},
        server_properties={},
        known_kits=KITS,
    )
    assert change.resources["web"].server_properties == {}


@pytest.mark.parametrize("tag", ["", "web app", "-web", "x" * 65])
def test_create_refuses_a_bad_tag(tag: str) -> None:
    with pytest.raises(ValidationError, match="tag"):
        create(make_cluster(), tag=tag)


def test_create_refuses_a_duplicate_tag_naming_its_kit() -> None:
    cluster = make_cluster(resources={"web": Resource("web", "ip", instances={"n1": 1})})
    with pytest.raises(ValidationError, match="tag 'web' is already used by a ip resource"):
        create(cluster)


def test_create_refuses_an_unknown_kit_listing_the_available_ones() -> None:
    with pytest.raises(
        ValidationError, match=r"unknown kit 'mail': available kits are app, ip, volume"
    ):
        create(make_cluster(), kit="mail")


def test_create_lists_every_problem_at_once() -> None:
    cluster = make_cluster(resources={"web app": {"n1": 1}})
    with pytest.raises(ValidationError) as excinfo:
        create(cluster, tag="web app", kit="mail")
    problems = excinfo.value.problems
    assert len(problems) == 3
    assert any("whitespace" in p for p in problems)
    assert any("unknown kit 'mail'" in p for p in problems)
    assert any("already used" in p for p in problems)


def test_create_refuses_an_unknown_server_naming_the_known_ones() -> None:
    with refused(NotFound, r"unknown server 'n9': the servers of this cluster are n1, n2"):
        create(make_cluster(), server="n9")


def test_create_refuses_a_dead_server() -> None:
    with refused(Conflict, r"the agent of n2 is not running"):
        create(make_cluster(dead=["n2"]), server="n2")


# --- update_properties --------------------------------------------------------------------


def test_update_merges_and_none_removes() -> None:
    resource = Resource(
        "ip",
        "ip",
        properties={"address": "10.9.0.1", "prefix": 24, "label": "x"},
        server_properties={"n1": {"interface": "eth0", "metric": 5}},
        instances={"n1": 1, "n2": 10},
    )
    cluster = make_cluster(resources={"ip": resource})
    change = changes.update_properties(
        cluster,
        "ip",
        {"prefix": 16, "label": None, "new": True},
        {"n1": {"metric": None}, "n2": {"interface": "eth1"}},
    )
    updated = change.resources["ip"]
    assert updated.properties == {"address": "10.9.0.1", "prefix": 16, "new": True}
    assert updated.server_properties == {"n1": {"interface": "eth0"}, "n2": {"interface": "eth1"}}
    assert updated.instances == resource.instances
    # the original is untouched
    assert resource.properties["label"] == "x"


def test_update_of_an_unknown_resource() -> None:
    with refused(NotFound, "no resource is tagged 'nope'"):
        changes.update_properties(make_cluster(), "nope", {}, {})


def test_update_refuses_per_server_properties_where_not_extended() -> None:
    cluster = make_cluster(servers=("n1", "n2", "n3"), resources={"ip": {"n1": 1}})
    with refused(Conflict, "ip is not extended to n3"):
        changes.update_properties(cluster, "ip", {}, {"n3": {"interface": "eth0"}})


# --- create_dependency --------------------------------------------------------------------


def two(**kwargs: Any) -> Cluster:
    """app and ip on n1 (1) and n2 (10), both wanted on n1, no dependency yet."""
    defaults: dict[str, Any] = {
        "resources": {"app": {"n1": 1, "n2": 10}, "ip": {"n1": 1, "n2": 10}},
        "intents": {"app": "n1", "ip": "n1"},
    }
    defaults.update(kwargs)
    return make_cluster(**defaults)


def test_create_dependency() -> None:
    cluster = two()
    change = changes.create_dependency(cluster, "app", "ip")
    assert change.dependencies == frozenset({Dependency("app", "ip")})
    after = apply(cluster, change)
    assert [h.name for h in after.hierarchies] == ["app"]


def test_create_dependency_on_unknown_resources() -> None:
    with refused(NotFound, "no resource is tagged 'db'"):
        changes.create_dependency(two(), "app", "db")
    with refused(NotFound, "no resource is tagged 'db'"):
        changes.create_dependency(two(), "db", "app")


def test_create_dependency_on_itself_is_refused() -> None:
    with refused(ValidationError, "app cannot depend on itself"):
        changes.create_dependency(two(), "app", "app")


def test_create_dependency_twice_is_refused() -> None:
    cluster = two(deps=[("app", "ip")])
    with refused(Conflict, "app already depends on ip"):
        changes.create_dependency(cluster, "app", "ip")


def test_create_dependency_refuses_a_cycle_naming_it() -> None:
    cluster = three_level(intents={"app": "n1"})
    with refused(Conflict, r"disk cannot depend on app: that would make a cycle") as info:
        changes.create_dependency(cluster, "disk", "app")
    assert "(app -> vol -> disk -> app)" in str(info.value)


def test_create_dependency_refuses_a_two_node_cycle() -> None:
    cluster = two(deps=[("app", "ip")])
    with refused(Conflict, r"that would make a cycle \((app -> ip -> app|ip -> app -> ip)\)"):
        changes.create_dependency(cluster, "ip", "app")


def test_create_dependency_refuses_different_server_sets() -> None:
    cluster = two(
        servers=("n1", "n2", "n3"),
        resources={"app": {"n1": 1, "n2": 10}, "ip": {"n1": 1, "n3": 10}},
    )
    with refused(Conflict, r"app is extended to n1, n2 but ip to n1, n3"):
        changes.create_dependency(cluster, "app", "ip")


def test_create_dependency_refuses_different_intents() -> None:
    with refused(Conflict, r"app is wanted in service on n1 and ip on n2"):
        changes.create_dependency(two(intents={"app": "n1", "ip": "n2"}), "app", "ip")
    with refused(Conflict, r"app is wanted in service on n1 and ip on no server"):
        changes.create_dependency(two(intents={"app": "n1", "ip": None}), "app", "ip")


def test_create_dependency_compares_the_intents_of_whole_hierarchies() -> None:
    # ip belongs to the hierarchy of "svc" (wanted on n2), whatever ip's own intent says
    cluster = make_cluster(
        resources={t: {"n1": 1, "n2": 10} for t in ("app", "svc", "ip")},
        deps=[("svc", "ip")],
        intents={"app": "n1", "svc": "n2", "ip": "n1"},
    )
    with refused(Conflict, r"app is wanted in service on n1 and ip on n2"):
        changes.create_dependency(cluster, "app", "ip")


def test_create_dependency_between_out_of_service_resources() -> None:
    change = changes.create_dependency(two(intents={}), "app", "ip")
    assert change.dependencies == frozenset({Dependency("app", "ip")})


# --- delete_dependency --------------------------------------------------------------------


def test_delete_dependency_splits_the_hierarchy() -> None:
    cluster = three_level(intents={"app": "n1", "vol": "n1"})
    change = changes.delete_dependency(cluster, "app", "vol")
    assert change.deleted_dependencies == frozenset({Dependency("app", "vol")})
    after = apply(cluster, change)
    assert [sorted(h.tags) for h in after.hierarchies] == [["app", "ip"], ["disk", "vol"]]


def test_delete_a_dependency_that_does_not_exist() -> None:
    with refused(NotFound, "app does not depend on disk"):
        changes.delete_dependency(three_level(), "app", "disk")
    with refused(NotFound, "no resource is tagged 'nope'"):
        changes.delete_dependency(three_level(), "app", "nope")
