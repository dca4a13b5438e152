"""Operator policies under real faults: shutdown strategy (hold, switchover), confirm
failover (yes, no, timeout with either default) and N+1. The dual-active probe runs
through every test.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.cluster import Cluster, wait_until
from tests.faults.probe import DualActiveProbe

pytestmark = pytest.mark.lab

LABS = {"embedded": ("tfpol", 53)}
WEB, DB = 8080, 8081
#: well over the lease TTL (1.5 s): long enough for any takeover to have begun
LEASES = 4.0


@pytest.mark.parametrize("how", ["sigterm", "api-stop"])
def test_shutdown_hold_takes_it_out_of_service_nobody_takes_over(
    cluster: Cluster, probe: DualActiveProbe, how: str
) -> None:
    tag = f"pol1-{how[0]}"
    cluster.create(tag)
    mark = cluster.mark()
    if how == "sigterm":
        cluster.kill_agent("node1", signal.SIGTERM)  # an orderly stop
    else:
        cluster.stop_agent("node1")
    event = cluster.wait_event(mark, "agent-stopped", server="node1")
    assert "out of service" in event["message"]
    probe.answering_only(WEB, None)
    probe.steady(WEB, None, LEASES)
    assert "failover-started" not in cluster.kinds(mark)
    seen = cluster.wait_states(tag, {"node1": "OSU", "node2": "OSU", "node3": "OSU"})
    assert "agent stopped: hold" in seen["node1"]["reason"], seen["node1"]
    view = cluster.hierarchy(tag)
    assert view["status"] in ("Failed", "Unknown") and view["wanted_on"] == "node1", view
    assert "node1" in {s["name"] for s in cluster.status()["servers"] if s["state"] == "DEAD"}
    # the agent comes back: the hold is lifted, the hierarchy back in service there
    again = cluster.mark()
    cluster.start_agent("node1")
    cluster.wait_event(again, "agent-started", server="node1")
    probe.answering_only(WEB, "node1")
    cluster.wait_states(tag, {"node1": "ISP", "node2": "OSU", "node3": "OSU"})


def test_shutdown_switchover_moves_it_to_the_next_server(
    cluster: Cluster, probe: DualActiveProbe
) -> None:
    cluster.create("pol2")
    cluster.server_policy("node1", shutdown_strategy="switchover")
    mark = cluster.mark()
    cluster.kill_agent("node1", signal.SIGTERM)
    event = cluster.wait_event(mark, "shutdown-switchover", hierarchy="pol2", server="node1")
    assert "moves to node2" in event["message"]
    probe.answering_only(WEB, "node2")
    cluster.wait_states("pol2", {"node2": "ISP", "node3": "OSU"})
    assert cluster.hierarchy("pol2")["wanted_on"] == "node2"
    # back again: intelligent switchback, it stays on node2
    cluster.start_agent("node1")
    cluster.wait_states("pol2", {"node1": "OSU", "node2": "ISP"})
    probe.steady(WEB, "node2", 1.0)


@pytest.mark.parametrize(
    ("answer", "default"),
    [("yes", "proceed"), ("no", "proceed"), ("timeout", "proceed"), ("timeout", "block")],
)
def test_confirm_failover(
    cluster: Cluster, probe: DualActiveProbe, answer: str, default: str
) -> None:
    tag = f"pol3-{answer[0]}{default[0]}"
    timeout = 600.0 if answer != "timeout" else 3.0
    cluster.create(tag)
    cluster.server_policy(
        "node2", confirm_failover=True, confirm_timeout=timeout, confirm_default=default
    )
    mark = cluster.mark()
    cluster.kill_agent("node1")
    asked = cluster.wait_event(mark, "failover-confirm", hierarchy=tag, server="node2")
    assert f"vigil confirm-failover {tag}" in asked["message"]
    probe.answering_only(WEB, None)  # fenced on node1, nobody took it over yet
    if answer == "timeout":
        # nothing happens before the timeout...
        left = asked["at"] + timeout - time.time() - 0.5
        if left > 0:
            probe.steady(WEB, None, left)
    else:
        probe.steady(WEB, None, 1.0)  # waiting for the operator, however long
        body = {"proceed": answer == "yes"}
        done = cluster.ok("POST", f"/v1/hierarchies/{tag}/confirm-failover", body)
        assert ("confirmed" if answer == "yes" else "refused") in done["summary"]
    if (answer, default) in (("yes", "proceed"), ("timeout", "proceed")):
        event = cluster.wait_event(mark, "failover-started", hierarchy=tag, server="node2")
        expected = "confirmed by an operator" if answer == "yes" else "no answer in 3s"
        assert expected in event["message"], event
        probe.answering_only(WEB, "node2")
        cluster.wait_states(tag, {"node2": "ISP", "node3": "OSU"})
    else:
        expected = "refused by an operator" if answer == "no" else "default block"
        event = cluster.wait_event(mark, "failover-blocked", hierarchy=tag, timeout=15)
        assert expected in event["message"], event
        probe.steady(WEB, None, 2.0)
        assert "failover-started" not in cluster.kinds(mark)
        assert cluster.hierarchy(tag)["status"] == "Unknown"


def n_plus_one_pair(cluster: Cluster, a: str, b: str) -> None:
    """Hierarchy ``a`` (primary node1) and ``b`` (primary node2), both N+1 with node3 as
    their shared standby (priority 10); each has the other primary as its last resort."""
    cluster.create(a, WEB, {"node1": 1, "node3": 10, "node2": 20})
    cluster.create(b, DB, {"node2": 1, "node3": 10, "node1": 20})
    for tag in (a, b):
        cluster.resource_policy(tag, n_plus_one=True)


def test_n_plus_one_standby_serves_one_primary_at_a_time(
    cluster: Cluster, probe: DualActiveProbe
) -> None:
    n_plus_one_pair(cluster, "npa", "npb")
    mark = cluster.mark()
    cluster.kill_agent("node1")
    probe.answering_only(WEB, "node3")
    cluster.wait_event(mark, "failover-started", hierarchy="npa", server="node3")
    mark = cluster.mark()
    cluster.wait_states("npa", {"node3": "ISP"})
    # node2 dies too: node3 already serves node1's hierarchy and refuses node2's;
    # node2's next server, node1, is down: npb waits
    cluster.kill_agent("node2")
    probe.answering_only(DB, None)
    probe.steady(DB, None, LEASES)
    refusal = "node3 already serves npa for node1 (N+1: one primary at a time)"
    event = cluster.wait_event(mark, "failover-blocked", hierarchy="npb")
    assert refusal in event["message"], event
    assert cluster.hierarchy("npb")["status"] == "Unknown"
    assert probe.where(WEB) == {"node3"}
    # node1 is back: npb goes to its next server, node1 (npa stays on node3)
    cluster.start_agent("node1")
    probe.answering_only(DB, "node1")
    cluster.wait_states("npb", {"node1": "ISP", "node3": "OSU"})
    cluster.wait_states("npa", {"node1": "OSU", "node3": "ISP"})
    assert probe.where(WEB) == {"node3"}


def test_confirm_refused_on_a_later_server_of_a_cascade_is_an_event(
    cluster: Cluster, probe: DualActiveProbe
) -> None:
    """node2 fails to restore; node3, asking for confirmation, is refused: the event log
    says the hierarchy stays out of service (node2, alive, decides nothing about it)."""
    cluster.create("pol4")
    cluster.fail_restore("node2", "pol4")
    cluster.server_policy("node3", confirm_failover=True)
    mark = cluster.mark()
    cluster.kill_agent("node1")
    cluster.wait_event(mark, "restore-failed", hierarchy="pol4", server="node2")
    cluster.wait_event(mark, "failover-confirm", hierarchy="pol4", server="node3")
    cluster.ok("POST", "/v1/hierarchies/pol4/confirm-failover", {"proceed": False})
    refused = "pol4 stays out of service: failover to node3 refused by an operator"
    wait_until(lambda: refused in cluster.agent_log("node3"), 10, "node3 logs the refusal")
    event = cluster.wait_event(mark, "failover-blocked", hierarchy="pol4", timeout=5)
    assert "refused by an operator" in event["message"], event
    probe.steady(WEB, None, 1.0)
