"""The ip kit for real: in a lab through the API, and directly in private namespaces.

**Lab** (``tipk``, subnet 10.213.30.0/24): the hierarchy ``web`` (the sample HTTP service,
app kit, bound to 0.0.0.0) → ``vip`` (ip kit, 10.213.30.100/24) is created on node1 and
extended to node2 and node3; node3's interface is renamed ``lan0`` first, so the extend
must propose it (the seed's Network Connection). A client namespace on the lab bridge
(``client1``, 10.213.30.200) reaches the service on the switchable address after create,
after each switchover and after a local recovery; its ARP cache shows the MAC of the
server that has the address; the address is on exactly one server after every step.
Refused creates: an address outside the interface's subnets, one already configured on
the server, one answering on the network, one used by another resource. The tests run
in order and build on each other.

**Private namespaces** (no agent): the kit's actions run on an event loop inside a
``server`` namespace joined to a ``peer`` namespace by two veths on a bridge; the peer
plays the network (ping target, gateway, another owner of the address).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.contract.kit_cases import NamespaceLoop, processes_in_netns
from tests.integration.helpers import Api, service_commands, wait_for
from vigil.errors import KitError, Severity
from vigil.kits.base import CheckStatus, KitContext
from vigil.kits.ip import IpKit, arp
from vigil.lab import clients
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab

pytestmark = pytest.mark.lab

PORT = 8080
VIP = "10.213.30.100"
log = logging.getLogger("tests.ip")


# --- the lab -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabInfo]]:
    lab = Lab("tipk", subnet_index=30)
    lab.down()
    try:
        info = lab.up(3)
        lab.add_client("client1")
        api = Api(info)
        for one, other in (("node1", "node2"), ("node1", "node3"), ("node2", "node3")):
            body = {
                "local": one,
                "local_address": info.server(one).address,
                "remote": other,
                "remote_address": info.server(other).address,
            }
            api.ok("POST", "/v1/commpaths", body)
        api.close()
        yield lab, info
    finally:
        lab.down()
    assert not [n for n in _netns() if n.startswith("vigil-tipk-")], "namespaces left behind"


@pytest.fixture(scope="module")
def api(lab: tuple[Lab, LabInfo]) -> Iterator[Api]:
    client = Api(lab[1])
    yield client
    client.close()


def _netns() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]


def holders(lab: Lab, address: str = VIP) -> dict[str, str]:
    """server -> interface, for every server that has ``address`` configured."""
    found = {}
    for server in ("node1", "node2", "node3"):
        shown = lab.exec(server, ["ip", "-j", "-4", "addr", "show"], capture_output=True)
        for link in json.loads(shown.stdout):
            if any(a["local"] == address for a in link.get("addr_info", [])):
                found[server] = link["ifname"]
    return found


def mac_of(lab: Lab, server: str, ifname: str) -> str:
    shown = lab.exec(server, ["ip", "-j", "link", "show", ifname], capture_output=True)
    mac: str = json.loads(shown.stdout)[0]["address"]
    return mac


def client_neighbour(lab: Lab, address: str = VIP) -> str | None:
    """The hardware address the client's ARP cache holds for ``address``."""
    shown = lab.client_exec("client1", ["ip", "-j", "neigh", "show", address], capture_output=True)
    entries = json.loads(shown.stdout or "[]")
    return entries[0].get("lladdr") if entries else None


def client_get(lab: Lab, address: str = VIP, timeout: float = 2.0) -> str | None:
    """What the service answers the client on ``address`` (its first line), or None."""
    script = (
        "import sys, urllib.request\n"
        f"try:\n    print(urllib.request.urlopen('http://{address}:{PORT}/', timeout={timeout})"
        ".read().decode().splitlines()[0])\nexcept OSError:\n    sys.exit(1)\n"
    )
    done = lab.client_exec(
        "client1", [sys.executable, "-c", script], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else None


def create(api: Api, tag: str, properties: dict[str, Any], server: str = "node1") -> Any:
    return api.post(
        "/v1/resources", {"tag": tag, "kit": "ip", "server": server, "properties": properties}
    )


def refusal(answer: Any) -> str:
    assert answer.status_code == 400, f"{answer.status_code} {answer.text}"
    return " ".join([answer.json()["error"], *answer.json().get("problems", [])])


def test_an_address_outside_the_interface_subnets_is_refused(api: Api) -> None:
    message = refusal(
        create(api, "vip-x", {"address": "10.99.0.5", "prefix": 24, "interface": "eth0"})
    )
    assert "10.99.0.5/24 is not in a subnet of interface eth0 on node1" in message
    assert "eth0 has 10.213.30.1/24" in message
    message = refusal(create(api, "vip-x", {"address": VIP, "prefix": 16, "interface": "eth0"}))
    assert "wider than the subnet 10.213.30.0/24" in message
    message = refusal(create(api, "vip-x", {"address": VIP, "prefix": 24, "interface": "eth9"}))
    assert "interface eth9 does not exist on node1" in message


def test_an_address_in_use_is_refused(lab: tuple[Lab, LabInfo], api: Api) -> None:
    message = refusal(
        create(api, "vip-x", {"address": "10.213.30.1", "prefix": 24, "interface": "eth0"})
    )
    assert "10.213.30.1 is already configured on eth0 of node1" in message
    node2_mac = mac_of(lab[0], "node2", "eth0")
    message = refusal(
        create(api, "vip-x", {"address": "10.213.30.2", "prefix": 24, "interface": "eth0"})
    )
    assert (
        f"10.213.30.2 already answers on the network from hardware address {node2_mac}" in message
    )
    message = refusal(
        create(
            api,
            "vip-x",
            {"address": "10.213.30.200", "netmask": "255.255.255.0", "interface": "eth0"},
        )
    )
    assert "10.213.30.200 already answers on the network" in message
    assert holders(lab[0], "10.213.30.2") == {"node2": "eth0"}
    assert "vip-x" not in [r["tag"] for h in api.status()["hierarchies"] for r in h["resources"]]


def test_create_the_hierarchy(lab: tuple[Lab, LabInfo], api: Api) -> None:
    started = time.monotonic()
    result = api.ok(
        "POST",
        "/v1/resources",
        {
            "tag": "vip",
            "kit": "ip",
            "server": "node1",
            "properties": {
                "address": VIP,
                "prefix": 24,
                "interface": "eth0",
                "ping_list": ["10.213.30.254"],
            },
        },
    )
    log.info("create of vip took %.2fs", time.monotonic() - started)
    assert "in service on node1" in result["detail"]
    api.ok(
        "POST",
        "/v1/resources",
        {"tag": "web", "kit": "app", "server": "node1", "properties": service_commands(PORT)},
    )
    api.ok("POST", "/v1/dependencies", {"parent": "web", "child": "vip"})
    assert holders(lab[0]) == {"node1": "eth0"}
    assert client_get(lab[0]) == "node1"
    assert client_neighbour(lab[0]) == mac_of(lab[0], "node1", "eth0")
    vip = api.ok("GET", "/v1/resources/vip")
    assert vip["properties"] == {"address": VIP, "ping_list": ["10.213.30.254"]}
    assert vip["server_properties"]["node1"] == {"prefix": 24, "interface": "eth0"}


def test_the_same_address_twice_in_the_cluster_is_refused(api: Api) -> None:
    message = refusal(
        create(api, "vip2", {"address": VIP, "prefix": 24, "interface": "eth0"}, server="node2")
    )
    assert f"address '{VIP}' is already used by resource vip" in message


def test_extend_proposes_the_interface(lab: tuple[Lab, LabInfo], api: Api) -> None:
    # node3 calls its interface lan0: the proposal must follow (the seed's Network Connection)
    rename = "ip link set eth0 down && ip link set eth0 name lan0 && ip link set lan0 up"
    assert lab[0].exec("node3", ["sh", "-c", rename]).returncode == 0
    ping = ["ping", "-c1", "-W1", "10.213.30.1"]
    wait_for(lambda: lab[0].exec("node3", ping, capture_output=True).returncode == 0)
    api.ok("POST", "/v1/hierarchies/web/extend", {"server": "node2"})
    api.ok("POST", "/v1/hierarchies/web/extend", {"server": "node3", "priority": 20})
    vip = api.ok("GET", "/v1/resources/vip")["server_properties"]
    assert vip["node2"] == {"prefix": 24, "interface": "eth0"}
    assert vip["node3"] == {"prefix": 24, "interface": "lan0"}
    assert holders(lab[0]) == {"node1": "eth0"}


def test_an_override_that_cannot_work_is_refused(api: Api) -> None:
    api.ok("POST", "/v1/hierarchies/web/unextend", {"server": "node3"})
    answer = api.post(
        "/v1/hierarchies/web/extend",
        {"server": "node3", "priority": 20, "properties": {"vip": {"interface": "eth0"}}},
    )
    assert answer.status_code >= 400
    assert "interface eth0 does not exist on node3 (its interfaces: lan0)" in answer.text
    api.ok("POST", "/v1/hierarchies/web/extend", {"server": "node3", "priority": 20})


class Watch:
    """The client pinging the switchable address every 10 ms while something happens."""

    def __init__(self, lab: Lab) -> None:
        argv = ["ping", "-n", "-D", "-i", "0.01", "-W", "0.1", VIP]
        self.process = subprocess.Popen(
            clients.enter_argv(lab.names, "client1", argv), stdout=subprocess.PIPE, text=True
        )
        time.sleep(0.3)

    def longest_gap(self) -> float:
        """Stop; the longest time between two answers (seconds)."""
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        times = [
            float(line[1 : line.index("]")]) for line in out.splitlines() if "bytes from" in line
        ]
        assert times, out
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


@pytest.mark.parametrize(
    ("target", "ifname"),
    [("node2", "eth0"), ("node1", "eth0"), ("node3", "lan0"), ("node1", "eth0")],
)
def test_switchover_moves_the_address_and_the_client_follows(
    lab: tuple[Lab, LabInfo], api: Api, target: str, ifname: str
) -> None:
    before = client_neighbour(lab[0])
    watch = Watch(lab[0])
    started = time.monotonic()
    try:
        api.ok("POST", "/v1/hierarchies/web/in-service", {"server": target})
        switched = time.monotonic() - started
        assert holders(lab[0]) == {target: ifname}
        new_mac = mac_of(lab[0], target, ifname)
        assert client_neighbour(lab[0]) == new_mac != before
        assert client_get(lab[0]) == target
    finally:
        gap = watch.longest_gap()
    log.info("switchover to %s: %.2fs; the client's pings stopped for %.2fs", target, switched, gap)
    print(f"\nswitchover to {target}: {switched:.2f}s, address unreachable for {gap:.2f}s")
    assert gap < 5.0


def test_local_recovery_re_adds_a_deleted_address(lab: tuple[Lab, LabInfo], api: Api) -> None:
    assert holders(lab[0]) == {"node1": "eth0"}
    lab[0].exec("node1", ["ip", "addr", "del", f"{VIP}/24", "dev", "eth0"], check=True)
    wait_for(lambda: holders(lab[0]) == {"node1": "eth0"}, timeout=20, what="the address back")
    wait_for(lambda: client_get(lab[0]) == "node1", timeout=10, what="the client reaching it")
    kinds = [e["kind"] for e in api.ok("GET", "/v1/events?limit=50")]
    assert "recovered" in kinds
    assert {s: i["state"] for s, i in api.instances("vip").items()} == {
        "node1": "ISP",
        "node2": "OSU",
        "node3": "OSU",
    }


def test_delete_takes_the_address_away(lab: tuple[Lab, LabInfo], api: Api) -> None:
    api.ok("DELETE", "/v1/hierarchies/web")
    assert holders(lab[0]) == {}
    assert client_get(lab[0], timeout=1.0) is None


# --- the kit directly, in private namespaces ---------------------------------------------------

SUBNET = "198.51.100"
ADDRESS = f"{SUBNET}.7"
STATE = Path(tempfile.gettempdir()) / f"vigil-tipn-{os.getpid()}"


class Namespaces:
    """``server`` (eth0 .1 and eth1 .3, both veths to ``peer``) and ``peer`` (a bridge
    over its two veth ends, .2/24)."""

    def __init__(self) -> None:
        self.server = f"vigil-tipn-{os.getpid()}-server"
        self.peer = f"vigil-tipn-{os.getpid()}-peer"
        self.loop: NamespaceLoop | None = None
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        for name in (self.server, self.peer):
            self.sh("ip", "netns", "add", name)
            self.sh(
                "ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"
            )
            self.sh("ip", "-n", name, "link", "set", "lo", "up")
        # replies must leave through the backup interface once eth0 has no carrier
        sysctl = "net.ipv4.conf.all.ignore_routes_with_linkdown=1"
        self.sh("ip", "netns", "exec", self.server, "sysctl", "-qw", sysctl)
        self.sh("ip", "-n", self.peer, "link", "add", "br0", "type", "bridge")
        for i, ifname in enumerate(("eth0", "eth1")):
            self.sh(
                "ip",
                "-n",
                self.server,
                "link",
                "add",
                ifname,
                "type",
                "veth",
                "peer",
                "name",
                f"p{i}",
                "netns",
                self.peer,
            )
            self.sh(
                "ip", "-n", self.server, "addr", "add", f"{SUBNET}.{1 + 2 * i}/24", "dev", ifname
            )
            self.sh("ip", "-n", self.server, "link", "set", ifname, "up")
            self.sh("ip", "-n", self.peer, "link", "set", f"p{i}", "master", "br0", "up")
        self.sh("ip", "-n", self.peer, "addr", "add", f"{SUBNET}.2/24", "dev", "br0")
        self.sh("ip", "-n", self.peer, "link", "set", "br0", "up")
        self.loop = NamespaceLoop(f"/run/netns/{self.server}")

    @staticmethod
    def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=check)

    def in_server(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.sh("ip", "netns", "exec", self.server, *argv, check=False)

    def in_peer(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.sh("ip", "netns", "exec", self.peer, *argv, check=False)

    def where(self) -> list[str]:
        shown = json.loads(self.sh("ip", "-n", self.server, "-j", "-4", "addr", "show").stdout)
        return [
            link["ifname"]
            for link in shown
            if any(a["local"] == ADDRESS for a in link["addr_info"])
        ]

    def peer_reaches(self) -> bool:
        return self.in_peer("ping", "-n", "-q", "-c", "1", "-W", "1", ADDRESS).returncode == 0

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()
        for name in (self.server, self.peer):
            self.sh("ip", "netns", "delete", name, check=False)


@pytest.fixture
def ns() -> Iterator[Namespaces]:
    made = Namespaces()
    try:
        yield made
    finally:
        server = f"/run/netns/{made.server}"
        left = processes_in_netns(server) if Path(server).exists() else []
        made.close()
        shutil.rmtree(STATE, ignore_errors=True)
        assert not left, f"processes left in the server namespace: {left}"


KIT = IpKit()


def context(**values: Any) -> KitContext:
    properties = {"address": ADDRESS, "prefix": 24, "interface": "eth0", **values}
    return KitContext(
        tag="vip",
        server="server",
        properties=KIT.parse_properties(properties),
        log=logging.getLogger("vigil.kit.ip.vip"),
        state_dir=STATE / "kits" / "vip",
        epoch=1,
    )


async def run(ns: Namespaces, action: str, ctx: KitContext) -> Any:
    assert ns.loop is not None
    return await ns.loop.run(lambda: getattr(KIT, action)(ctx))


async def test_can_extend_proposes_the_interface_with_the_subnet(ns: Namespaces) -> None:
    check = await run(ns, "can_extend", context(interface="ens9", backup_interface="eth7"))
    assert check.proposed == {"interface": "eth0", "backup_interface": None}
    assert check.problems == []
    check = await run(ns, "can_extend", context(address="203.0.113.5", interface="ens9"))
    assert check.proposed == {"interface": "ens9"}
    assert check.problems == [
        "interface ens9 does not exist on server (its interfaces: eth0, eth1): "
        "correct the interface"
    ]
    with pytest.raises(KitError) as refused:
        await run(ns, "extend", context(interface="ens9"))
    assert refused.value.severity is Severity.FATAL


async def test_restore_refuses_an_address_another_host_answers_for(ns: Namespaces) -> None:
    ns.sh("ip", "-n", ns.peer, "addr", "add", f"{ADDRESS}/24", "dev", "br0")
    peer_mac = json.loads(ns.sh("ip", "-n", ns.peer, "-j", "link", "show", "br0").stdout)[0][
        "address"
    ]
    assert await run(ns, "validate_create", context()) == [
        f"{ADDRESS} already answers on the network from hardware address {peer_mac} (probed on "
        "eth0 of server): another host uses it; free it there or choose another address"
    ]
    with pytest.raises(KitError) as refused:
        await run(ns, "restore", context())
    assert refused.value.severity is Severity.HARD
    assert peer_mac in str(refused.value)
    assert ns.where() == []


async def test_restore_is_quick_and_leaves_only_the_address(ns: Namespaces) -> None:
    started = time.monotonic()
    await run(ns, "restore", context())
    took = time.monotonic() - started
    # it waited for the probe's answers, not for the second announcement (still pending)
    assert arp.PROBE_WAIT <= took < arp.PROBE_WAIT + arp.ANNOUNCE_AGAIN, took
    assert ns.where() == ["eth0"]
    assert ns.peer_reaches()
    assert KIT._announcer.pending("vip")
    await run(ns, "remove", context())
    assert not KIT._announcer.pending("vip")
    assert ns.where() == []


async def test_recover_moves_to_the_backup_interface_when_the_link_is_down(ns: Namespaces) -> None:
    ctx = context(backup_interface="eth1")
    await run(ns, "restore", ctx)
    ns.sh("ip", "-n", ns.peer, "link", "set", "p0", "down")  # eth0 loses its carrier
    check = await run(ns, "quick_check", ctx)
    assert check.status is CheckStatus.FAILED
    assert "eth0, which is up but without carrier" in check.detail
    assert await run(ns, "recover", ctx) is True
    assert ns.where() == ["eth1"]
    assert (await run(ns, "quick_check", ctx)).status is CheckStatus.RUNNING
    assert ns.peer_reaches()
    ns.sh("ip", "-n", ns.peer, "link", "set", "p1", "down")
    assert await run(ns, "recover", ctx) is False  # no interface left: fail over
    assert await run(ns, "recover", context(local_recovery=False)) is False
    await run(ns, "remove", ctx)
    assert ns.where() == []


async def test_a_backup_interface_needs_linkdown_routes_ignored(ns: Namespaces) -> None:
    ctx = context(backup_interface="eth1")
    assert await run(ns, "validate_create", ctx) == []
    ns.in_server("sysctl", "-qw", "net.ipv4.conf.all.ignore_routes_with_linkdown=0")
    (problem,) = await run(ns, "validate_create", ctx)
    assert "set net.ipv4.conf.eth0.ignore_routes_with_linkdown=1" in problem
    assert await run(ns, "validate_create", context()) == []
    ns.in_server("sysctl", "-qw", "net.ipv4.conf.eth0.ignore_routes_with_linkdown=1")
    assert await run(ns, "validate_create", ctx) == []


async def test_remove_deletes_the_address_configured_before_an_edit(ns: Namespaces) -> None:
    await run(ns, "restore", context())
    assert (STATE / "kits" / "vip" / "configured-address").read_text() == f"{ADDRESS}\n"
    edited = context(address=f"{SUBNET}.8")
    assert (await run(ns, "quick_check", edited)).status is CheckStatus.STOPPED
    await run(ns, "remove", edited)
    assert ns.where() == []
    assert not (STATE / "kits" / "vip" / "configured-address").exists()
    await run(ns, "delete", edited)
    assert not (STATE / "kits" / "vip").exists()


async def test_recover_re_adds_a_deleted_address(ns: Namespaces) -> None:
    ctx = context()
    await run(ns, "restore", ctx)
    ns.sh("ip", "-n", ns.server, "addr", "del", f"{ADDRESS}/24", "dev", "eth0")
    assert (await run(ns, "quick_check", ctx)).status is CheckStatus.STOPPED
    assert await run(ns, "recover", ctx) is True
    assert ns.where() == ["eth0"]
    await run(ns, "remove", ctx)


async def test_deep_check_pings_the_list_or_the_gateway(ns: Namespaces) -> None:
    ctx = context(ping_list=[f"{SUBNET}.2", f"{SUBNET}.99"])
    await run(ns, "restore", ctx)
    check = await run(ns, "deep_check", ctx)
    assert check.status is CheckStatus.RUNNING
    assert check.warning == f"not answering pings: {SUBNET}.99"
    check = await run(ns, "deep_check", context(ping_list=[f"{SUBNET}.98", f"{SUBNET}.99"]))
    assert check.status is CheckStatus.FAILED
    assert check.detail == f"no ping target answers from {ADDRESS}: {SUBNET}.98, {SUBNET}.99"
    # no list: the subnet's gateway, when there is one
    assert (await run(ns, "deep_check", context())).status is CheckStatus.RUNNING
    ns.sh("ip", "-n", ns.server, "route", "add", "default", "via", f"{SUBNET}.99", "dev", "eth0")
    check = await run(ns, "deep_check", context())
    assert check.status is CheckStatus.FAILED
    assert check.detail.endswith(f": {SUBNET}.99")
    await run(ns, "remove", ctx)
    assert (await run(ns, "deep_check", ctx)).status is CheckStatus.STOPPED
