"""The global status of a hierarchy: Normal, Warning, Failed, Unknown."""

from __future__ import annotations

from builders import make_cluster, three_level

from vigil.engine.status import hierarchy_status, in_service_servers
from vigil.model.cluster import Cluster
from vigil.model.states import HierarchyStatus

ALL = ("app", "ip", "vol", "disk")


def in_service_on(server: str, state: str = "ISP") -> dict[tuple[str, str], str]:
    return {(server, tag): state for tag in ALL}


def status_of(cluster: Cluster) -> tuple[HierarchyStatus, str | None, str]:
    view = hierarchy_status(cluster, cluster.hierarchy("app"))
    assert view.name == "app"
    return view.status, view.active_server, view.reason


def test_normal_when_in_service_and_every_backup_ready() -> None:
    observed = {**in_service_on("n1"), **in_service_on("n2", "OSU")}
    cluster = three_level(intents={"app": "n1"}, observed=observed)
    assert status_of(cluster) == (HierarchyStatus.NORMAL, "n1", "in service on n1")


def test_normal_when_a_backup_has_not_reported_yet() -> None:
    cluster = three_level(intents={"app": "n1"}, observed=in_service_on("n1"))
    assert status_of(cluster)[0] is HierarchyStatus.NORMAL


def test_isu_counts_as_in_service() -> None:
    cluster = three_level(intents={"app": "n1"}, observed=in_service_on("n1", "ISU"))
    assert status_of(cluster)[:2] == (HierarchyStatus.NORMAL, "n1")


def test_warning_when_a_backup_is_osf() -> None:
    observed = {**in_service_on("n1"), ("n2", "vol"): "OSF"}
    cluster = three_level(intents={"app": "n1"}, observed=observed)
    status, active, reason = status_of(cluster)
    assert (status, active) == (HierarchyStatus.WARNING, "n1")
    assert reason == "vol on n2 is OSF"


def test_warning_when_a_backup_agent_is_dead() -> None:
    cluster = three_level(intents={"app": "n1"}, observed=in_service_on("n1"), dead=["n2"])
    status, active, reason = status_of(cluster)
    assert (status, active) == (HierarchyStatus.WARNING, "n1")
    assert "app on n2 is UNKNOWN" in reason
    assert "disk on n2 is UNKNOWN" in reason


def test_warning_when_partially_in_service() -> None:
    observed = {("n1", "disk"): "ISP", ("n1", "ip"): "ISP", ("n1", "vol"): "OSF"}
    cluster = three_level(intents={"app": "n1"}, observed=observed)
    status, active, reason = status_of(cluster)
    assert (status, active) == (HierarchyStatus.WARNING, "n1")
    assert reason == "in service on n1, but not app, vol"


def test_warning_when_in_service_on_two_servers() -> None:
    observed = {**in_service_on("n1"), ("n2", "ip"): "ISP"}
    cluster = three_level(intents={"app": "n1"}, observed=observed)
    status, active, reason = status_of(cluster)
    assert (status, active) == (HierarchyStatus.WARNING, "n1")
    assert "several servers: n1, n2" in reason
    assert in_service_servers(cluster, cluster.hierarchy("app")) == ["n1", "n2"]


def test_failed_when_wanted_but_in_service_nowhere() -> None:
    observed = {**in_service_on("n1", "OSF"), **in_service_on("n2", "OSU")}
    cluster = three_level(intents={"app": "n1"}, observed=observed)
    assert status_of(cluster) == (
        HierarchyStatus.FAILED,
        None,
        "in service nowhere (wanted on n1)",
    )


def test_failed_when_out_of_service() -> None:
    cluster = three_level(intents={"app": None})
    assert status_of(cluster) == (HierarchyStatus.FAILED, None, "out of service")


def test_unknown_when_wanted_on_a_server_whose_agent_is_dead() -> None:
    # its last report said ISP, but nobody can tell now
    cluster = three_level(intents={"app": "n1"}, observed=in_service_on("n1"), dead=["n1"])
    status, active, reason = status_of(cluster)
    assert (status, active) == (HierarchyStatus.UNKNOWN, None)
    assert reason == "wanted on n1, whose agent is not running"


def test_in_service_on_a_live_server_while_the_wanted_one_is_dead() -> None:
    observed = {**in_service_on("n2")}
    cluster = three_level(intents={"app": "n1"}, observed=observed, dead=["n1"])
    status, active, _ = status_of(cluster)
    assert active == "n2"
    assert status is HierarchyStatus.WARNING, "the backup n1 is UNKNOWN"


def test_in_service_servers_include_servers_not_extended_to() -> None:
    cluster = make_cluster(
        servers=("n1", "n2", "n3"),
        resources={"app": {"n1": 1}},
        observed={("n3", "app"): "ISP"},
    )
    assert in_service_servers(cluster, cluster.hierarchy("app")) == ["n3"]
