"""The ip kit's checks over a server's links and addresses (built by hand: no network), the
quick check's three states, and the ARP frames it sends and recognises."""

from __future__ import annotations

import logging
import socket
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

from vigil.kits.base import CheckStatus, KitContext
from vigil.kits.ip import IpKit, IpProperties, arp
from vigil.kits.ip.kit import _check
from vigil.kits.ip.netlink import IFF_LOWER_UP, IFF_NOARP, IFF_UP, Address, Link, NetView
from vigil.kits.ip.validation import choose_interface, config_problems, usable

UP = IFF_UP | IFF_LOWER_UP


def props(**values: Any) -> IpProperties:
    base: dict[str, Any] = {"address": "10.1.0.50", "prefix": 24, "interface": "eth0"}
    parsed = IpKit().parse_properties({**base, **values})
    assert isinstance(parsed, IpProperties)
    return parsed


def view(links: dict[str, int], addresses: dict[str, list[str]]) -> NetView:
    """links: name -> flags; addresses: name -> ["10.1.0.1/24", ...]."""
    built = {
        name: Link(index=i + 1, name=name, flags=flags, kind=1, mac=f"02:00:00:00:00:{i + 1:02x}")
        for i, (name, flags) in enumerate(links.items())
    }
    found = tuple(
        Address(name, built[name].index, IPv4Interface(text))
        for name, texts in addresses.items()
        for text in texts
    )
    return NetView(built, found)


SERVER = view(
    {"lo": UP, "eth0": UP, "eth1": UP}, {"eth0": ["10.1.0.1/24"], "eth1": ["10.2.0.1/24"]}
)


def test_a_good_configuration_has_no_problem() -> None:
    assert config_problems(SERVER, props(), "node1") == []
    assert config_problems(SERVER, props(prefix=32), "node1") == []
    assert config_problems(SERVER, props(prefix=28), "node1") == []


def test_address_outside_the_interface_subnets_names_them() -> None:
    (problem,) = config_problems(SERVER, props(address="10.2.0.50"), "node1")
    assert "10.2.0.50/24 is not in a subnet of interface eth0 on node1" in problem
    assert "eth0 has 10.1.0.1/24" in problem
    assert "eth1 has one" in problem
    (problem,) = config_problems(SERVER, props(address="192.168.9.9"), "node1")
    assert "eth0 has 10.1.0.1/24" in problem
    assert "has one" not in problem


def test_prefix_wider_than_the_subnet() -> None:
    (problem,) = config_problems(SERVER, props(prefix=16), "node1")
    assert "prefix /16 of 10.1.0.50 is wider than the subnet 10.1.0.0/24" in problem
    assert "use prefix 24" in problem


def test_interface_missing_or_down() -> None:
    (problem,) = config_problems(SERVER, props(interface="eth7"), "node2")
    assert "interface eth7 does not exist on node2 (its interfaces: eth0, eth1)" in problem
    down = view({"eth0": IFF_LOWER_UP}, {"eth0": ["10.1.0.1/24"]})
    (problem,) = config_problems(down, props(), "node1")
    assert "interface eth0 on node1 is administratively down" in problem
    assert "ip link set eth0 up" in problem
    no_carrier = view({"eth0": IFF_UP}, {"eth0": ["10.1.0.1/24"]})
    assert "without carrier" in config_problems(no_carrier, props(), "node1")[0]


def test_interface_without_any_address() -> None:
    bare = view({"eth0": UP}, {})
    (problem,) = config_problems(bare, props(), "node1")
    assert "eth0 has no IPv4 address" in problem


def test_backup_interface_is_checked_too() -> None:
    (problem,) = config_problems(SERVER, props(backup_interface="eth1"), "node1")
    assert problem.startswith("10.1.0.50/24 is not in a subnet of backup_interface eth1")
    two = view({"eth0": UP, "eth1": UP}, {"eth0": ["10.1.0.1/24"], "eth1": ["10.1.0.2/24"]})
    assert config_problems(two, props(backup_interface="eth1"), "node1") == []


def test_address_already_configured_here() -> None:
    taken = view({"eth0": UP}, {"eth0": ["10.1.0.1/24", "10.1.0.50/24"]})
    (problem,) = config_problems(taken, props(), "node1")
    assert "10.1.0.50 is already configured on eth0 of node1" in problem
    assert "ip addr del 10.1.0.50/24 dev eth0" in problem


def test_choose_interface_proposes_the_one_with_the_subnet() -> None:
    assert choose_interface(SERVER, props()) == "eth0"
    assert choose_interface(SERVER, props(interface="ens3")) == "eth0"
    assert choose_interface(SERVER, props(interface="eth1", address="10.2.0.9")) == "eth1"
    assert choose_interface(SERVER, props(interface="eth0", address="10.2.0.9")) == "eth1"
    # nothing fits: the given one stays (and its problems are reported)
    assert choose_interface(SERVER, props(interface="eth9", address="10.9.0.9")) == "eth9"
    # a link that is down is not proposed
    down = view({"eth0": IFF_UP, "eth1": UP}, {"eth0": ["10.1.0.1/24"]})
    assert choose_interface(down, props(interface="eth5")) == "eth5"


def test_usable() -> None:
    assert usable(SERVER, props(), "eth0") is SERVER.links["eth0"]
    assert usable(SERVER, props(), "eth1") is None
    assert usable(SERVER, props(), "eth9") is None


def test_quick_check_three_states() -> None:
    p = props(backup_interface="eth1")
    both = {"eth0": ["10.1.0.1/24"], "eth1": ["10.1.0.2/24"]}
    absent = view({"eth0": UP, "eth1": UP}, both)
    assert _check(absent, p).status is CheckStatus.STOPPED
    here = view({"eth0": UP, "eth1": UP}, {**both, "eth0": ["10.1.0.1/24", "10.1.0.50/24"]})
    check = _check(here, p)
    assert check.status is CheckStatus.RUNNING
    assert check.detail == "10.1.0.50/24 on eth0"
    on_backup = view({"eth0": UP, "eth1": UP}, {**both, "eth1": ["10.1.0.2/24", "10.1.0.50/24"]})
    assert _check(on_backup, p).status is CheckStatus.RUNNING
    link_down = view(
        {"eth0": IFF_UP, "eth1": UP}, {**both, "eth0": ["10.1.0.1/24", "10.1.0.50/24"]}
    )
    check = _check(link_down, p)
    assert check.status is CheckStatus.FAILED
    assert "eth0, which is up but without carrier" in check.detail
    elsewhere = view({"eth0": UP, "eth1": UP, "eth2": UP}, {"eth2": ["10.1.0.50/24"]})
    check = _check(elsewhere, p)
    assert check.status is CheckStatus.FAILED
    assert "is on eth2, not on eth0 or eth1" in check.detail


def test_links_that_use_arp() -> None:
    assert SERVER.links["eth0"].uses_arp
    assert not Link(1, "dummy0", UP | IFF_NOARP, 1, "02:00:00:00:00:09").uses_arp
    assert not Link(1, "lo", UP, 772, "00:00:00:00:00:00").uses_arp
    assert SERVER.macs() == {"02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"}


def test_fence_actions_name_both_interfaces() -> None:
    p = props(backup_interface="eth1")
    log = logging.getLogger("vigil.kit.ip.vip")
    ctx = KitContext("vip", "node1", p, log=log, state_dir=Path("/nonexistent/vip"))
    actions = IpKit().fence_actions(ctx)
    assert actions.addresses == (("10.1.0.50", 24, "eth0"), ("10.1.0.50", 24, "eth1"))


# --- ARP frames ------------------------------------------------------------------------------

MAC = bytes.fromhex("020000000001")
OTHER = bytes.fromhex("0a0000000002")
IP = IPv4Address("10.1.0.50")
RECEIVED = ("eth0", arp.ETH_P_ARP, socket.PACKET_BROADCAST, 1, OTHER)


def test_probe_and_announcement_frames() -> None:
    probe = arp._frame(arp.ARP_REQUEST, MAC, IPv4Address("0.0.0.0"), b"\0" * 6, IP)
    assert probe[:6] == b"\xff" * 6 and probe[6:12] == MAC and probe[12:14] == b"\x08\x06"
    assert probe[14:22] == bytes.fromhex("0001080006040001")
    assert probe[28:32] == b"\0\0\0\0" and probe[38:42] == IP.packed
    garp = arp._frame(arp.ARP_REPLY, MAC, IP, MAC, IP)
    assert garp[20:22] == b"\x00\x02" and garp[28:32] == IP.packed and garp[32:38] == MAC


def test_an_answer_from_the_owner_is_recognised() -> None:
    reply = arp._frame(arp.ARP_REPLY, OTHER, IP, MAC, IPv4Address("0.0.0.0"))
    assert arp._owner(reply, RECEIVED, "eth0", IP) == OTHER
    assert arp._mac_text(OTHER) == "0a:00:00:00:00:02"
    announcement = arp._frame(arp.ARP_REQUEST, OTHER, IP, b"\0" * 6, IP)
    assert arp._owner(announcement, RECEIVED, "eth0", IP) == OTHER


def test_other_frames_are_ignored() -> None:
    reply = arp._frame(arp.ARP_REPLY, OTHER, IP, MAC, IPv4Address("0.0.0.0"))
    assert arp._owner(reply, RECEIVED, "eth1", IP) is None  # another interface
    outgoing = ("eth0", arp.ETH_P_ARP, socket.PACKET_OUTGOING, 1, MAC)
    assert arp._owner(reply, outgoing, "eth0", IP) is None  # our own frame
    someone_else = arp._frame(arp.ARP_REPLY, OTHER, IPv4Address("10.1.0.9"), MAC, IP)
    assert arp._owner(someone_else, RECEIVED, "eth0", IP) is None
    probe = arp._frame(arp.ARP_REQUEST, OTHER, IPv4Address("0.0.0.0"), b"\0" * 6, IP)
    assert arp._owner(probe, RECEIVED, "eth0", IP) is None  # another prober, not an owner
    assert arp._owner(reply[:30], RECEIVED, "eth0", IP) is None
