"""A protected service fails on its server (SIGKILL): local recovery, failover when
recovery fails, is switched off or has reached its temporal limit, and block resource
failover. The dual-active probe runs through every test.
"""

from __future__ import annotations

import itertools
import re
import time

import pytest

from tests.faults.cluster import Cluster, wait_until
from tests.faults.probe import DualActiveProbe

pytestmark = pytest.mark.lab

LABS = {"embedded": ("tfres", 50)}
WEB = 8080


def test_killed_service_is_recovered_locally(cluster: Cluster, probe: DualActiveProbe) -> None:
    cluster.create("web1")
    mark = cluster.mark()
    old = cluster.kill_service("node1", "web1")
    probe.wait(lambda s: not s.answered(WEB), 10, "the killed service down")
    cluster.wait_event(mark, "recovered", text="web1")
    probe.answering_only(WEB, "node1")
    assert int(cluster.pidfile("node1", "web1").read_text()) != old
    kinds = cluster.kinds(mark)
    assert kinds.index("check-failed") < kinds.index("recovery-started") < kinds.index("recovered")
    assert not {"failover-started", "restore-failed"} & set(kinds), kinds
    cluster.wait_states("web1", {"node1": "ISP", "node2": "OSU", "node3": "OSU"})
    # node1 is ISP throughout (its reason "recovering ..." during the recovery), so the
    # state alone does not say the last report arrived: the status is read from the agent's
    # watch-fed cache, which may trail the event log (read from the store) by a poll
    wait_until(
        lambda: "recovered locally" in cluster.instances("web1")["node1"]["reason"],
        10,
        "node1's reason of web1 to say it recovered locally",
    )
    assert cluster.hierarchy("web1")["active_server"] == "node1"
    probe.steady(WEB, "node1", 1.5)  # and it stays there


@pytest.mark.parametrize("how", ["restore-fails", "local-recovery-off"])
def test_failed_recovery_fails_over_to_priority_2(
    cluster: Cluster, probe: DualActiveProbe, how: str
) -> None:
    tag = f"web2-{how}"
    cluster.create(tag)
    if how == "restore-fails":
        cluster.fail_restore("node1", tag)
    else:
        cluster.resource_policy(tag, local_recovery=False)
    mark = cluster.mark()
    cluster.kill_service("node1", tag)
    cluster.wait_event(mark, "failover-started", hierarchy=tag, server="node1")
    probe.answering_only(WEB, "node2")
    seen = cluster.wait_states(tag, {"node1": "OSF", "node2": "ISP", "node3": "OSU"})
    reason = seen["node1"]["reason"]
    if how == "restore-fails":
        assert f"local recovery of {tag} failed" in reason, reason
        assert "recovery-failed" in cluster.kinds(mark)
    else:
        assert f"local recovery is off for {tag}" in reason, reason
        assert "recovery-started" not in cluster.kinds(mark)
    view = cluster.hierarchy(tag)
    assert view["active_server"] == "node2" and view["wanted_on"] == "node2"
    assert view["status"] == "Warning", view  # a backup (node1) is OSF
    cluster.wait_event(mark, "restored", hierarchy=tag, server="node2")


def test_temporal_limit_fails_over_although_recovery_works(
    cluster: Cluster, probe: DualActiveProbe
) -> None:
    cluster.create("web3")
    cluster.resource_policy("web3", recovery_limit=1, recovery_period=60)
    mark = cluster.mark()
    cluster.kill_service("node1", "web3")
    cluster.wait_event(mark, "recovered", text="web3")
    probe.answering_only(WEB, "node1")
    second = cluster.mark()
    cluster.kill_service("node1", "web3")
    event = cluster.wait_event(second, "failover-started", hierarchy="web3")
    assert "temporal limit reached" in event["message"], event
    assert "recovery-started" not in cluster.kinds(second)
    probe.answering_only(WEB, "node2")
    seen = cluster.wait_states("web3", {"node1": "OSF", "node2": "ISP", "node3": "OSU"})
    assert "temporal limit reached" in seen["node1"]["reason"]


def test_block_resource_failover_stops_resource_failover_not_server_death(
    cluster: Cluster, probe: DualActiveProbe
) -> None:
    cluster.create("web4")
    cluster.server_policy("node1", block_resource_failover=True)
    cluster.fail_restore("node1", "web4")
    mark = cluster.mark()
    cluster.kill_service("node1", "web4")
    event = cluster.wait_event(mark, "failover-blocked", hierarchy="web4")
    assert "resource failover is blocked on node1" in event["message"]
    seen = cluster.wait_states("web4", {"node1": "OSF", "node2": "OSU", "node3": "OSU"})
    assert "resource failover is blocked on node1" in seen["node1"]["reason"]
    probe.steady(WEB, None, 3.0)  # nobody took it over
    assert "failover-started" not in cluster.kinds(mark)
    # node1 dies: a server's death still fails over
    died = cluster.mark()
    cluster.kill_agent("node1")
    cluster.wait_event(died, "failover-started", hierarchy="web4", server="node2")
    probe.answering_only(WEB, "node2")
    cluster.wait_states("web4", {"node2": "ISP", "node3": "OSU"})


def test_blocked_failure_is_not_checked_again_and_can_be_brought_back(
    cluster: Cluster, probe: DualActiveProbe
) -> None:
    cluster.create("web6")
    cluster.server_policy("node1", block_resource_failover=True)
    cluster.fail_restore("node1", "web6")
    mark = cluster.mark()
    cluster.kill_service("node1", "web6")
    cluster.wait_event(mark, "failover-blocked", hierarchy="web6")
    cluster.wait_states("web6", {"node1": "OSF"})
    probe.steady(WEB, None, 3.0)
    # an OSF instance is out of service: no more checks, recoveries or decisions on it
    blocked = [k for k in cluster.kinds(mark) if k in ("check-failed", "failover-blocked")]
    assert len(blocked) <= 2, f"{len(blocked)} check-failed/failover-blocked events in 3 s"
    assert cluster.states("web6")["node1"] == "OSF"
    assert cluster.hierarchy("web6")["status"] == "Failed"
    # the operator repairs node1 and brings the hierarchy back there
    cluster.fail_restore("node1", "web6", fail=False)
    answer = cluster.request(
        "POST", "/v1/hierarchies/web6/in-service", {"server": "node1", "timeout": 10}
    )
    assert answer.status_code == 200, answer.text
    probe.answering_only(WEB, "node1", timeout=10)


def test_changed_check_interval_applies_while_in_service(
    cluster: Cluster, probe: DualActiveProbe
) -> None:
    cluster.create("web5", quick_check=2.0)
    changed = time.time()
    cluster.resource_policy("web5", quick_check_interval=0.25)

    # The monitor sleeps the interval between the end of one check and the start of the
    # next: at 2 s, two quick checks end more than 2 s apart, however long each takes. Gaps
    # under 2 s show the new interval in use (counted, not timed: a loaded machine makes
    # each check slower, never the sleep shorter).
    def short_gaps() -> list[float] | None:
        ends = [t for t in check_times(cluster.agent_log("node1"), "web5") if t > changed]
        gaps = [later - earlier for earlier, later in itertools.pairwise(ends)]
        short = [gap for gap in gaps if gap < 2.0]
        return short if len(short) >= 3 else None

    wait_until(short_gaps, 30, "quick checks of web5 less than 2 s apart")
    probe.steady(WEB, "node1", 0.5)


def check_times(log: str, tag: str) -> list[float]:
    """When the agent log shows the output of a quick check of ``tag`` (Unix times)."""
    times = []
    pattern = re.compile(rf"^(\d+-\d+-\d+ \d+:\d+:\d+),(\d+) .* {re.escape(tag)} quick_check: ")
    for line in log.splitlines():
        found = pattern.match(line)
        if found:
            at = time.mktime(time.strptime(found.group(1), "%Y-%m-%d %H:%M:%S"))
            times.append(at + int(found.group(2)) / 1000)
    return times
