"""A hierarchy of four in a real lab, through the API: the sample service (app kit, its
counter on the volume) on a switchable address (ip kit), a DNS name (dns kit, against the
lab's BIND) and a shared volume (volume kit, the lab's shared disk).

One lab of three servers for the module (``tfour``, subnet 23; tags ``four-*``), with a
client (another network namespace on the lab's bridge), BIND in a namespace of its own
(``Lab.add_dns_server``) and a shared disk (``Lab.add_shared_disk``). The hierarchy is
created on node1, extended to node2 (priority 10) and node3 (20), switched over to node2
and back. After each step: the client reaches the service by address and by name on the
server in service, the counter written before the move is there after it, and the
address, the mount and the service are on exactly one server. The tests run in order and
build on each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration.helpers import Api, service_commands, wait_for
from vigil.lab.disk import SharedDiskInfo
from vigil.lab.dns import DnsServerInfo
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab
from vigil.lab.probe import client_view

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]

PORT = 8095
CLIENT = "client1"
#: the tags: not ``web``, which other labs use (resources' cgroups are named by server and
#: tag only, so a fence of another lab's node1/web would hit this lab's too)
WEB, IP, DNS, VOL = "four-web", "four-ip", "four-dns", "four-vol"
TAGS = (WEB, IP, DNS, VOL)
SERVERS = ("node1", "node2", "node3")


@dataclass
class Four:
    lab: Lab
    info: LabInfo
    dns: DnsServerInfo
    disk: SharedDiskInfo
    mount_point: str
    vip: str
    counter: int = 0


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Four]:
    lab = Lab("tfour", subnet_index=23)
    lab.down()
    try:
        info = lab.up(len(SERVERS))
        lab.add_client(CLIENT)
        dns = lab.add_dns_server("client50")
        disk = lab.add_shared_disk(64)
        mount_point = str(tmp_path_factory.mktemp("tfour") / "web")
        yield Four(lab, info, dns, disk, mount_point, vip="10.213.23.100")
    finally:
        lab.down()
    assert not lab.status().exists


@pytest.fixture(scope="module")
def api(four: Four) -> Iterator[Api]:
    client = Api(four.info)
    yield client
    client.close()


def address(four: Four, server: str) -> str:
    return four.info.server(server).address


def where(four: Four) -> dict[str, list[str]]:
    """What of the hierarchy runs where: the address up, the volume mounted, the service
    answering (``/health`` on each server's own address: it leaves the counter alone)."""
    found: dict[str, list[str]] = {"address": [], "mount": [], "service": []}
    for server in SERVERS:
        shown = four.lab.exec(
            server, ["ip", "-4", "-br", "addr", "show", "dev", "eth0"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        if f" {four.vip}/" in shown:
            found["address"].append(server)
        mounted = four.lab.exec(
            server, ["findmnt", "-n", "--mountpoint", four.mount_point],
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
        if mounted.strip():
            found["mount"].append(server)
        try:
            url = f"http://{address(four, server)}:{PORT}/health"
            health = httpx.get(url, timeout=2.0, trust_env=False)
        except httpx.HTTPError:
            continue
        if health.status_code == 200:
            found["service"].append(server)
    return found


def client_sees(four: Four) -> dict[str, Any]:
    return client_view(
        four.lab, CLIENT, address=four.vip, port=PORT, name=four.dns.fqdn("web"),
        dns=four.dns.address, dns_port=four.dns.port,
    )  # fmt: skip


def check_in_service_on(four: Four, api: Api, server: str) -> None:
    """Everything of the hierarchy on ``server`` only; the client reaches it there by
    address and by name; the counter goes on from where it was."""
    for tag in TAGS:
        states = {s: i["state"] for s, i in api.instances(tag).items()}
        assert [s for s, state in states.items() if state == "ISP"] == [server], (tag, states)
    assert where(four) == {"address": [server], "mount": [server], "service": [server]}
    assert four.dns.lookup("web") == {address(four, server)}
    seen = client_sees(four)
    by_address, by_name = seen["by_address"], seen["by_name"]
    assert by_address.get("answer", [None])[0] == server, seen
    assert by_name["resolved"] == [address(four, server)], seen
    assert by_name.get("answer", [None])[0] == server, seen
    first, second = int(by_address["answer"][1]), int(by_name["answer"][1])
    assert (first, second) == (four.counter + 1, four.counter + 2), (four.counter, seen)
    four.counter = second


def test_comm_paths(four: Four, api: Api) -> None:
    for i, one in enumerate(SERVERS):
        for other in SERVERS[i + 1 :]:
            body = {
                "local": one,
                "local_address": address(four, one),
                "remote": other,
                "remote_address": address(four, other),
            }
            api.ok("POST", "/v1/commpaths", body)
    wait_for(
        lambda: [p["state"] for p in api.ok("GET", "/v1/commpaths")] == ["ALIVE"] * 3,
        what="three ALIVE comm paths",
    )


def create(api: Api, tag: str, kit: str, properties: dict[str, Any]) -> None:
    body = {"tag": tag, "kit": kit, "server": "node1", "properties": properties}
    result = api.ok("POST", "/v1/resources", body)
    assert "in service on node1" in result["detail"], result


def test_create_the_hierarchy_on_node1(four: Four, api: Api) -> None:
    volume = {
        "device": four.disk.device("node1"),
        "mount_point": four.mount_point,
        "filesystem_uuid": four.disk.uuid,
    }
    create(api, VOL, "volume", volume)
    create(api, IP, "ip", {"address": four.vip, "prefix": 24, "interface": "eth0"})
    properties = four.dns.kit_properties("web", address(four, "node1"), ttl=5)
    create(api, DNS, "dns", properties)
    commands = service_commands(PORT)
    commands["restore"] += f" --data-dir {four.mount_point}"
    create(api, WEB, "app", commands)
    for child in (IP, DNS, VOL):
        api.ok("POST", "/v1/dependencies", {"parent": WEB, "child": child})
    status = api.status()
    (hierarchy,) = status["hierarchies"]
    assert sorted(r["tag"] for r in hierarchy["resources"]) == sorted(TAGS)
    check_in_service_on(four, api, "node1")


def test_extend_to_node2_and_node3(four: Four, api: Api) -> None:
    for server, priority in (("node2", 10), ("node3", 20)):
        body = {
            "server": server,
            "priority": priority,
            "properties": {VOL: {"device": four.disk.device(server)}},
        }
        api.ok("POST", f"/v1/hierarchies/{WEB}/extend", body)
    for tag in TAGS:
        wait_for(
            lambda tag=tag: (
                {s: (i["state"], i["priority"]) for s, i in api.instances(tag).items()}
                == {"node1": ("ISP", 1), "node2": ("OSU", 10), "node3": ("OSU", 20)}
            ),
            what=f"{tag} extended",
        )
    dns = api.ok("GET", f"/v1/resources/{DNS}")["server_properties"]
    assert {s: dns[s]["address"] for s in SERVERS} == {s: address(four, s) for s in SERVERS}
    check_in_service_on(four, api, "node1")


@pytest.mark.parametrize("target", ["node2", "node1"])
def test_switchover(four: Four, api: Api, target: str) -> None:
    api.ok("POST", f"/v1/hierarchies/{WEB}/in-service", {"server": target, "timeout": 120})
    check_in_service_on(four, api, target)
    assert four.counter >= 4
