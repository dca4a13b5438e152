"""Maintenance (``vigil agent stop --leave-resources``) and probing at start: resources
left running are not taken over, and are adopted when the agent is back; a copy found
running where the hierarchy is not wanted is removed. And the dual-active probe itself:
it reports a second copy. The dual-active probe runs through every test.
"""

from __future__ import annotations

import signal
import sys

import pytest

from tests.faults.cluster import Cluster, wait_until
from tests.faults.probe import DualActiveProbe

pytestmark = pytest.mark.lab

LABS = {"embedded": ("tfmnt", 54)}
WEB = 8080


def test_maintenance_leaves_the_service_running_and_nobody_takes_over(
    cluster: Cluster, probe: DualActiveProbe
) -> None:
    cluster.create("mnt1")
    pid = int(cluster.pidfile("node1", "mnt1").read_text())
    mark = cluster.mark()
    guard_before = len(cluster.guard_log("node1"))
    cluster.stop_agent("node1", leave_resources=True)
    event = cluster.wait_event(mark, "agent-stopped", server="node1")
    assert "maintenance" in event["message"]
    # three lease lifetimes and more: the service runs on, unmonitored, not taken over
    probe.steady(WEB, "node1", 5.0)
    assert probe.latest().running[WEB] == {"node1": (pid,)}
    assert "failover-started" not in cluster.kinds(mark)
    assert "fencing" not in cluster.guard_log("node1")[guard_before:]
    seen = cluster.wait_states("mnt1", {"node1": "ISU", "node2": "OSU", "node3": "OSU"})
    assert "maintenance" in seen["node1"]["reason"], seen["node1"]
    view = cluster.hierarchy("mnt1")
    assert view["active_server"] == "node1" and view["status"] == "Normal", view
    # the agent is back: it probes, adopts what runs, and monitors it again
    back = cluster.mark()
    cluster.start_agent("node1")
    adopted = cluster.wait_event(back, "probe-adopted", hierarchy="mnt1", server="node1")
    assert "found running on node1" in adopted["message"]
    cluster.wait_event(back, "agent-started", server="node1")
    cluster.wait_states("mnt1", {"node1": "ISP"})
    assert int(cluster.pidfile("node1", "mnt1").read_text()) == pid  # not restarted
    probe.steady(WEB, "node1", 0.5)
    killed = cluster.mark()
    cluster.kill_service("node1", "mnt1")
    cluster.wait_event(killed, "recovered", text="mnt1")
    probe.answering_only(WEB, "node1")
    assert int(cluster.pidfile("node1", "mnt1").read_text()) != pid


def test_probe_at_start_removes_a_copy_running_where_it_is_not_wanted(
    cluster: Cluster, probe: DualActiveProbe
) -> None:
    cluster.create("mnt2")
    cluster.kill_agent("node1")  # its fence guard stops the service, node2 takes over
    probe.answering_only(WEB, "node2")
    cluster.wait_states("mnt2", {"node2": "ISP", "node3": "OSU"})
    # somebody starts the service by hand on node3 while node3's agent is stopped
    cluster.kill_agent("node3", signal.SIGTERM)
    pidfile = cluster.pidfile("node3", "mnt2")
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    start = [
        sys.executable, "-m", "vigil.kits.app.sample_service", "start",
        "--pidfile", str(pidfile), "--bind", "0.0.0.0", "--port", str(WEB), "--name", "node3",
    ]  # fmt: skip
    with probe.ignore("node3"):  # this second copy is the test's own doing
        done = cluster.lab.exec("node3", start, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        probe.wait(lambda s: s.answered(WEB) == {"node2", "node3"}, 10, "the copy on node3")
        mark = cluster.mark()
        cluster.start_agent("node3")
        event = cluster.wait_event(mark, "probe-removed", hierarchy="mnt2", server="node3")
        assert "owned by node2" in event["message"], event
        probe.wait(lambda s: "node3" not in s.ran(WEB), 15, "the copy on node3 stopped")
    probe.steady(WEB, "node2", 1.0)
    cluster.wait_states("mnt2", {"node2": "ISP", "node3": "OSU"})
    wait_until(lambda: not pidfile.exists(), 10, "node3's pidfile removed")


@pytest.mark.parametrize("bind", ["0.0.0.0", "127.0.0.1"])
def test_the_dual_active_probe_sees_a_second_copy(
    cluster: Cluster, probe: DualActiveProbe, bind: str
) -> None:
    """The probe itself: a second copy of the service on node2 is reported, whether it
    answers on the network (0.0.0.0) or only its process runs there (127.0.0.1)."""
    tag = f"mnt3-{bind[0]}"
    cluster.create(tag)
    pidfile = cluster.root / "node2" / "state" / "copy.pid"
    start = [
        sys.executable, "-m", "vigil.kits.app.sample_service", "start",
        "--pidfile", str(pidfile), "--bind", bind, "--port", str(WEB), "--name", "copy",
    ]  # fmt: skip
    stop = [sys.executable, "-m", "vigil.kits.app.sample_service", "stop", "--pidfile"]
    own = DualActiveProbe(cluster.info, [WEB]).start()
    with probe.ignore("node2"):
        try:
            done = cluster.lab.exec("node2", start, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stdout + done.stderr
            seen = own.wait(lambda s: bool(s.dual()), 10, "the probe to see two copies")
        finally:
            own.stop()
            cluster.lab.exec("node2", [*stop, str(pidfile)], timeout=30)
        probe.wait(lambda s: "node2" not in s.ran(WEB), 10, "the copy on node2 stopped")
    with pytest.raises(AssertionError, match="DUAL ACTIVE"):
        own.check()
    if bind == "0.0.0.0":
        assert seen.answered(WEB) == {"node1", "node2"}, seen
    assert seen.ran(WEB) == {"node1", "node2"}, seen
    probe.steady(WEB, "node1", 0.5)
