"""Children made or adopted when a resource is created (``engine.children``)."""

from __future__ import annotations

import pytest
from builders import apply, make_cluster

from vigil.engine import changes
from vigil.engine.children import ChildRequest, add_children
from vigil.errors import Conflict, ValidationError
from vigil.model.cluster import Cluster, Dependency, Resource

KITS = ["mail", "volume", "ip"]


def create_mail(cluster: Cluster, server: str = "n1") -> changes.Change:
    return changes.create_resource(
        cluster, tag="mail", kit="mail", server=server, properties={}, server_properties={},
        known_kits=KITS,
    )  # fmt: skip


def volume(mount_point: str, device: str = "/dev/loop3") -> ChildRequest:
    return ChildRequest(
        "mail-vol", "volume", {"mount_point": mount_point}, {"device": device},
        unique=frozenset({"mount_point", "filesystem_uuid"}),
    )  # fmt: skip


def vol_resource(tag: str, mount_point: str, instances: dict[str, int]) -> Resource:
    return Resource(tag, "volume", properties={"mount_point": mount_point}, instances=instances)


def test_a_new_child_is_created_below_on_the_same_server() -> None:
    cluster = make_cluster()
    change, created = add_children(cluster, create_mail(cluster), "mail", "n1", [volume("/srv")])
    assert created == ["mail-vol"]
    child = change.resources["mail-vol"]
    assert child.instances == {"n1": 1}
    assert child.server_properties == {"n1": {"device": "/dev/loop3"}}
    assert Dependency("mail", "mail-vol") in change.dependencies
    assert change.intents["mail-vol"] == "n1"
    after = apply(cluster, change)
    assert after.hierarchy("mail-vol").name == "mail"
    assert "created mail-vol below it" in change.summary


def test_an_existing_volume_for_the_same_mount_point_is_adopted() -> None:
    cluster = make_cluster(
        resources={"spool": vol_resource("spool", "/srv", {"n1": 1})}, intents={"spool": "n1"}
    )
    change, created = add_children(cluster, create_mail(cluster), "mail", "n1", [volume("/srv")])
    assert created == []
    assert "mail-vol" not in change.resources
    assert Dependency("mail", "spool") in change.dependencies
    assert "spool now below it" in change.summary


def test_a_volume_of_another_hierarchy_is_refused_naming_it() -> None:
    cluster = make_cluster(
        resources={"spool": vol_resource("spool", "/srv", {"n1": 1}), "web": {"n1": 1}},
        deps=[("web", "spool")],
    )
    with pytest.raises(Conflict, match=r"spool .*belongs to hierarchy web"):
        add_children(cluster, create_mail(cluster), "mail", "n1", [volume("/srv")])


def test_an_adopted_child_extended_elsewhere_is_refused_with_what_to_do() -> None:
    cluster = make_cluster(
        resources={"mail-ip": Resource("mail-ip", "ip", instances={"n1": 1, "n2": 10})}
    )
    request = ChildRequest("mail-ip", "ip", adopt=True)
    with pytest.raises(Conflict, match="extended to n2 already: create mail first"):
        add_children(cluster, create_mail(cluster), "mail", "n1", [request])


def test_a_named_child_must_exist_and_be_of_the_kit() -> None:
    cluster = make_cluster(resources={"web": {"n1": 1}})
    with pytest.raises(ValidationError, match="no resource 'nope'"):
        add_children(
            cluster, create_mail(cluster), "mail", "n1", [ChildRequest("nope", "ip", adopt=True)]
        )
    with pytest.raises(Conflict, match="web is a app resource, not a ip resource"):
        add_children(
            cluster, create_mail(cluster), "mail", "n1", [ChildRequest("web", "ip", adopt=True)]
        )


def test_an_adopted_child_in_service_elsewhere_is_refused() -> None:
    cluster = make_cluster(
        resources={"mail-ip": Resource("mail-ip", "ip", instances={"n2": 1})},
        intents={"mail-ip": "n2"},
    )
    with pytest.raises(Conflict, match="not extended to n1"):
        add_children(
            cluster, create_mail(cluster), "mail", "n1", [ChildRequest("mail-ip", "ip", adopt=True)]
        )


def test_a_child_tag_in_use_by_something_else_gets_a_free_one() -> None:
    cluster = make_cluster(resources={"mail-vol": vol_resource("mail-vol", "/other", {"n2": 1})})
    change, created = add_children(cluster, create_mail(cluster), "mail", "n1", [volume("/srv")])
    assert created == ["mail-vol2"]
    assert change.resources["mail-vol2"].properties == {"mount_point": "/srv"}
