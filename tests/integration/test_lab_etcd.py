"""The lab on etcd: members in namespaces of their own, agents reaching them over the lab
network, the chapter-4 basics on etcd, a link cut fencing a server, leases riding through
an etcd leader change and an etcd restart, and ``down`` leaving nothing.

Labs here are named ``tetcd-*`` on subnet indexes 45..48 (other suites run their labs at
the same time on other indexes). The ride-through labs give their agents a lease TTL of
3 s: with the default 1.5 s an agent holds on only 1 s without a successful renewal, while
a 1-member etcd takes 0.5-1 s to restart and a 3-member etcd 0.5-1 s to elect a new leader
(measured here): some of those would fence every agent, and the agents say so at start
(``vigil.agent.timing``, rule 4).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.etcd_server import etcd_processes
from tests.faults.probe import DualActiveProbe
from tests.integration.helpers import Api, answering, service_commands, wait_for
from vigil.agent.config import LeaseSettings, load_config
from vigil.errors import LabError
from vigil.lab import Lab, LabInfo

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd (etcd-server)"),
]

#: a TTL that rides through an etcd leader change or restart (see the module docstring)
RIDE_THROUGH = LeaseSettings(ttl=3.0)
WEB, FENCED, STEADY = 8080, 8082, 8090
VIGIL = Path(sys.executable).with_name("vigil")


def _lab(name: str, subnet_index: int, members: int, lease: LeaseSettings | None) -> Iterator[Lab]:
    lab = Lab(name, subnet_index)
    lab.down()  # leftovers of an interrupted run
    try:
        lab.up(3, store="etcd", store_members=members, lease=lease)
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Three servers on a 1-member etcd, agents with their default lease settings."""
    yield from _lab("tetcd-a", 45, 1, None)


@pytest.fixture(scope="module")
def api(lab: Lab) -> Iterator[Api]:
    client = Api(lab.info())
    yield client
    client.close()


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


def _states(api: Api, tag: str) -> dict[str, str]:
    return {server: i["state"] for server, i in api.instances(tag).items()}


def _agent_log(info: LabInfo, server: str) -> str:
    return (info.root / server / "agent.log").read_text(errors="replace")


def _assert_nothing_left(lab: Lab, etcd_pids: list[int]) -> None:
    name = lab.name
    assert f"vigil-{name}-" not in _run(["ip", "netns", "list"]).stdout
    links = _run(["ip", "-o", "link", "show"]).stdout
    assert not re.search(rf"\b(vigil-{name}|v[lce]-{name}-\d+)[:@]", links), links
    assert not lab.names.root.exists()
    assert etcd_processes(str(lab.names.root)) == []
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in etcd_pids)
    assert not lab.status().exists


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in "ZX"
    except OSError:
        return True


# -- a lab on etcd: how it is built ---------------------------------------------------------
def test_etcd_runs_in_its_own_namespaces_and_agents_reach_it_over_the_lab(lab: Lab) -> None:
    info = lab.info()
    (member,) = info.store_members
    assert (info.store, member.name, member.address) == ("etcd", "etcd1", "10.213.45.151")
    assert info.store_url == "etcd://10.213.45.151:2379"
    state = json.loads(lab.names.state_file.read_text())
    assert (state["store"], sorted(state["store_members"])) == ("etcd", ["etcd1"])
    assert member.pid is not None and member.data_dir == info.root / "etcd1" / "data"
    for kind, path in (("net", f"/run/netns/{member.netns}"), ("mnt", str(member.mount_ns))):
        assert os.stat(f"/proc/{member.pid}/ns/{kind}").st_ino == os.stat(path).st_ino
    assert [(m.name, m.healthy) for m in lab.status(check_api=True).store_members] == [
        ("etcd1", True)
    ]
    for server in info.servers:
        assert load_config(server.config_file).store == info.store_url
        sockets = lab.exec(server.name, ["ss", "-Htn", "state", "established"], **_text())
        assert f"{server.address}:" in sockets.stdout and "10.213.45.151:2379" in sockets.stdout
    # the default lease settings on etcd: failsafe rides through an election, so the
    # agents have no lease-timing warning; etcd's whole-second lease (ttl + margin +
    # failsafe_limit, rounded up: 12 s) is only the backstop, the others time the 0.8 s
    # heartbeat
    log = _agent_log(info, "node1")
    assert "lease timing:" not in log, log
    assert "(ttl 0.8s, store ttl 12s)" in log, log


def _text() -> dict[str, object]:
    return {"capture_output": True, "text": True, "timeout": 30}


def test_up_refuses_a_member_count_etcd_cannot_use() -> None:
    with pytest.raises(LabError, match="1, 3, 5 members, not 2"):
        Lab("tetcd-n", 49).up(1, store="etcd", store_members=2)
    assert not Path("/run/vigil-tetcd-n").exists()


# -- chapter 4 on etcd ----------------------------------------------------------------------
def _comm_paths(api: Api, info: LabInfo, servers: list[str]) -> None:
    """Comm paths between every two of ``servers``, and wait until they are ALIVE."""
    for i, one in enumerate(servers):
        for other in servers[i + 1 :]:
            body = {
                "local": one,
                "local_address": info.server(one).address,
                "remote": other,
                "remote_address": info.server(other).address,
            }
            api.ok("POST", "/v1/commpaths", body)
    wait_for(
        lambda: {p["state"] for p in api.ok("GET", "/v1/commpaths")} == {"ALIVE"},
        what="every comm path ALIVE",
    )


def test_comm_paths_on_etcd(lab: Lab, api: Api) -> None:
    _comm_paths(api, lab.info(), ["node1", "node2", "node3"])
    assert len(api.ok("GET", "/v1/commpaths")) == 3


def test_create_extend_and_switch_over_on_etcd(lab: Lab, api: Api) -> None:
    info = lab.info()
    body = {"tag": "web", "kit": "app", "server": "node1", "properties": service_commands(WEB)}
    assert "in service on node1" in api.ok("POST", "/v1/resources", body)["detail"]
    assert answering(info, WEB) == {"node1": "node1"}
    api.ok("POST", "/v1/hierarchies/web/extend", {"server": "node2", "priority": 10})
    api.ok("POST", "/v1/hierarchies/web/extend", {"server": "node3", "priority": 20})
    wait_for(lambda: _states(api, "web") == {"node1": "ISP", "node2": "OSU", "node3": "OSU"})
    api.ok("POST", "/v1/hierarchies/web/in-service", {"server": "node2"})
    assert _states(api, "web") == {"node1": "OSU", "node2": "ISP", "node3": "OSU"}
    assert answering(info, WEB) == {"node2": "node2"}


def _answers_inside(lab: Lab, server: str, port: int) -> bool:
    probe = f"exec 3<>/dev/tcp/127.0.0.1/{port}"
    return lab.exec(server, ["bash", "-c", probe], capture_output=True, timeout=10).returncode == 0


def test_a_server_cut_off_the_store_fences_itself(lab: Lab, api: Api) -> None:
    info = lab.info()
    body = {
        "tag": "fenced",
        "kit": "app",
        "server": "node1",
        "properties": service_commands(FENCED),
    }
    api.ok("POST", "/v1/resources", body)
    assert _answers_inside(lab, "node1", FENCED)
    veth = lab.names.host_veth("node1")
    cut = time.monotonic()
    _run(["ip", "link", "set", veth, "down"])
    try:
        while _answers_inside(lab, "node1", FENCED):
            assert time.monotonic() - cut < 10, "node1 still runs its service 10 s after the cut"
            time.sleep(0.02)
        fenced_after = time.monotonic() - cut
        # the web hierarchy on node2 is untouched: only the cut server lost the store
        time.sleep(1.0)
        assert answering(info, WEB) == {"node2": "node2"}
    finally:
        _run(["ip", "link", "set", veth, "up"])
    print(f"node1 cut off the store: its service stopped {fenced_after:.2f} s after the cut")
    assert fenced_after < 3.0  # lease trusted 1 s after its last renewal, then removed
    log = _agent_log(info, "node1")
    assert re.search(r"lease \w+ lost: no successful renewal", log), log[-2000:]
    assert "fencing node1" in log
    # back on the network, node1's agent joins again with a new lease
    wait_for(lambda: len(re.findall(r"lease \w+ granted", _agent_log(info, "node1"))) >= 2)
    # and the lab is left quiet: no restore of "fenced" under way when it is torn down
    api.ok("DELETE", "/v1/hierarchies/fenced")
    wait_for(lambda: not _answers_inside(lab, "node1", FENCED), what="fenced gone from node1")


def test_down_removes_every_part_of_the_etcd(lab: Lab) -> None:
    pids = [m.pid for m in lab.info().store_members if m.pid]
    assert pids and etcd_processes(str(lab.names.root)) == pids
    started = time.monotonic()
    lab.down()
    assert time.monotonic() - started < 20
    _assert_nothing_left(lab, pids)


def test_cli_up_on_etcd_and_down_by_names_without_a_state_file() -> None:
    lab = Lab("tetcd-c", 48)
    lab.down()
    try:
        up = _run([str(VIGIL), "lab", "up", "--name", "tetcd-c", "--subnet-index", "48",
                   "-n", "1", "--store", "etcd", "--store-members", "3", "--no-agents",
                   "--json"])  # fmt: skip
        assert up.returncode == 0, up.stderr
        data = json.loads(up.stdout)
        addresses = [f"10.213.48.{k}" for k in (151, 152, 153)]
        assert data["store"] == "etcd"
        assert data["store_url"] == "etcd://" + ",".join(f"{a}:2379" for a in addresses)
        assert [m["address"] for m in data["store_members"]] == addresses
        status = json.loads(
            _run([str(VIGIL), "lab", "status", "--name", "tetcd-c", "--json"]).stdout
        )
        assert [m["healthy"] for m in status["store_members"]] == [True, True, True]
        pids = etcd_processes(str(lab.names.root))
        assert len(pids) == 3
        lab.names.state_file.unlink()  # as after a crash: found by their names alone
        down = _run([str(VIGIL), "lab", "down", "--name", "tetcd-c"])
        assert down.returncode == 0, down.stderr
        _assert_nothing_left(lab, pids)
    finally:
        lab.down()


# -- leases ride through etcd's leader changes and restarts ---------------------------------
def _grants(info: LabInfo) -> dict[str, list[str]]:
    return {
        s.name: re.findall(r"lease (\w+) granted", _agent_log(info, s.name)) for s in info.servers
    }


def _keepalive_gap(info: LabInfo, server: str, since: float) -> float | None:
    """The longest time between two successful renewals of ``server``'s agent after the
    wall-clock time ``since``, from the agent log's HTTP request lines (a measurement)."""
    times = []
    for line in _agent_log(info, server).splitlines():
        if "/v3/lease/keepalive" in line and "200 OK" in line:
            at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if at >= since:
                times.append(at)
    return max((b - a for a, b in itertools.pairwise(times)), default=None)


def _steady_hierarchy(info: LabInfo) -> Api:
    """The sample service as ``steady``, in service on node1 and extended to node2."""
    api = Api(info)
    _comm_paths(api, info, ["node1", "node2"])
    body = {
        "tag": "steady",
        "kit": "app",
        "server": "node1",
        "properties": service_commands(STEADY),
    }
    api.ok("POST", "/v1/resources", body)
    api.ok("POST", "/v1/hierarchies/steady/extend", {"server": "node2", "priority": 10})
    wait_for(lambda: _states(api, "steady") == {"node1": "ISP", "node2": "OSU"})
    return api


def _assert_held_throughout(probe: DualActiveProbe, first: int) -> None:
    """Since sample ``first``: one and the same process of the service ran on node1 and
    nowhere else (never taken down and restored), and it answered on node1 alone. A round
    of the probe that overran its own HTTP timeout (a loaded machine) may miss an answer:
    such rounds are counted, and must stay rare."""
    samples = probe.samples[first:]
    assert len(samples) > 100, len(samples)
    elsewhere = [s for s in samples if s.ran(STEADY) != {"node1"} or s.answered(STEADY) - {"node1"}]
    assert not elsewhere, f"{len(elsewhere)} of {len(samples)} samples: {elsewhere[:3]}"
    pids = {s.running[STEADY]["node1"] for s in samples}
    assert len(pids) == 1, f"the service was restarted on node1: {pids}"
    silent = [s for s in samples if s.answered(STEADY) != {"node1"}]
    late = [s for s in silent if s.took >= probe.timeout]
    assert silent == late, f"no answer from node1 in time: {[s for s in silent if s not in late]}"
    assert len(late) <= len(samples) // 50, f"{len(late)} of {len(samples)} probe rounds late"
    print(f"{len(samples)} samples: on node1 alone throughout ({len(late)} probe rounds late)")


def _assert_leases_kept(info: LabInfo, before: dict[str, list[str]], since: float) -> None:
    assert _grants(info) == before  # no agent granted itself a new lease: none was lost
    for server in info.servers:
        log = _agent_log(info, server.name)
        assert not re.search(r"lease \w+ lost|fencing node", log), log[-2000:]
        assert "lease timing:" not in log  # a TTL of 3 s rides through: no warning
        gap = _keepalive_gap(info, server.name, since)
        print(f"{server.name}: longest time between two lease renewals {gap or 0:.2f} s")


@pytest.fixture(scope="module")
def lab3() -> Iterator[Lab]:
    """Three servers on a 3-member etcd; agents with a lease TTL of 3 s."""
    yield from _lab("tetcd-3", 46, 3, RIDE_THROUGH)


def test_an_etcd_leader_change_drops_no_lease_and_no_hierarchy(lab3: Lab) -> None:
    info = lab3.info()
    api = _steady_hierarchy(info)
    before, since = _grants(info), time.time()
    with DualActiveProbe(info, [STEADY]) as probe:
        probe.answering_only(STEADY, "node1", 10)
        first = len(probe.samples)
        for _ in range(2):
            old = lab3.store_leader()
            assert old is not None
            killed = time.monotonic()
            lab3.stop_store_member(old, signal.SIGKILL)
            new = wait_for(lab3.store_leader, 10, "a new etcd leader")
            print(f"etcd{old} killed: etcd{new} leader after {time.monotonic() - killed:.2f} s")
            assert new != old
            time.sleep(RIDE_THROUGH.ttl + 1)  # any lost lease would have shown by now
            lab3.start_store_member(old)
        time.sleep(1)
    _assert_held_throughout(probe, first)
    _assert_leases_kept(info, before, since)
    assert _states(api, "steady") == {"node1": "ISP", "node2": "OSU"}
    api.close()


@pytest.fixture(scope="module")
def lab1() -> Iterator[Lab]:
    """Three servers on a 1-member etcd; agents with a lease TTL of 3 s."""
    yield from _lab("tetcd-r", 47, 1, RIDE_THROUGH)


def test_an_etcd_restart_drops_no_lease_and_no_hierarchy(lab1: Lab) -> None:
    info = lab1.info()
    api = _steady_hierarchy(info)
    before, since = _grants(info), time.time()
    with DualActiveProbe(info, [STEADY]) as probe:
        probe.answering_only(STEADY, "node1", 10)
        first = len(probe.samples)
        for _ in range(3):
            killed = time.monotonic()
            lab1.stop_store_member(1, signal.SIGKILL)
            lab1.start_store_member(1)
            took = time.monotonic() - killed
            print(f"etcd1 killed and healthy again after {took:.2f} s")
            assert took < RIDE_THROUGH.ttl - RIDE_THROUGH.safety_margin - 0.5
            time.sleep(RIDE_THROUGH.ttl + 1)
    _assert_held_throughout(probe, first)
    _assert_leases_kept(info, before, since)
    assert _states(api, "steady") == {"node1": "ISP", "node2": "OSU"}
    api.close()
