"""Store records and ``cluster_from_snapshot``: the store's JSON in, a ``Cluster`` out."""

from __future__ import annotations

from vigil.model.cluster import CommPath, Dependency, Resource
from vigil.model.records import (
    EVENTS_PREFIX,
    PREFIX,
    AliveRecord,
    CommPathRecord,
    ConfigRecord,
    DependencyRecord,
    IntentRecord,
    OwnerRecord,
    PathRecord,
    ResourceRecord,
    ServerRecord,
    StateRecord,
    cluster_from_snapshot,
    event_key,
    key,
)
from vigil.model.states import InstanceState, PathState

Item = tuple[str, bytes, int, int]


def item(store_key: str, record: object, create: int = 1, mod: int | None = None) -> Item:
    value = record if isinstance(record, bytes) else record.dump()  # type: ignore[attr-defined]
    return (store_key, value, create, create if mod is None else mod)


def server_items(name: str, *, alive: bool = True, maintenance: bool = False) -> list[Item]:
    items = [
        item(
            key("servers", name),
            ServerRecord(name=name, api_url=f"http://{name}:7700", addresses=["10.0.0.1"]),
        )
    ]
    if alive:
        alive_record = AliveRecord(started_at=1.0, pid=42, maintenance=maintenance)
        items.append(item(key("alive", name), alive_record))
    return items


def resource_item(tag: str, **instances: int) -> Item:
    return item(key("resources", tag), ResourceRecord(tag=tag, kit="app", instances=instances))


def test_key_is_under_the_prefix() -> None:
    assert key("resources", "web") == "/vigil/resources/web"
    assert key("state", "n1", "web") == "/vigil/state/n1/web"
    assert key("config") == PREFIX + "config"


def test_the_event_log_is_outside_the_cluster() -> None:
    assert not EVENTS_PREFIX.startswith(PREFIX)
    assert not event_key("1-n1-0").startswith(PREFIX)
    assert event_key("1-n1-0") == "/vigil-events/1-n1-0"


def test_empty_snapshot() -> None:
    cluster = cluster_from_snapshot(7, [])
    assert cluster.revision == 7
    assert cluster.servers == {}
    assert cluster.resources == {}
    assert cluster.config_revision == 0


def test_servers_are_alive_only_with_an_alive_key() -> None:
    items = [*server_items("n1"), *server_items("n2", alive=False)]
    items += server_items("n3", maintenance=True)
    cluster = cluster_from_snapshot(10, items)
    assert set(cluster.servers) == {"n1", "n2", "n3"}
    n1 = cluster.servers["n1"]
    assert n1.alive and not n1.maintenance
    assert n1.api_url == "http://n1:7700"
    assert n1.addresses == ("10.0.0.1",)
    assert not cluster.servers["n2"].alive
    assert cluster.servers["n3"].alive and cluster.servers["n3"].maintenance


def test_alive_key_without_a_server_record_adds_no_server() -> None:
    alive = item(key("alive", "ghost"), AliveRecord(started_at=1.0, pid=1))
    assert cluster_from_snapshot(3, [alive]).servers == {}


def test_comm_paths_and_their_observations() -> None:
    path = CommPathRecord(
        server_a="n1",
        address_a="10.0.0.1",
        server_b="n2",
        address_b="10.0.0.2",
        heartbeat_interval=0.5,
        max_missed=3,
    )
    expected = CommPath("n1", "10.0.0.1", "n2", "10.0.0.2", 0.5, 3)
    observation = PathRecord(state=PathState.ALIVE, last_heartbeat=12.5)
    items = [
        item(key("commpaths", expected.id), path),
        item(key("paths", "n2", expected.id), observation),
    ]
    cluster = cluster_from_snapshot(5, items)
    assert cluster.comm_paths == (expected,)
    (seen,) = cluster.path_observations
    assert (seen.path_id, seen.server, seen.state, seen.last_heartbeat) == (
        expected.id,
        "n2",
        PathState.ALIVE,
        12.5,
    )


def test_resources_round_trip_through_their_record() -> None:
    resource = Resource(
        tag="ip",
        kit="ip",
        properties={"address": "10.9.0.1", "prefix": 24},
        server_properties={"n2": {"interface": "eth1"}},
        instances={"n1": 1, "n2": 10},
        policies={"local_recovery": False},
    )
    record = ResourceRecord.of(resource)
    assert ResourceRecord.model_validate_json(record.dump()) == record
    cluster = cluster_from_snapshot(5, [item(key("resources", "ip"), record)])
    assert cluster.resources["ip"] == resource
    assert record.schema_version == 1


def test_dependencies_between_known_resources_are_kept() -> None:
    items = [
        resource_item("app", n1=1),
        resource_item("ip", n1=1),
        item(key("deps", "app", "ip"), DependencyRecord(created_at=1.0)),
    ]
    cluster = cluster_from_snapshot(5, items)
    assert cluster.dependencies == frozenset({Dependency("app", "ip")})


def test_dependencies_naming_a_missing_resource_are_dropped() -> None:
    items = [
        resource_item("app", n1=1),
        item(key("deps", "app", "gone"), DependencyRecord()),
        item(key("deps", "gone", "app"), DependencyRecord()),
    ]
    cluster = cluster_from_snapshot(5, items)
    assert cluster.dependencies == frozenset()
    assert [h.name for h in cluster.hierarchies] == ["app"]


def test_intent_revision_is_the_mod_revision() -> None:
    items = [
        item(key("intent", "app"), IntentRecord(server="n2", reason="switchover"), 3, 17),
        item(key("intent", "ip"), IntentRecord(server=None), 4, 4),
    ]
    cluster = cluster_from_snapshot(20, items)
    app = cluster.intents["app"]
    assert (app.tag, app.server, app.revision, app.reason) == ("app", "n2", 17, "switchover")
    assert cluster.intents["ip"].server is None
    assert cluster.intents["ip"].revision == 4


def test_owner_epoch_is_the_create_revision() -> None:
    items = [item(key("owner", "app"), OwnerRecord(server="n1", since=2.0), 11, 19)]
    owner = cluster_from_snapshot(20, items).owners["app"]
    assert (owner.tag, owner.server, owner.epoch) == ("app", "n1", 11)


def test_states_are_keyed_by_server_and_tag() -> None:
    record = StateRecord(
        state=InstanceState.OSF, reason="restore failed", since=3.0, intent_revision=8
    )
    cluster = cluster_from_snapshot(20, [item(key("state", "n2", "app"), record)])
    observed = cluster.observed[("n2", "app")]
    assert (observed.tag, observed.server, observed.state) == ("app", "n2", InstanceState.OSF)
    assert (observed.reason, observed.since, observed.intent_revision) == ("restore failed", 3.0, 8)


def test_config_revision_is_the_mod_revision_of_the_config_key() -> None:
    items = [item(key("config"), ConfigRecord(summary="created app"), 2, 31)]
    assert cluster_from_snapshot(40, items).config_revision == 31


def test_unknown_keys_and_keys_outside_the_prefix_are_skipped() -> None:
    items = [
        *server_items("n1"),
        item(key("events", "1-n1-0"), b'{"at": 1, "server": "n1", "kind": "x", "message": "m"}'),
        item(key("future-kind", "x"), b"{}"),
        item("/other/servers/n9", ServerRecord(name="n9", api_url="http://n9")),
    ]
    cluster = cluster_from_snapshot(9, items)
    assert set(cluster.servers) == {"n1"}


def test_malformed_values_are_skipped_and_the_rest_is_read() -> None:
    items = [
        item(key("servers", "bad"), b"{not json"),
        item(key("servers", "partial"), b'{"name": "partial"}'),  # api_url missing
        *server_items("n1"),
        item(key("resources", "broken"), b"[]"),
        resource_item("app", n1=1),
        item(key("intent", "app"), b'{"reason": "no server field"}'),
        item(key("owner", "app"), b"\xff\xfe"),
        item(key("state", "n1", "app"), b'{"state": "SIDEWAYS"}'),
        item(key("paths", "n1", "p"), b'{"state": 3}'),
        item(key("commpaths", "p"), b'{"server_a": "n1"}'),
    ]
    cluster = cluster_from_snapshot(9, items)
    assert set(cluster.servers) == {"n1"}
    assert set(cluster.resources) == {"app"}
    assert cluster.intents == {}
    assert cluster.owners == {}
    assert cluster.observed == {}
    assert cluster.path_observations == ()
    assert cluster.comm_paths == ()


def test_unknown_fields_from_a_newer_writer_are_ignored() -> None:
    value = b'{"schema_version": 2, "server": "n1", "reason": "r", "new_field": [1, 2]}'
    cluster = cluster_from_snapshot(9, [item(key("intent", "app"), value, 2, 6)])
    assert cluster.intents["app"].server == "n1"


def test_full_snapshot_builds_a_usable_cluster() -> None:
    items = [
        *server_items("n1"),
        *server_items("n2", alive=False),
        resource_item("app", n1=1, n2=10),
        resource_item("ip", n1=1, n2=10),
        item(key("deps", "app", "ip"), DependencyRecord()),
        item(key("intent", "app"), IntentRecord(server="n1"), 4, 8),
        item(key("intent", "ip"), IntentRecord(server="n1"), 4, 9),
        item(key("owner", "app"), OwnerRecord(server="n1"), 12, 12),
        item(key("state", "n1", "app"), StateRecord(state=InstanceState.ISP)),
    ]
    cluster = cluster_from_snapshot(50, items)
    (hierarchy,) = cluster.hierarchies
    assert hierarchy.name == "app"
    assert cluster.intended_server(hierarchy) == "n1"
    assert cluster.intent_revision(hierarchy) == 9
    assert cluster.owner_of(hierarchy) == {"n1"}
    assert cluster.hierarchy_servers(hierarchy) == {"n1", "n2"}
    assert cluster.state_of("n1", "app").state is InstanceState.ISP
    assert cluster.state_of("n2", "app").state is InstanceState.UNKNOWN
