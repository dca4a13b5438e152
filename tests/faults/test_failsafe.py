"""Failsafe (``vigil.agent.failsafe``): a store outage every agent sees is ridden through
with no outage and no second copy; any doubt fences as before.

The lab: three servers on a three-member etcd (own names ``tffs*`` and subnets 92..93),
comm paths between every pair, one sample service in service on node1, the dual-active
probe sampling throughout. Each module lab runs once at ttl 1.5 s (the old default, which
an etcd election could outlast before failsafe) and once at the agents' defaults.

- the whole store restarted (every member stopped, then started): nothing moves, the
  service answers on node1 all along, the agents log that they held their leases on
  through comm paths and their fence guards say so, and nobody fences;
- the etcd leader SIGKILLed (a leader election), then restarted: the same;
- a real partition (node1's link cut: it hears from no agent and no store) still fails over;
- node1 cut off from the store alone (blackhole routes to the members, comm paths up): the
  others can reach the store and say so, node1 fences, node2 takes over;
- an owner frozen (SIGSTOP) during a store outage: it can no longer confirm anything, its
  fence guard fences it at its deadline, and the service comes back on node2 once the store
  is back, never on two servers at once.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.faults.cluster import SERVERS, Cluster, wait_until
from tests.faults.probe import DualActiveProbe
from vigil.agent.config import LeaseSettings
from vigil.errors import LabError
from vigil.lab.lab import Lab

pytestmark = pytest.mark.lab

WEB = 8080
MEMBERS = (1, 2, 3)
#: setting -> (lab name, subnet index, lease settings: None = the agents' defaults)
SETTINGS: dict[str, tuple[str, int, LeaseSettings | None]] = {
    "ttl1.5": (
        "tffs",
        92,
        LeaseSettings(ttl=1.5, renew_interval=0.25, request_timeout=0.25, safety_margin=0.5),
    ),
    "defaults": ("tffs-d", 93, None),
}


def _up(lab: Lab, lease: LeaseSettings | None) -> Cluster:
    try:
        info = lab.up(len(SERVERS), store="etcd", store_members=len(MEMBERS), lease=lease)
    except LabError as exc:
        if "exited before answering its health check" not in str(exc):
            raise
        lab.down()
        info = lab.up(len(SERVERS), store="etcd", store_members=len(MEMBERS), lease=lease)
    return Cluster(lab, info, "etcd")


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def lab_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The module's lab for one setting (replaces the conftest's, whose subnets are
    others'): three servers, three etcd members, comm paths between every pair."""
    name, subnet, lease = SETTINGS[request.param]
    lab = Lab(name, subnet_index=subnet)
    lab.down()  # leftovers of an earlier crashed run of this module
    cluster = None
    try:
        cluster = _up(lab, lease)
        cluster.connect_every_pair(SERVERS)
        wait_until(
            lambda: all(p["state"] == "ALIVE" for p in cluster.ok("GET", "/v1/commpaths")),
            30,
            "every comm path ALIVE",
        )
        yield cluster
    finally:
        if cluster is not None:
            _all_members_up(cluster.lab)
            for server in SERVERS:
                _blackhole(cluster, server, False)
            cluster.close()
        lab.down()


def _all_members_up(lab: Lab) -> None:
    for number in MEMBERS:
        lab.start_store_member(number, wait=False)
    for number in MEMBERS:
        lab.start_store_member(number, wait=True)


def _blackhole(cluster: Cluster, server: str, present: bool) -> None:
    """Routes in ``server`` that drop what it sends to the etcd members (or none)."""
    for member in cluster.info.store_members:
        verb = "replace" if present else "del"
        argv = ["ip", "route", verb, "blackhole", f"{member.address}/32"]
        done = cluster.lab.exec(server, argv, capture_output=True, text=True, timeout=30)
        assert present is False or done.returncode == 0, done.stderr


def _logs(cluster: Cluster) -> tuple[dict[str, int], dict[str, int]]:
    agent = {s: len(cluster.agent_log(s)) for s in SERVERS}
    guard = {s: len(cluster.guard_log(s)) for s in SERVERS}
    return agent, guard


def _assert_rode_through(
    cluster: Cluster, mark: str, agent: dict[str, int], guard: dict[str, int]
) -> None:
    """Every agent held its lease on by failsafe, no guard fenced, no lease was lost,
    nothing failed over or was taken out of service."""
    for server in SERVERS:
        log = cluster.agent_log(server)[agent[server] :]
        assert "failsafe: the store does not answer" in log, (server, log[-3000:])
        assert "lease" not in log or " lost" not in log, (server, log[-3000:])
        assert "fencing" not in log, (server, log[-3000:])
    fenced = cluster.guard_log("node1")[guard["node1"] :]
    assert "failsafe: agent" in fenced and "fencing" not in fenced, fenced
    kinds = cluster.kinds(mark)
    assert not {"server-down", "failover-started", "remove-started"} & set(kinds), kinds
    assert cluster.states("fs") == {"node1": "ISP", "node2": "OSU", "node3": "OSU"}


def _serving(cluster: Cluster, probe: DualActiveProbe) -> float:
    """Create the service on node1; the probe time from which it answers there."""
    cluster.create("fs")
    return probe.answering_only(WEB, "node1").at


def _assert_no_outage(probe: DualActiveProbe, since: float) -> None:
    """From ``since`` on, the service ran on node1 alone in every sample, and answered
    there with no gap longer than 0.3 s (a lone sample may miss the 150 ms deadline of
    the probe on a loaded machine; that is not an outage)."""
    samples = [s for s in probe.samples if s.at >= since]
    assert samples and all(s.ran(WEB) == {"node1"} for s in samples), [
        s for s in samples if s.ran(WEB) != {"node1"}
    ][:3]
    assert all(s.answered(WEB) <= {"node1"} for s in samples)
    gap, longest, last = 0.0, 0.0, samples[0].at
    for sample in samples:
        if sample.answered(WEB) == {"node1"}:
            last = sample.at
        gap = sample.at - last
        longest = max(longest, gap)
    print(f"{len(samples)} samples, longest time without an answer {longest:.3f}s")
    assert longest < 0.3, f"the service did not answer for {longest:.3f}s: an outage"


def test_a_store_restart_causes_no_outage(cluster: Cluster, probe: DualActiveProbe) -> None:
    since = _serving(cluster, probe)
    mark, (agent, guard) = cluster.mark(), _logs(cluster)
    t0 = time.monotonic()
    # every member at once (a restart of the whole store): stopped one after another, the
    # agents lose the store at different moments, and one that asks while another still
    # reaches it rightly fences (failsafe holds on only when nobody reaches the store)
    for number in MEMBERS:
        cluster.lab.stop_store_member(number, signal.SIGTERM, wait=False)
    for number in MEMBERS:
        cluster.lab.stop_store_member(number, signal.SIGTERM)
    stopped = time.monotonic() - t0
    time.sleep(2.0)  # the store is down for every agent
    _all_members_up(cluster.lab)
    print(f"store down for {time.monotonic() - t0:.2f}s (stopping took {stopped:.2f}s)")
    time.sleep(3.0)
    _assert_no_outage(probe, since)
    _assert_rode_through(cluster, mark, agent, guard)


def test_a_leader_kill_causes_no_outage(cluster: Cluster, probe: DualActiveProbe) -> None:
    since = _serving(cluster, probe)
    mark, (agent, guard) = cluster.mark(), _logs(cluster)
    leader = wait_until(cluster.lab.store_leader, 10, "an etcd leader")
    t0 = time.monotonic()
    cluster.lab.stop_store_member(leader, signal.SIGKILL)
    new = wait_until(
        lambda: (n := cluster.lab.store_leader()) not in (None, leader) and n,
        15,
        "a new etcd leader",
    )
    print(f"etcd{leader} killed; etcd{new} leader after {time.monotonic() - t0:.2f}s")
    time.sleep(2.0)
    cluster.lab.start_store_member(leader)
    time.sleep(1.0)
    _assert_no_outage(probe, since)
    kinds = cluster.kinds(mark)
    assert not {"server-down", "failover-started", "remove-started"} & set(kinds), kinds
    held = []
    for server in SERVERS:
        log = cluster.agent_log(server)[agent[server] :]
        assert "fencing" not in log, (server, log[-3000:])
        if "failsafe: the store does not answer" in log:
            held.append(server)
    assert "fencing" not in cluster.guard_log("node1")[guard["node1"] :]
    print(f"held their leases on by failsafe: {', '.join(held) or 'none (no renewal failed)'}")
    assert cluster.states("fs") == {"node1": "ISP", "node2": "OSU", "node3": "OSU"}


def test_a_partition_still_fails_over(cluster: Cluster, probe: DualActiveProbe) -> None:
    cluster.create("fs")
    mark, (agent, _guard) = cluster.mark(), _logs(cluster)
    cut_at, t0 = time.time(), time.monotonic()
    cluster.link("node1", up=False)
    cluster.down.add("node1")
    gone = probe.wait(lambda s: "node1" not in s.ran(WEB), 15, "node1 fenced itself")
    up = probe.answering_only(WEB, "node2")
    print(f"service gone from node1 {gone.at - t0:.2f}s, up on node2 {up.at - t0:.2f}s after")
    down = cluster.wait_event(mark, "server-down", text="node1 is down")
    assert "heartbeat did not advance" in down["message"], down
    log = cluster.agent_log("node1")[agent["node1"] :]
    assert "failsafe cannot hold the lease on: no answer" in log, log[-3000:]
    assert "fencing node1" in log, log[-3000:]
    restores = [e for e in cluster.events(mark) if e["kind"] == "restore-started"]
    assert restores and all(e["at"] > cut_at for e in restores)
    cluster.link("node1", up=True)
    cluster.down.discard("node1")
    cluster.wait_states("fs", {"node1": "OSU", "node2": "ISP"}, timeout=60)
    probe.steady(WEB, "node2", 2.0)


def test_cut_off_from_the_store_alone_fails_over(cluster: Cluster, probe: DualActiveProbe) -> None:
    cluster.create("fs")
    mark, (agent, _guard) = cluster.mark(), _logs(cluster)
    _blackhole(cluster, "node1", True)
    cluster.down.add("node1")  # its API cannot answer without the store
    try:
        probe.wait(lambda s: "node1" not in s.ran(WEB), 15, "node1 fenced itself")
        probe.answering_only(WEB, "node2")
        cluster.wait_event(mark, "failover-started", hierarchy="fs", server="node2")
        log = cluster.agent_log("node1")[agent["node1"] :]
        assert "can reach the store" in log, log[-3000:]
        assert "fencing node1" in log, log[-3000:]
    finally:
        _blackhole(cluster, "node1", False)
        cluster.down.discard("node1")
    cluster.wait_states("fs", {"node1": "OSU", "node2": "ISP"}, timeout=60)
    probe.steady(WEB, "node2", 2.0)


def test_a_frozen_owner_is_fenced_during_a_store_outage(
    cluster: Cluster, probe: DualActiveProbe
) -> None:
    cluster.create("fs")
    mark, (_agent, guard) = cluster.mark(), _logs(cluster)
    for number in MEMBERS:
        cluster.lab.stop_store_member(number, signal.SIGTERM)
    wait_until(
        lambda: "failsafe: agent" in cluster.guard_log("node1")[guard["node1"] :],
        10,
        "node1 holding its lease on by failsafe",
    )
    probe.steady(WEB, "node1", 0.5)
    cluster.kill_agent("node1", signal.SIGSTOP)
    try:
        probe.wait(lambda s: "node1" not in s.ran(WEB), 10, "node1's guard fencing it")
        fenced = cluster.guard_log("node1")[guard["node1"] :]
        # the service, and whatever check command ran in its cgroup when the agent froze
        assert "fencing" in fenced, fenced
        assert re.search(r"killed \d+ process\(es\) of fs: ", fenced), fenced
        _all_members_up(cluster.lab)
        probe.answering_only(WEB, "node2", timeout=60)
        cluster.wait_event(mark, "failover-started", hierarchy="fs", server="node2", timeout=60)
    finally:
        cluster.thaw_agent("node1")  # frozen, it would fail the module's later tests too
    cluster.wait_states("fs", {"node1": "OSU", "node2": "ISP"}, timeout=60)
    probe.steady(WEB, "node2", 2.0)


def test_the_lab_really_used_three_members(cluster: Cluster) -> None:
    """The faults above mean something only on a store of three members."""
    assert len(cluster.info.store_members) == len(MEMBERS)
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert sum(f"{cluster.lab.name}-etcd" in line for line in out.stdout.splitlines()) == 3
