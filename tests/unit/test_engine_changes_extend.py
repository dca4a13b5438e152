"""Administrator operations on where a hierarchy lives: extend, unextend, delete."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from builders import apply, make_cluster, refused, three_level

from vigil.engine import changes
from vigil.errors import Conflict, NotFound, ValidationError
from vigil.model.cluster import Cluster, Dependency, Resource

ALL = ("app", "ip", "vol", "disk")
THREE = ("n1", "n2", "n3")


def on_n1(**kwargs: Any) -> Cluster:
    """The three-level hierarchy on n1 only (priority 1), among three servers."""
    defaults: dict[str, Any] = {
        "servers": THREE,
        "resources": {tag: {"n1": 1} for tag in ALL},
        "intents": {"app": "n1"},
    }
    defaults.update(kwargs)
    return three_level(**defaults)


# --- extend -------------------------------------------------------------------------------


def test_extend_defaults_to_priority_10_for_the_whole_hierarchy() -> None:
    cluster = on_n1()
    change, priority = changes.extend(cluster, "vol", "n2", None)
    assert priority == 10
    assert set(change.resources) == set(ALL)
    for tag in ALL:
        assert change.resources[tag].instances == {"n1": 1, "n2": 10}
    assert change.summary == "extended app to n2 with priority 10"
    assert change.intents == {}


def test_extend_takes_the_next_free_priority_when_10_is_used() -> None:
    cluster = three_level(servers=THREE)  # n1: 1, n2: 10
    change, priority = changes.extend(cluster, "app", "n3", None)
    assert priority == 11
    assert all(r.instances["n3"] == 11 for r in change.resources.values())


def test_extend_with_an_explicit_priority() -> None:
    change, priority = changes.extend(on_n1(), "app", "n3", 5)
    assert priority == 5
    assert change.resources["disk"].instances == {"n1": 1, "n3": 5}


def test_extend_keeps_properties_and_other_resources() -> None:
    cluster = on_n1(
        resources={
            **{tag: {"n1": 1} for tag in ALL},
            "ip": Resource("ip", "ip", {"address": "10.9.0.1"}, instances={"n1": 1}),
            "other": {"n1": 1},
        }
    )
    change, _ = changes.extend(cluster, "app", "n2", None)
    assert "other" not in change.resources
    assert change.resources["ip"].properties == {"address": "10.9.0.1"}
    assert change.resources["ip"].kit == "ip"


@pytest.mark.parametrize("priority", [0, 1000])
def test_extend_refuses_a_priority_out_of_range(priority: int) -> None:
    with refused(ValidationError, f"priority {priority} is out of range"):
        changes.extend(on_n1(), "app", "n2", priority)


def test_extend_refuses_a_used_priority_naming_its_server_and_a_free_one() -> None:
    cluster = three_level(servers=THREE)
    with refused(Conflict, r"priority 10 is already used by n2 in app: .*free: 11"):
        changes.extend(cluster, "ip", "n3", 10)
    with refused(Conflict, r"priority 1 is already used by n1"):
        changes.extend(cluster, "ip", "n3", 1)


def test_extend_refuses_a_server_already_extended_to() -> None:
    with refused(Conflict, r"app is already extended to n2 \(priority 10\)"):
        changes.extend(three_level(), "disk", "n2", None)


def test_extend_refuses_a_target_without_a_comm_path() -> None:
    cluster = on_n1(paths=[("n1", "n2")])
    with refused(Conflict, r"no comm path joins n3 and n1: create one first"):
        changes.extend(cluster, "app", "n3", None)


def test_extend_needs_a_path_to_every_server_of_the_hierarchy() -> None:
    cluster = three_level(servers=THREE, paths=[("n1", "n2"), ("n1", "n3")])
    with refused(Conflict, r"no comm path joins n3 and n2"):
        changes.extend(cluster, "app", "n3", None)


def test_extend_refuses_a_dead_target() -> None:
    with refused(Conflict, "the agent of n2 is not running"):
        changes.extend(on_n1(dead=["n2"]), "app", "n2", None)


def test_extend_to_an_unknown_server_or_resource() -> None:
    with refused(NotFound, "unknown server 'n9'"):
        changes.extend(on_n1(), "app", "n9", None)
    with refused(NotFound, "no resource is tagged 'nope'"):
        changes.extend(on_n1(), "nope", "n2", None)


def test_extend_twice_then_create_dependency_keeps_priorities_unique() -> None:
    cluster = on_n1()
    for target in ("n2", "n3"):
        change, _ = changes.extend(cluster, "app", target, None)
        cluster = apply(cluster, change)
    assert cluster.resources["app"].instances == {"n1": 1, "n2": 10, "n3": 11}


def test_priorities_stay_unique_in_every_member_after_depend_and_extend() -> None:
    cluster = make_cluster(
        servers=THREE,
        resources={"app": {"n1": 1, "n2": 10}, "ip": {"n1": 1, "n2": 20}},
        intents={"app": "n1", "ip": "n1"},
    )
    steps: list[Callable[[Cluster], changes.Change]] = [
        lambda c: changes.create_dependency(c, "app", "ip"),
        lambda c: changes.extend(c, "app", "n3", 20)[0],
    ]
    for step in steps:
        try:
            cluster = apply(cluster, step(cluster))
        except ValidationError:
            break  # refusing either step keeps the rule
    for resource in cluster.resources.values():
        priorities = list(resource.instances.values())
        assert len(priorities) == len(set(priorities)), resource


# --- unextend -----------------------------------------------------------------------------


def test_unextend_removes_instances_and_per_server_properties() -> None:
    cluster = three_level(
        servers=THREE,
        resources={
            **{tag: {"n1": 1, "n2": 10, "n3": 20} for tag in ALL},
            "ip": Resource(
                "ip",
                "ip",
                server_properties={"n1": {"nic": "eth0"}, "n2": {"nic": "eth1"}},
                instances={"n1": 1, "n2": 10, "n3": 20},
            ),
        },
        intents={"app": "n1"},
    )
    change = changes.unextend(cluster, "disk", "n2")
    assert set(change.resources) == set(ALL)
    for tag in ALL:
        assert change.resources[tag].instances == {"n1": 1, "n3": 20}
    assert change.resources["ip"].server_properties == {"n1": {"nic": "eth0"}}
    assert change.summary == "unextended app from n2"


def test_unextend_refused_where_it_is_wanted() -> None:
    with refused(Conflict, "app is in service on n2"):
        changes.unextend(three_level(intents={"app": "n2"}), "ip", "n2")


def test_unextend_refused_where_it_is_owned() -> None:
    cluster = three_level(intents={"app": "n1"}, owners={"vol": "n2"})
    with refused(Conflict, "app is in service on n2"):
        changes.unextend(cluster, "app", "n2")


def test_unextend_refused_where_it_is_reported_in_service() -> None:
    cluster = three_level(intents={"app": "n1"}, observed={("n2", "disk"): "ISU"})
    with refused(Conflict, "app is in service on n2"):
        changes.unextend(cluster, "app", "n2")


def test_unextend_refused_on_the_last_server() -> None:
    cluster = on_n1(intents={"app": None})
    with refused(Conflict, "n1 is the only server of app: delete the hierarchy instead"):
        changes.unextend(cluster, "app", "n1")


def test_unextend_from_a_server_not_extended_to() -> None:
    with refused(NotFound, "app is not extended to n3"):
        changes.unextend(on_n1(), "app", "n3")


def test_unextend_from_a_backup_is_allowed() -> None:
    cluster = three_level(intents={"app": "n1"}, owners=dict.fromkeys(ALL, "n1"))
    change = changes.unextend(cluster, "app", "n2")
    assert all(r.instances == {"n1": 1} for r in change.resources.values())


# --- delete -------------------------------------------------------------------------------


def test_deletion_set_is_the_whole_hierarchy_from_its_root() -> None:
    assert changes.deletion_set(three_level(), "app") == set(ALL)


def test_deletion_set_keeps_children_shared_with_another_hierarchy() -> None:
    # web -> vol -> disk, mail -> vol; deleting web keeps vol and disk for mail
    cluster = make_cluster(
        resources={t: {"n1": 1} for t in ("web", "web-ip", "mail", "vol", "disk")},
        deps=[("web", "web-ip"), ("web", "vol"), ("mail", "vol"), ("vol", "disk")],
    )
    assert changes.deletion_set(cluster, "web") == {"web", "web-ip"}
    change = changes.delete_hierarchy(cluster, "web")
    assert change.deleted_resources == frozenset({"web", "web-ip"})
    assert change.deleted_dependencies == frozenset(
        {Dependency("web", "web-ip"), Dependency("web", "vol")}
    )
    after = apply(cluster, change)
    assert set(after.resources) == {"mail", "vol", "disk"}
    assert after.edges == [("mail", "vol"), ("vol", "disk")]


def test_deletion_set_of_a_diamond_deletes_the_shared_bottom() -> None:
    cluster = make_cluster(
        resources={t: {"n1": 1} for t in "abcd"},
        deps=[("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")],
    )
    assert changes.deletion_set(cluster, "a") == {"a", "b", "c", "d"}


def test_delete_refused_when_another_resource_depends_on_the_tag() -> None:
    with refused(Conflict, r"vol is needed by app: delete that hierarchy first"):
        changes.deletion_set(three_level(), "vol")
    cluster = make_cluster(
        resources={t: {"n1": 1} for t in ("web", "mail", "vol")},
        deps=[("web", "vol"), ("mail", "vol")],
    )
    with refused(Conflict, r"vol is needed by mail, web: delete those hierarchies first"):
        changes.delete_hierarchy(cluster, "vol")


def test_delete_refused_while_owned() -> None:
    cluster = three_level(intents={"app": None}, owners={"disk": "n2"})
    with refused(Conflict, r"cannot delete while in service \(disk on n2\)"):
        changes.delete_hierarchy(cluster, "app")


def test_delete_an_unknown_resource() -> None:
    with refused(NotFound, "no resource is tagged 'nope'"):
        changes.delete_hierarchy(three_level(), "nope")


def test_delete_hierarchy_deletes_every_member_and_its_dependencies() -> None:
    cluster = three_level(intents={"app": None})
    change = changes.delete_hierarchy(cluster, "app")
    assert change.deleted_resources == frozenset(ALL)
    assert change.deleted_dependencies == cluster.dependencies
    assert apply(cluster, change).resources == {}
