"""The owner's agent dies (SIGKILL), freezes (SIGSTOP) or loses its link: its resources are
taken down on its server before the preferred backup takes over; cascading over three
servers; no server left; switchback; automatic failover off. On every store the lab
offers; the dual-active probe runs through every test.
"""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from tests.faults.cluster import Cluster, wait_until
from tests.faults.conftest import STORES, lab_has_stores
from tests.faults.probe import DualActiveProbe

pytestmark = pytest.mark.lab

LABS = {"embedded": ("tfdie", 51), "etcd": ("tfdie-e", 52)}
WEB = 8080


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def assert_fenced_before_takeover(
    cluster: Cluster, server: str, killed_at: float, guard_log: int
) -> None:
    """The fence guard of ``server`` killed the service there (its log from offset
    ``guard_log`` on says so), after ``killed_at``, and before any other server began
    restoring it."""
    marker = cluster.root / server / "state" / "fenced.json"

    def fenced_since_kill() -> dict[str, float] | None:
        if not marker.exists():
            return None
        fenced: dict[str, float] = json.loads(marker.read_text())
        return fenced if fenced["at"] >= killed_at - 1 else None

    fenced = wait_until(fenced_since_kill, 10, f"the fence guard of {server} to fence")
    log = cluster.guard_log(server)[guard_log:]
    # the service, and whatever check command ran in its cgroup at that moment
    assert "fencing" in log and re.search(r"killed \d+ process\(es\) of ", log), log[-1500:]
    restores = [
        e for e in cluster.events() if e["kind"] == "restore-started" and e["at"] > killed_at
    ]
    assert restores and all(e["at"] > fenced["at"] for e in restores), (fenced, restores)


def assert_lease_ended_by_observer(cluster: Cluster, mark: str, server: str, tag: str) -> None:
    """Another agent timed ``server``'s heartbeat on its own clock and ended its lease,
    releasing ``tag``, before the store's own (longer, backstop) expiry."""
    down = cluster.wait_event(mark, "server-down", text=f"{server} is down")
    assert down["server"] != server, down
    assert "heartbeat did not advance" in down["message"], down
    assert f"no longer owns {tag}" in down["message"], down
    takeover = cluster.wait_event(mark, "failover-started", hierarchy=tag)
    assert down["at"] <= takeover["at"], (down, takeover)


def test_agent_sigkill_fenced_and_backup_takes_over(
    cluster: Cluster, probe: DualActiveProbe
) -> None:
    cluster.create("die1")
    mark, guard_log = cluster.mark(), len(cluster.guard_log("node1"))
    killed_at, t0 = time.time(), time.monotonic()
    cluster.kill_agent("node1", signal.SIGKILL)
    gone = probe.wait(lambda s: "node1" not in s.ran(WEB), 10, "the service gone from node1")
    up = probe.answering_only(WEB, "node2")
    print(f"service gone from node1 {gone.at - t0:.2f}s, up on node2 {up.at - t0:.2f}s after")
    event = cluster.wait_event(mark, "failover-started", hierarchy="die1", server="node2")
    assert "node1 is down" in event["message"]
    assert_fenced_before_takeover(cluster, "node1", killed_at, guard_log)
    assert_lease_ended_by_observer(cluster, mark, "node1", "die1")
    seen = cluster.wait_states("die1", {"node1": "UNKNOWN", "node2": "ISP", "node3": "OSU"})
    assert "not running" in seen["node1"]["reason"]
    assert cluster.server_view("node1")["state"] == "DEAD"
    view = cluster.hierarchy("die1")
    assert (view["active_server"], view["wanted_on"]) == ("node2", "node2")
    why = cluster.ok("GET", "/v1/hierarchies/die1/why")
    assert why["failover_origin"] == "node1" and why["owners"] == ["node2"]


def test_agent_sigstop_fenced_then_rejoins_without_resources(
    cluster: Cluster, probe: DualActiveProbe
) -> None:
    cluster.create("die2")
    mark, guard_log = cluster.mark(), len(cluster.guard_log("node1"))
    agent_log = len(cluster.agent_log("node1"))
    stopped_at = time.time()
    cluster.kill_agent("node1", signal.SIGSTOP)
    probe.wait(lambda s: "node1" not in s.ran(WEB), 10, "the service gone from frozen node1")
    probe.answering_only(WEB, "node2")
    cluster.wait_event(mark, "failover-started", hierarchy="die2", server="node2")
    assert_fenced_before_takeover(cluster, "node1", stopped_at, guard_log)
    assert_lease_ended_by_observer(cluster, mark, "node1", "die2")
    assert cluster.states("die2")["node1"] == "UNKNOWN"
    # Frozen inside a write transaction of the embedded store, it would have stopped every
    # other agent from writing: the guard ended it (vigil.store.locks), and it is started
    # again. Otherwise the frozen agent wakes up, finds its lease lost and rejoins. Either
    # way it holds nothing.
    ended = "held the write lock of the store" in cluster.guard_log("node1")[guard_log:]
    if ended:
        cluster.frozen.discard("node1")
        cluster.start_agent("node1")
    else:
        cluster.thaw_agent("node1")
    wait_until(lambda: cluster.server_view("node1")["state"] != "DEAD", 30, "node1 alive again")
    seen = cluster.wait_states("die2", {"node1": "OSU", "node2": "ISP", "node3": "OSU"})
    assert "node2" in seen["node1"]["reason"], seen["node1"]
    probe.steady(WEB, "node2", 3.0)
    log = cluster.agent_log("node1")[agent_log:]
    if not ended:
        assert re.search(r"lease \w+ lost", log) and "fencing node1" in log, log[-2000:]


def test_link_cut_owner_fences_itself_and_backup_takes_over(
    cluster: Cluster, probe: DualActiveProbe, store: str
) -> None:
    if store == "embedded":
        reason = "a link cut does not cut a server off the embedded store (a local file)"
        if "etcd" in STORES:
            reason += ": this test runs on the etcd lab"
        elif not lab_has_stores():
            reason += ", and Lab.up has no store option yet: no etcd lab"
        else:
            reason += ", and etcd is not installed: no etcd lab"
        pytest.skip(reason)
    cluster.create("die3")
    mark, agent_log = cluster.mark(), len(cluster.agent_log("node1"))
    cut_at, t0 = time.time(), time.monotonic()
    cluster.link("node1", up=False)
    cluster.down.add("node1")
    gone = probe.wait(lambda s: "node1" not in s.ran(WEB), 15, "node1 fenced itself")
    up = probe.answering_only(WEB, "node2")
    print(f"service gone from node1 {gone.at - t0:.2f}s, up on node2 {up.at - t0:.2f}s after")
    cluster.wait_event(mark, "failover-started", hierarchy="die3", server="node2")
    assert_lease_ended_by_observer(cluster, mark, "node1", "die3")
    log = cluster.agent_log("node1")[agent_log:]
    assert "fencing node1" in log, log[-2000:]
    restores = [e for e in cluster.events(mark) if e["kind"] == "restore-started"]
    assert all(e["at"] > cut_at for e in restores)
    cluster.link("node1", up=True)
    cluster.down.discard("node1")
    cluster.wait_states("die3", {"node1": "OSU", "node2": "ISP"}, timeout=60)
    probe.steady(WEB, "node2", 2.0)


def test_cascade_across_three_servers(cluster: Cluster, probe: DualActiveProbe) -> None:
    cluster.create("die4")
    cluster.fail_restore("node2", "die4")
    mark = cluster.mark()
    cluster.kill_agent("node1")
    failed = cluster.wait_event(mark, "restore-failed", hierarchy="die4", server="node2")
    assert "fail-restore marker on node2" in failed["message"]
    probe.answering_only(WEB, "node3")
    seen = cluster.wait_states("die4", {"node2": "OSF", "node3": "ISP"})
    assert "restore failed" in seen["node2"]["reason"], seen["node2"]
    assert cluster.hierarchy("die4")["status"] == "Warning"  # a backup (node2) is OSF
    why = cluster.ok("GET", "/v1/hierarchies/die4/why")
    assert why["wanted_on"] == "node3" and why["owners"] == ["node3"], why
    assert set(why["tried"]) >= {"node1", "node2"}, why
    # node2 is repaired; then node3 dies too: the next server that can take it does
    cluster.fail_restore("node2", "die4", fail=False)
    again = cluster.mark()
    cluster.kill_agent("node3")
    probe.answering_only(WEB, "node2")
    cluster.wait_event(again, "restored", hierarchy="die4", server="node2")
    cluster.wait_states("die4", {"node2": "ISP", "node1": "UNKNOWN", "node3": "UNKNOWN"})


@pytest.mark.parametrize("fault", ["server-death", "resource-failure"])
def test_no_server_can_take_it_stays_out_of_service(
    cluster: Cluster, probe: DualActiveProbe, fault: str
) -> None:
    tag = f"die5-{fault[0]}"
    cluster.create(tag)
    for server in ("node2", "node3"):
        cluster.fail_restore(server, tag)
    mark = cluster.mark()
    if fault == "server-death":
        cluster.kill_agent("node1")
    else:
        cluster.resource_policy(tag, local_recovery=False)
        cluster.kill_service("node1", tag)
    for server in ("node2", "node3"):
        cluster.wait_event(mark, "restore-failed", hierarchy=tag, server=server)
    wait_until(lambda: cluster.hierarchy(tag)["status"] == "Failed", 30, f"{tag} Failed")
    seen = cluster.wait_states(tag, {"node2": "OSF", "node3": "OSF"})
    assert all("restore failed" in seen[s]["reason"] for s in ("node2", "node3")), seen
    probe.steady(WEB, None, 2.0)
    # an event says why it is in service nowhere
    event = wait_until(
        lambda: next(
            (e for e in cluster.events(mark) if "no server can take it" in e["message"]), None
        ),
        10,
        "an event saying why no server takes it",
    )
    assert event["kind"] in ("failover-blocked", "failover-impossible"), event
    assert event["hierarchy"] == tag, event
    assert "node2 already failed to restore it" in event["message"], event


@pytest.mark.parametrize("switchback", ["intelligent", "automatic"])
def test_switchback_after_the_primary_returns(
    cluster: Cluster, probe: DualActiveProbe, switchback: str
) -> None:
    tag = f"die6-{switchback[0]}"
    cluster.create(tag)
    cluster.resource_policy(tag, switchback=switchback)
    cluster.kill_agent("node1")
    probe.answering_only(WEB, "node2")
    cluster.wait_states(tag, {"node2": "ISP"})
    mark = cluster.mark()
    cluster.start_agent("node1")
    if switchback == "intelligent":
        cluster.wait_states(tag, {"node1": "OSU", "node2": "ISP", "node3": "OSU"})
        probe.steady(WEB, "node2", 3.0)
        assert "switchback" not in cluster.kinds(mark)
    else:
        event = cluster.wait_event(mark, "switchback", hierarchy=tag, server="node1")
        assert "automatic switchback" in event["message"]
        probe.answering_only(WEB, "node1")
        cluster.wait_states(tag, {"node1": "ISP", "node2": "OSU", "node3": "OSU"})


@pytest.mark.parametrize("where", ["hierarchy", "server"])
def test_automatic_failover_off_no_takeover(
    cluster: Cluster, probe: DualActiveProbe, where: str
) -> None:
    tag = f"die7-{where[0]}"
    cluster.create(tag)
    if where == "hierarchy":
        cluster.resource_policy(tag, automatic_failover=False)
        expected = f"automatic failover is off for {tag}"
    else:
        cluster.server_policy("node1", failover=False)
        expected = "automatic failover is off for node1"
    plan = cluster.ok("GET", "/v1/plan?fail=node1")
    assert [(p["hierarchy"], p["target"]) for p in plan] == [(tag, None)], plan
    assert expected in plan[0]["why"]
    mark = cluster.mark()
    cluster.kill_agent("node1")
    probe.wait(lambda s: not s.ran(WEB), 10, "node1's service fenced")
    # several lease lifetimes (1.5 s) later, still nobody took it over, and we know why
    probe.steady(WEB, None, 4.0)
    assert "failover-started" not in cluster.kinds(mark)
    event = cluster.wait_event(mark, "failover-blocked", hierarchy=tag)
    assert expected in event["message"], event
    blocked = [e for e in cluster.events(mark) if e["kind"] == "failover-blocked"]
    assert len(blocked) == 1, blocked  # said once, not once per cycle or per server
    assert cluster.hierarchy(tag)["status"] == "Unknown"
    # when node1 is back, the hierarchy comes back in service there
    cluster.start_agent("node1")
    probe.answering_only(WEB, "node1")
