"""Administrator operations: in service, out of service, comm paths."""

from __future__ import annotations

from dataclasses import replace

import pytest
from builders import address, apply, make_cluster, refused, three_level

from vigil.engine import changes
from vigil.errors import Conflict, NotFound, ValidationError
from vigil.model.cluster import CommPath

ALL = ("app", "ip", "vol", "disk")

# --- bring in service / take out of service -----------------------------------------------


def test_bring_in_service_sets_the_intent_of_every_member() -> None:
    cluster = three_level(intents={"app": None})
    change = changes.bring_in_service(cluster, "vol", "n1", "admin")
    assert change.intents == dict.fromkeys(ALL, "n1")
    assert change.intent_reason == "in service requested by admin"
    assert change.summary == "app: in service on n1"
    assert change.resources == {}


def test_bring_in_service_elsewhere_is_a_switchover() -> None:
    cluster = three_level(intents=dict.fromkeys(ALL, "n1"))
    change = changes.bring_in_service(cluster, "app", "n2", "alice")
    assert change.intents == dict.fromkeys(ALL, "n2")
    assert change.intent_reason == "switchover requested by alice (from n1)"
    assert change.summary == "app: switchover on n2"
    after = apply(cluster, change)
    assert after.intended_server(after.hierarchy("app")) == "n2"


def test_bring_in_service_where_it_already_is_is_not_a_switchover() -> None:
    change = changes.bring_in_service(three_level(intents={"app": "n1"}), "app", "n1", "bob")
    assert change.intent_reason == "in service requested by bob"


def test_bring_in_service_refused_where_not_extended() -> None:
    cluster = three_level(servers=("n1", "n2", "n3"))
    with refused(Conflict, "app is not extended to n3: extend it first"):
        changes.bring_in_service(cluster, "ip", "n3", "admin")


def test_bring_in_service_refused_where_only_some_members_are_extended() -> None:
    cluster = make_cluster(
        resources={"app": {"n1": 1, "n2": 10}, "ip": {"n1": 1}}, deps=[("app", "ip")]
    )
    with refused(Conflict, "app is not extended to n2"):
        changes.bring_in_service(cluster, "app", "n2", "admin")


def test_bring_in_service_refused_on_a_dead_server() -> None:
    with refused(Conflict, "the agent of n2 is not running"):
        changes.bring_in_service(three_level(dead=["n2"]), "app", "n2", "admin")


def test_bring_in_service_of_unknown_things() -> None:
    with refused(NotFound, "unknown server 'n9'"):
        changes.bring_in_service(three_level(), "app", "n9", "admin")
    with refused(NotFound, "no resource is tagged 'nope'"):
        changes.bring_in_service(three_level(), "nope", "n1", "admin")


def test_take_out_of_service_clears_every_intent() -> None:
    cluster = three_level(intents=dict.fromkeys(ALL, "n1"))
    change = changes.take_out_of_service(cluster, "disk", "admin")
    assert change.intents == dict.fromkeys(ALL)
    assert change.intent_reason == "out of service requested by admin"
    assert change.summary == "app: out of service"
    after = apply(cluster, change)
    assert after.intended_server(after.hierarchy("app")) is None


def test_take_out_of_service_of_an_unknown_resource() -> None:
    with refused(NotFound, "no resource is tagged 'nope'"):
        changes.take_out_of_service(three_level(), "nope", "admin")


# --- comm paths ---------------------------------------------------------------------------


def test_create_comm_path_normalises_its_ends() -> None:
    cluster = make_cluster(paths=[])
    change = changes.create_comm_path(cluster, "n2", address(1, 1), "n1", address(0, 1), 0.5, 3)
    assert change.comm_paths == (CommPath("n1", "10.1.0.1", "n2", "10.1.0.2", 0.5, 3),)
    assert change.summary == "created comm path n1~10.1.0.1~n2~10.1.0.2"


def test_create_comm_path_to_a_server_without_registered_addresses() -> None:
    cluster = make_cluster(paths=[])
    bare = {**cluster.servers}
    bare["n2"] = replace(bare["n2"], addresses=())
    cluster = replace(cluster, servers=bare)
    change = changes.create_comm_path(cluster, "n1", "10.0.0.1", "n2", "192.168.7.7")
    assert change.comm_paths[0].address_b == "192.168.7.7"


@pytest.mark.parametrize("bad", ["10.0.0", "node2", "", "10.0.0.256", "10.0.0.1/24"])
def test_create_comm_path_refuses_a_bad_address(bad: str) -> None:
    with refused(ValidationError, "is not an IP address"):
        changes.create_comm_path(make_cluster(paths=[]), "n1", "10.0.0.1", "n2", bad)


def test_create_comm_path_refuses_the_same_server() -> None:
    with refused(ValidationError, "joins two different servers, not n1 to itself"):
        changes.create_comm_path(make_cluster(), "n1", "10.0.0.1", "n1", "10.1.0.1")


def test_create_comm_path_refuses_an_address_of_another_server() -> None:
    with refused(ValidationError, r"10.0.0.1 is not an address of n2 \(its addresses: 10.0.0.2, "):
        changes.create_comm_path(make_cluster(paths=[]), "n1", "10.1.0.1", "n2", "10.0.0.1")


def test_create_comm_path_refuses_bad_heartbeat_settings() -> None:
    cluster = make_cluster(paths=[])
    with refused(ValidationError, "heartbeat interval must be > 0"):
        changes.create_comm_path(cluster, "n1", "10.0.0.1", "n2", "10.0.0.2", 0, 5)
    with refused(ValidationError, "max missed heartbeats >= 1"):
        changes.create_comm_path(cluster, "n1", "10.0.0.1", "n2", "10.0.0.2", 1.0, 0)


def test_create_comm_path_refuses_a_duplicate_in_either_direction() -> None:
    cluster = make_cluster()  # n1 10.0.0.1 <-> n2 10.0.0.2 exists
    with refused(Conflict, "a comm path 10.0.0.2 <-> 10.0.0.1 already exists"):
        changes.create_comm_path(cluster, "n2", "10.0.0.2", "n1", "10.0.0.1")
    with refused(Conflict, "already exists"):
        changes.create_comm_path(cluster, "n1", "10.0.0.1", "n2", "10.0.0.2")
    # another pair of addresses between the same servers is fine
    change = changes.create_comm_path(cluster, "n1", "10.1.0.1", "n2", "10.1.0.2")
    assert len(apply(cluster, change).comm_paths_between("n1", "n2")) == 2


def test_create_comm_path_with_an_unknown_server() -> None:
    with refused(NotFound, "unknown server 'n9'"):
        changes.create_comm_path(make_cluster(), "n1", "10.0.0.1", "n9", "10.0.0.9")


def test_delete_comm_path() -> None:
    cluster = make_cluster(resources={"app": {"n1": 1}})
    (path,) = cluster.comm_paths
    change = changes.delete_comm_path(cluster, path.id)
    assert change.deleted_comm_paths == (path.id,)
    assert apply(cluster, change).comm_paths == ()


def test_delete_the_last_path_between_servers_sharing_a_hierarchy_is_refused() -> None:
    cluster = three_level()
    (path,) = cluster.comm_paths
    with refused(Conflict, rf"{path.id} is the last comm path between n1 and n2, which share app"):
        changes.delete_comm_path(cluster, path.id)
    change = changes.delete_comm_path(cluster, path.id, force=True)
    assert change.deleted_comm_paths == (path.id,)


def test_delete_one_of_two_paths_between_servers_sharing_a_hierarchy() -> None:
    cluster = three_level()
    change = changes.create_comm_path(cluster, "n1", "10.1.0.1", "n2", "10.1.0.2")
    cluster = apply(cluster, change)
    first = cluster.comm_paths[0]
    cluster = apply(cluster, changes.delete_comm_path(cluster, first.id))
    (last,) = cluster.comm_paths
    with refused(Conflict, "is the last comm path"):
        changes.delete_comm_path(cluster, last.id)


def test_delete_an_unknown_comm_path() -> None:
    with refused(NotFound, "no comm path 'n1~x~n2~y'"):
        changes.delete_comm_path(make_cluster(), "n1~x~n2~y")
