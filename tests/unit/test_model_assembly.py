"""``ClusterBuilder``: a Cluster made of parsed keys, fed a snapshot or one change at a time,
always the same Cluster as ``cluster_from_snapshot`` of the same keys."""

from __future__ import annotations

from dataclasses import fields

from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.model.assembly import ClusterBuilder
from vigil.model.cluster import Cluster
from vigil.model.records import (
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
    key,
)
from vigil.model.states import InstanceState, PathState

TAGS = ("app", "ip", "vol", "db")
SERVERS = ("n1", "n2")


def values() -> dict[str, list[bytes]]:
    """Candidate values per key, malformed ones included."""
    found: dict[str, list[bytes]] = {key("config"): [ConfigRecord().dump()]}
    for server in SERVERS:
        found[key("servers", server)] = [
            ServerRecord(name=server, api_url=f"http://{server}").dump(),
            b"{broken",
        ]
        found[key("alive", server)] = [
            AliveRecord(started_at=1.0, pid=1, ttl=1.5).dump(),
            AliveRecord(started_at=1.0, pid=1, ttl=1.5, maintenance=True).dump(),
        ]
        for tag in TAGS:
            found[key("state", server, tag)] = [
                StateRecord(state=InstanceState.ISP).dump(),
                StateRecord(state=InstanceState.OSU, reason="standby").dump(),
            ]
        found[key("paths", server, "p")] = [PathRecord(state=PathState.ALIVE).dump()]
    path = CommPathRecord(server_a="n1", address_a="10.0.0.1", server_b="n2", address_b="10.0.0.2")
    found[key("commpaths", "n1~10.0.0.1~n2~10.0.0.2")] = [path.dump()]
    for tag in TAGS:
        found[key("resources", tag)] = [
            ResourceRecord(tag=tag, kit="app", instances={"n1": 1, "n2": 10}).dump(),
            ResourceRecord(tag=tag, kit="app", instances={"n1": 1}).dump(),
            b"[]",
        ]
        found[key("intent", tag)] = [
            IntentRecord(server="n1").dump(),
            IntentRecord(server=None).dump(),
        ]
        found[key("owner", tag)] = [
            OwnerRecord(server="n1").dump(),
            OwnerRecord(server="n2").dump(),
        ]
    for parent, child in (("app", "ip"), ("app", "vol"), ("db", "vol")):
        found[key("deps", parent, child)] = [DependencyRecord().dump()]
    found[key("events", "1-n1-0")] = [b'{"at": 1, "server": "n1", "kind": "x", "message": "m"}']
    found[key("future", "x")] = [b"{}"]
    return found


VALUES = values()
KEYS = sorted(VALUES)

Change = tuple[str, int | None]  # (key, index of its value) or (key, None): deleted


def same(one: Cluster, other: Cluster) -> None:
    for field in fields(Cluster):
        assert getattr(one, field.name) == getattr(other, field.name), field.name
    assert one.hierarchies == other.hierarchies


class Store:
    """What a store would hold: key -> (value, create revision, mod revision)."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[bytes, int, int]] = {}
        self.revision = 0

    def apply(self, batch: list[Change], builder: ClusterBuilder) -> None:
        self.revision += 1
        for store_key, index in batch:
            if index is None:
                if self.items.pop(store_key, None) is not None:
                    builder.delete(store_key)
                continue
            value = VALUES[store_key][index % len(VALUES[store_key])]
            known = self.items.get(store_key)
            create = known[1] if known else self.revision
            self.items[store_key] = (value, create, self.revision)
            builder.put(store_key, value, self.revision)

    def snapshot(self) -> list[tuple[str, bytes, int, int]]:
        return [(k, v, c, m) for k, (v, c, m) in sorted(self.items.items())]


changes = st.lists(
    st.lists(
        st.tuples(st.sampled_from(KEYS), st.one_of(st.none(), st.integers(0, 2))),
        min_size=1,
        max_size=6,
        unique_by=lambda change: change[0],
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(changes)
def test_fed_one_change_at_a_time_it_builds_what_a_snapshot_reads(
    batches: list[list[Change]],
) -> None:
    store, builder = Store(), ClusterBuilder()
    for batch in batches:
        store.apply(batch, builder)
        same(builder.build(store.revision), cluster_from_snapshot(store.revision, store.snapshot()))


@settings(max_examples=60, deadline=None)
@given(changes, changes)
def test_a_reload_after_changes_builds_what_a_snapshot_reads(
    first: list[list[Change]], then: list[list[Change]]
) -> None:
    store, builder = Store(), ClusterBuilder()
    for batch in first:
        store.apply(batch, builder)
    builder.build(store.revision)
    ignored = ClusterBuilder()  # the changes happen while the builder does not follow
    for batch in then:
        store.apply(batch, ignored)
    builder.load(store.snapshot())
    same(builder.build(store.revision), cluster_from_snapshot(store.revision, store.snapshot()))


def test_an_unchanged_value_is_not_parsed_again_and_unchanged_mappings_are_kept() -> None:
    builder = ClusterBuilder()
    resource = ResourceRecord(tag="app", kit="app", instances={"n1": 1}).dump()
    builder.put(key("resources", "app"), resource, 5, 5)
    builder.put(key("servers", "n1"), ServerRecord(name="n1", api_url="http://n1").dump(), 6, 6)
    first = builder.build(6)
    hierarchies = first.hierarchies
    builder.put(key("alive", "n1"), AliveRecord(started_at=1.0, pid=1).dump(), 7)
    second = builder.build(7)
    assert second.servers["n1"].alive and not first.servers["n1"].alive
    assert second.resources is first.resources  # nothing of them changed
    assert second.hierarchies is hierarchies  # nor was anything derived from them again
    builder.load(
        [
            (key("resources", "app"), resource, 5, 5),
            (key("servers", "n1"), ServerRecord(name="n1", api_url="http://n1").dump(), 6, 6),
        ]
    )
    third = builder.build(8)
    assert not third.servers["n1"].alive  # the reload did not have it: deleted
    assert third.resources["app"] is first.resources["app"]  # same revision: not parsed again


def test_an_owner_key_watched_into_being_has_its_creation_as_its_epoch() -> None:
    builder = ClusterBuilder()
    builder.put(key("owner", "app"), OwnerRecord(server="n1").dump(), 12)
    assert builder.build(12).owners["app"].epoch == 12
    builder.put(key("owner", "app"), OwnerRecord(server="n1").dump(), 14)  # rewritten
    assert builder.build(14).owners["app"].epoch == 12
    builder.delete(key("owner", "app"))
    builder.put(key("owner", "app"), OwnerRecord(server="n2").dump(), 20)
    owner = builder.build(20).owners["app"]
    assert (owner.server, owner.epoch) == ("n2", 20)


def test_keys_that_are_not_the_cluster_are_not_held() -> None:
    builder = ClusterBuilder()
    for n in range(100):
        builder.put(key("events", f"{n:020d}-n1-{n}"), b'{"at": 1}', n + 1)
    builder.put("/vigil-events/1-n1-0", b"{}", 101)
    builder.put(key("servers", "n1"), b"{malformed", 102)  # held: not parsed again
    assert len(builder) == 1
    assert builder.build(102) == Cluster(revision=102)
