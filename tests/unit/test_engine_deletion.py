"""Deleting a hierarchy: the change that detaches it and takes it out of service first,
and the refusal while it is in service on a backup (``engine.deletion``)."""

from __future__ import annotations

from builders import make_cluster, refused, three_level

from vigil.engine.deletion import detach, refuse_on_backup
from vigil.errors import Conflict
from vigil.model.cluster import Cluster, Dependency

ALL = frozenset({"app", "ip", "vol", "disk"})
WARNING = {"app": "move its users back first (TAG)"}


def shared() -> Cluster:
    """web -> web-ip, and db -> web-ip too: web-ip stays when web goes."""
    return make_cluster(
        resources={t: {"n1": 1, "n2": 10} for t in ("web", "web-ip", "db")},
        deps=[("web", "web-ip"), ("db", "web-ip")],
        intents={"web": "n1", "web-ip": "n1", "db": "n1"},
        owners={"web": "n1", "web-ip": "n1", "db": "n1"},
    )


def test_nothing_to_detach_when_nothing_is_in_service_or_wanted() -> None:
    assert detach(three_level(), "app", "admin") is None
    assert detach(three_level(intents=dict.fromkeys(ALL)), "app", "admin") is None


def test_detach_takes_the_doomed_resources_out_of_service() -> None:
    change = detach(three_level(intents=dict.fromkeys(ALL, "n1")), "app", "admin")
    assert change is not None
    assert change.intents == dict.fromkeys(ALL)
    assert change.intent_reason == "being deleted by admin"
    assert change.summary == "app: out of service before deletion"
    assert change.deleted_dependencies == frozenset()


def test_detach_cuts_only_the_dependencies_with_resources_that_stay() -> None:
    change = detach(shared(), "web", "admin")
    assert change is not None
    assert set(change.intents) == {"web"}
    assert change.deleted_dependencies == {Dependency("web", "web-ip")}


def test_an_owned_resource_is_detached_even_when_wanted_nowhere() -> None:
    cluster = three_level(intents=dict.fromkeys(ALL), owners={"vol": "n1"})
    assert detach(cluster, "app", "admin") is not None


def test_delete_on_a_backup_is_refused_when_a_kit_warns() -> None:
    cluster = three_level(intents=dict.fromkeys(ALL, "n2"))
    with refused(Conflict, r"app is in service on n2, a backup \(its primary is n1\)"):
        refuse_on_backup(cluster, "app", WARNING)
    with refused(Conflict, r"move its users back first \(app\)"):
        refuse_on_backup(cluster, "app", WARNING)


def test_delete_on_the_primary_or_out_of_service_or_without_warning_is_allowed() -> None:
    refuse_on_backup(three_level(intents=dict.fromkeys(ALL, "n1")), "app", WARNING)
    refuse_on_backup(three_level(), "app", WARNING)
    refuse_on_backup(three_level(intents=dict.fromkeys(ALL, "n2")), "app", {"ip": ""})
