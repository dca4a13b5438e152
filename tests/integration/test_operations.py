"""The seed's chapter-4 operations, through the API and the CLI, on real agents in a lab.

One lab of three servers for the module; the tests run in order and build on each other
(a hierarchy is created, extended, switched over, edited, unextended, deleted). After each
step they check the state of every instance on every server, and where the protected HTTP
service really answers: on exactly one server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration.helpers import Api, answering, service_commands, wait_for
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab

pytestmark = pytest.mark.lab

WEB, DB = 8080, 8081


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabInfo]]:
    lab = Lab("itops", subnet_index=21)
    lab.down()
    try:
        yield lab, lab.up(3)
    finally:
        lab.down()


@pytest.fixture(scope="module")
def api(lab: tuple[Lab, LabInfo]) -> Iterator[Api]:
    client = Api(lab[1])
    yield client
    client.close()


def vigil(info: LabInfo, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VIGIL_CLIENT_CONFIG": str(info.client_file)}
    env.pop("VIGIL_URL", None)
    env.pop("VIGIL_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "vigil", *args], env=env, capture_output=True, text=True, timeout=300
    )


def states(api: Api, tag: str) -> dict[str, str]:
    return {server: i["state"] for server, i in api.instances(tag).items()}


def test_comm_paths_created_listed_and_alive(lab: tuple[Lab, LabInfo], api: Api) -> None:
    info = lab[1]
    for one, other in (("node1", "node2"), ("node1", "node3"), ("node2", "node3")):
        done = vigil(
            info,
            "commpath", "create",
            "--local", one, "--local-address", info.server(one).address,
            "--remote", other, "--remote-address", info.server(other).address,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def alive() -> list[dict[str, str]] | None:
        paths = api.ok("GET", "/v1/commpaths")
        return paths if [p["state"] for p in paths] == ["ALIVE"] * 3 else None

    paths = wait_for(alive, what="three ALIVE comm paths")
    assert {(p["server_a"], p["server_b"]) for p in paths} == {
        ("node1", "node2"),
        ("node1", "node3"),
        ("node2", "node3"),
    }
    listed = vigil(info, "commpath", "list", "--json")
    assert listed.returncode == 0
    assert '"ALIVE"' in listed.stdout


def test_delete_and_recreate_a_comm_path(lab: tuple[Lab, LabInfo], api: Api) -> None:
    info = lab[1]
    path_id = f"node2~{info.server('node2').address}~node3~{info.server('node3').address}"
    api.ok("DELETE", f"/v1/commpaths/{path_id}")
    assert path_id not in [p["id"] for p in api.ok("GET", "/v1/commpaths")]
    body = {
        "local": "node3",
        "local_address": info.server("node3").address,
        "remote": "node2",
        "remote_address": info.server("node2").address,
    }
    api.ok("POST", "/v1/commpaths", body)
    assert path_id in [p["id"] for p in api.ok("GET", "/v1/commpaths")]


def test_create_resource_brings_it_in_service_with_priority_1(
    lab: tuple[Lab, LabInfo], api: Api
) -> None:
    result = api.ok(
        "POST",
        "/v1/resources",
        {"tag": "web", "kit": "app", "server": "node1", "properties": service_commands(WEB)},
    )
    assert "in service on node1" in result["detail"]
    assert api.instances("web")["node1"]["priority"] == 1
    assert states(api, "web") == {"node1": "ISP"}
    assert answering(lab[1], WEB) == {"node1": "node1"}


def test_create_on_another_server_is_forwarded_to_it(lab: tuple[Lab, LabInfo], api: Api) -> None:
    # asked of node2's agent, validated and created by node1's agent
    other = Api(lab[1], server="node2")
    try:
        result = other.ok(
            "POST",
            "/v1/resources",
            {"tag": "db", "kit": "app", "server": "node1", "properties": service_commands(DB)},
        )
    finally:
        other.close()
    assert "in service on node1" in result["detail"]
    assert answering(lab[1], DB) == {"node1": "node1"}


def test_extend_whole_hierarchy_with_priorities(lab: tuple[Lab, LabInfo], api: Api) -> None:
    done = vigil(lab[1], "extend", "web", "--to", "node2")
    assert done.returncode == 0, done.stderr
    assert "priority 10" in done.stdout
    api.ok("POST", "/v1/hierarchies/web/extend", {"server": "node3", "priority": 20})
    web = api.instances("web")
    assert {s: i["priority"] for s, i in web.items()} == {"node1": 1, "node2": 10, "node3": 20}
    wait_for(lambda: states(api, "web") == {"node1": "ISP", "node2": "OSU", "node3": "OSU"})
    assert web["node2"]["reason"] in ("in service on node1", "not reported yet")
    wait_for(lambda: api.instances("web")["node3"]["reason"] == "in service on node1")
    api.ok("POST", "/v1/hierarchies/db/extend", {"server": "node2"})
    api.ok("POST", "/v1/hierarchies/db/extend", {"server": "node3", "priority": 20})


def test_dependency_joins_the_hierarchies(api: Api) -> None:
    api.ok("POST", "/v1/dependencies", {"parent": "web", "child": "db"})
    status = api.status()
    (hierarchy,) = [h for h in status["hierarchies"] if h["name"] == "web"]
    assert [r["tag"] for r in hierarchy["resources"]] == ["web", "db"]
    assert hierarchy["status"] == "Normal"
    assert all(h["name"] != "db" for h in status["hierarchies"])


def since(api: Api, tag: str, server: str) -> float:
    """When the agent of ``server`` reported the current state of ``tag``."""
    return float(api.instances(tag)[server]["since"])


def test_switchover_moves_the_whole_hierarchy_in_order(lab: tuple[Lab, LabInfo], api: Api) -> None:
    done = vigil(lab[1], "in-service", "web", "--on", "node2")
    assert done.returncode == 0, done.stderr
    for tag in ("web", "db"):
        assert states(api, tag) == {"node1": "OSU", "node2": "ISP", "node3": "OSU"}
    assert answering(lab[1], WEB) == {"node2": "node2"}
    assert answering(lab[1], DB) == {"node2": "node2"}
    # remove order on node1 was parents first, restore order on node2 children first
    assert since(api, "web", "node1") < since(api, "db", "node1")
    assert since(api, "db", "node2") < since(api, "web", "node2")
    kinds = [(e["server"], e["kind"]) for e in api.ok("GET", "/v1/events?limit=500")]
    last_removed = len(kinds) - 1 - kinds[::-1].index(("node1", "removed"))
    last_restored = len(kinds) - 1 - kinds[::-1].index(("node2", "restored"))
    assert last_removed < last_restored


def test_switchback_by_operator(lab: tuple[Lab, LabInfo]) -> None:
    operator = Api(lab[1], role="operator", server="node3")
    try:
        operator.ok("POST", "/v1/hierarchies/db/in-service", {"server": "node1"})
        assert answering(lab[1], WEB) == {"node1": "node1"}
        assert answering(lab[1], DB) == {"node1": "node1"}
    finally:
        operator.close()


def test_view_and_edit_properties(lab: tuple[Lab, LabInfo], api: Api) -> None:
    done = vigil(lab[1], "resource", "properties", "web", "--property", "quick_check_timeout=15")
    assert done.returncode == 0, done.stderr
    assert api.ok("GET", "/v1/resources/web")["properties"]["quick_check_timeout"] == 15
    api.ok("PATCH", "/v1/resources/web/properties", {"properties": {"quick_check_timeout": None}})
    assert "quick_check_timeout" not in api.ok("GET", "/v1/resources/web")["properties"]
    bad = api.patch("/v1/resources/web/properties", {"properties": {"quick_check_timeout": "soon"}})
    assert bad.status_code == 400
    assert "quick_check_timeout" in bad.json()["error"]


def test_out_of_service_and_back(lab: tuple[Lab, LabInfo], api: Api) -> None:
    api.ok("POST", "/v1/hierarchies/web/out-of-service", {})
    assert set(states(api, "web").values()) == {"OSU"}
    assert answering(lab[1], WEB) == {}
    assert answering(lab[1], DB) == {}
    (hierarchy,) = [h for h in api.status()["hierarchies"] if h["name"] == "web"]
    assert hierarchy["status"] == "Failed"
    api.ok("POST", "/v1/hierarchies/web/in-service", {"server": "node3"})
    assert answering(lab[1], WEB) == {"node3": "node3"}
    api.ok("POST", "/v1/hierarchies/web/in-service", {"server": "node1"})


def test_unextend_refused_where_in_service_then_done_elsewhere(api: Api) -> None:
    refused = api.post("/v1/hierarchies/web/unextend", {"server": "node1"})
    assert refused.status_code == 409
    assert "in service on node1" in refused.json()["error"]
    api.ok("POST", "/v1/hierarchies/web/unextend", {"server": "node3"})
    assert set(api.instances("web")) == {"node1", "node2"}
    assert set(api.instances("db")) == {"node1", "node2"}


def test_delete_dependency_splits_the_hierarchy(api: Api) -> None:
    api.ok("DELETE", "/v1/dependencies/web/db")
    names = sorted(h["name"] for h in api.status()["hierarchies"])
    assert names == ["db", "web"]
    api.ok("POST", "/v1/dependencies", {"parent": "web", "child": "db"})


def test_delete_hierarchy_takes_it_out_of_service_everywhere(
    lab: tuple[Lab, LabInfo], api: Api
) -> None:
    done = vigil(lab[1], "delete", "web", "--yes")
    assert done.returncode == 0, done.stderr
    assert api.status()["hierarchies"] == []
    assert answering(lab[1], WEB) == {}
    assert answering(lab[1], DB) == {}
