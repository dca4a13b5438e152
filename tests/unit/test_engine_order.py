"""Restore order (children first) and remove order (parents first) within a hierarchy."""

from __future__ import annotations

from builders import make_cluster, three_level

from vigil.engine.order import remove_waves, restore_waves

TAGS = ["app", "ip", "vol", "disk"]


def test_restore_waves_bring_children_up_first() -> None:
    assert restore_waves(three_level(), TAGS) == [["disk", "ip"], ["vol"], ["app"]]


def test_remove_waves_take_parents_down_first() -> None:
    assert remove_waves(three_level(), TAGS) == [["app"], ["ip", "vol"], ["disk"]]


def test_waves_of_a_subset_keep_the_order_among_its_members() -> None:
    cluster = three_level()
    assert restore_waves(cluster, ["vol", "disk"]) == [["disk"], ["vol"]]
    assert remove_waves(cluster, {"vol", "disk", "ip"}) == [["ip", "vol"], ["disk"]]
    assert remove_waves(cluster, []) == []


def test_independent_hierarchies_share_a_wave() -> None:
    cluster = make_cluster(
        resources={t: {"n1": 1} for t in ("web", "web-ip", "db", "db-vol")},
        deps=[("web", "web-ip"), ("db", "db-vol")],
    )
    tags = ["web", "web-ip", "db", "db-vol"]
    assert restore_waves(cluster, tags) == [["db-vol", "web-ip"], ["db", "web"]]
    assert remove_waves(cluster, tags) == [["db", "web"], ["db-vol", "web-ip"]]
