"""Losing one comm path of several causes no failover.

Lab servers have one address each; this module gives every server a second one
(``10.213.55.10K`` on ``eth0``), registers it in the agent's configuration (the API then
listens on every address) and creates a second comm path between every pair over the
second addresses, with fast heartbeats. Deleting node1's second address kills its two
second paths (heartbeats can neither leave from nor reach that address): the paths go
DEAD, the servers show ALIVE-with-warning, and nothing fails over. The dual-active probe
runs through the test.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator

import pytest

from tests.faults.cluster import SERVERS, Cluster, wait_until
from tests.faults.probe import DualActiveProbe

pytestmark = pytest.mark.lab

LABS = {"embedded": ("tfcom", 55)}
WEB = 8080


def second_address(cluster: Cluster, server: str) -> str:
    first = cluster.info.server(server).address
    return re.sub(r"\.(\d+)$", lambda m: f".{100 + int(m.group(1))}", first)


def set_second_address(cluster: Cluster, server: str, present: bool) -> None:
    verb = "add" if present else "del"
    argv = ["ip", "addr", verb, f"{second_address(cluster, server)}/24", "dev", "eth0"]
    done = cluster.lab.exec(server, argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 or "exists" in done.stderr, done.stderr


@pytest.fixture(scope="module")
def two_paths(lab_cluster: Cluster) -> Iterator[Cluster]:
    """Every server with two addresses, every pair with two comm paths."""
    cluster = lab_cluster
    for server in SERVERS:
        set_second_address(cluster, server, True)
        first, second = cluster.info.server(server).address, second_address(cluster, server)
        config = cluster.info.server(server).config_file
        text = config.read_text()
        text = text.replace(f'addresses = ["{first}"]', f'addresses = ["{first}", "{second}"]')
        text = text.replace(
            f'listen = "{first}"', f'listen = "0.0.0.0"\nadvertise_url = "https://{first}:7480"'
        )
        config.write_text(text)
        cluster.kill_agent(server, signal.SIGTERM)
        cluster.start_agent(server)
    for i, one in enumerate(SERVERS):
        for other in SERVERS[i + 1 :]:
            body = {
                "local": one,
                "local_address": second_address(cluster, one),
                "remote": other,
                "remote_address": second_address(cluster, other),
                "heartbeat_interval": 0.5,
                "max_missed": 2,
            }
            cluster.ok("POST", "/v1/commpaths", body)
    yield cluster


def paths_by_state(cluster: Cluster) -> dict[str, set[str]]:
    states: dict[str, set[str]] = {}
    for path in cluster.ok("GET", "/v1/commpaths"):
        states.setdefault(path["state"], set()).add(path["id"])
    return states


def test_losing_one_path_of_two_causes_no_failover(
    two_paths: Cluster, cluster: Cluster, probe: DualActiveProbe
) -> None:
    wait_until(lambda: set(paths_by_state(cluster)) == {"ALIVE"}, 30, "six ALIVE paths")
    assert sum(len(ids) for ids in paths_by_state(cluster).values()) == 6
    wait_until(
        lambda: {s["state"] for s in cluster.status()["servers"]} == {"ALIVE"},
        30,
        "every server ALIVE (two paths each)",
    )
    cluster.create("com1")
    mark, guard_log = cluster.mark(), len(cluster.guard_log("node1"))
    set_second_address(cluster, "node1", False)
    try:
        cut = second_address(cluster, "node1")
        dead = wait_until(
            lambda: (
                {p for p in paths_by_state(cluster).get("DEAD", set()) if cut in p}
                if len(paths_by_state(cluster).get("DEAD", ())) == 2
                else None
            ),
            30,
            "node1's two second paths DEAD",
        )
        assert len(dead) == 2, dead
        view = wait_until(
            lambda: (v := cluster.server_view("node1"))["state"] == "ALIVE-with-warning" and v,
            30,
            "node1 ALIVE-with-warning",
        )
        assert "1 of 2 paths to node2 dead" in view["reason"], view
        assert "1 of 2 paths to node3 dead" in view["reason"], view
        assert cluster.server_view("node2")["state"] == "ALIVE-with-warning"
        # no failover, no fencing: the hierarchy stays where it is, unharmed
        probe.steady(WEB, "node1", 3.0)
        assert not {"failover-started", "check-failed"} & set(cluster.kinds(mark))
        assert cluster.states("com1") == {"node1": "ISP", "node2": "OSU", "node3": "OSU"}
        assert cluster.hierarchy("com1")["status"] == "Normal"
        assert "fencing" not in cluster.guard_log("node1")[guard_log:]
    finally:
        set_second_address(cluster, "node1", True)
    wait_until(lambda: set(paths_by_state(cluster)) == {"ALIVE"}, 30, "every path ALIVE again")
