"""The ip kit's configuration checks on one server (validate_create, can_extend, restore).

Pure functions over a ``NetView`` (the server's links and addresses read once), so they
are cheap, testable without a network and give the same message wherever they run. Each
problem names the thing to fix and says what the server has instead.
"""

from __future__ import annotations

from vigil.kits.ip.netlink import Link, NetView
from vigil.kits.ip.properties import IpProperties

__all__ = ["already_configured", "choose_interface", "config_problems", "interface_problems"]


def _listing(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


def interface_problems(
    view: NetView, p: IpProperties, server: str, ifname: str, role: str = "interface"
) -> list[str]:
    """Why ``ifname`` cannot carry the address on ``server`` (empty when it can): it must
    exist, be up, and have an address in a subnet that contains the address's network."""
    link = view.link(ifname)
    if link is None:
        others = sorted(n for n in view.links if n != "lo")
        return [
            f"{role} {ifname} does not exist on {server} (its interfaces: "
            f"{_listing(others)}): correct the {role}"
        ]
    problems = []
    if not link.up:
        problems.append(
            f"{role} {ifname} on {server} is {link.state()}: bring it up "
            f"(ip link set {ifname} up) or choose another interface"
        )
    problems += _subnet_problems(view, p, server, ifname, role)
    return problems


def _subnet_problems(
    view: NetView, p: IpProperties, server: str, ifname: str, role: str
) -> list[str]:
    """The seed's same-subnet rule, with what the interface has and what would work."""
    if view.holder(ifname, p.vip) is not None:
        return []
    own = view.subnets(ifname, excluding=p.address)
    has = ", ".join(str(a.interface) for a in own) or "no IPv4 address"
    containing = [a for a in own if p.address in a.network]
    if containing:
        subnet = containing[0].network
        return [
            f"prefix /{p.prefixlen} of {p.address} is wider than the subnet {subnet} of "
            f"{role} {ifname} on {server}: use prefix {subnet.prefixlen} (or longer, "
            "up to 32), so the address does not claim addresses outside that subnet"
        ]
    others = [n for n in view.links_holding(p.vip) if n != ifname]
    hint = f"; on {server}, {', '.join(others)} has one" if others else ""
    return [
        f"{p.shown} is not in a subnet of {role} {ifname} on {server} ({ifname} has "
        f"{has}): choose an address in one of its subnets, or an interface with an "
        f"address in {p.network}{hint}"
    ]


def already_configured(view: NetView, p: IpProperties, server: str) -> list[str]:
    """A problem when the address is configured on ``server`` already (outside vigil)."""
    return [
        f"{p.address} is already configured on {a.link} of {server} ({a.interface}): vigil "
        f"must be the only one to manage it; remove it (ip addr del {a.interface} dev "
        f"{a.link}) or choose another address"
        for a in view.find(p.address)
    ]


def config_problems(
    view: NetView, p: IpProperties, server: str, linkdown_ignored: bool = True
) -> list[str]:
    """Every configuration problem of ``p`` on ``server``, except duplicate detection
    (which needs the network: see ``kit.IpKit.validate_create``). ``linkdown_ignored``:
    whether routes through the interface are ignored while its link is down (a backup
    interface on the same subnet needs it)."""
    problems = already_configured(view, p, server)
    problems += interface_problems(view, p, server, p.interface)
    if p.backup_interface is not None:
        problems += interface_problems(view, p, server, p.backup_interface, "backup_interface")
        if not linkdown_ignored:
            problems.append(
                f"backup_interface {p.backup_interface} cannot take the address over on "
                f"{server} while {p.interface}'s link is down: replies would still leave "
                f"through {p.interface}; set net.ipv4.conf.{p.interface}."
                "ignore_routes_with_linkdown=1 (or net.ipv4.conf.all....) with sysctl, or "
                "leave backup_interface empty"
            )
    return problems


def choose_interface(view: NetView, p: IpProperties) -> str:
    """The interface for the address on this server: the given one when it works here,
    else the first (by name) that is up and has the address's subnet (the seed's Network
    Connection), else the given one (its problems are then reported)."""
    if not interface_problems(view, p, "", p.interface):
        return p.interface
    for name in view.links_holding(p.vip):
        link = view.link(name)
        if link is not None and link.up and name != p.backup_interface:
            return name
    return p.interface


def usable(view: NetView, p: IpProperties, ifname: str) -> Link | None:
    """The link ``ifname`` if it can carry the address now (exists, up, right subnet)."""
    link = view.link(ifname)
    if link is None or not link.up or view.holder(ifname, p.vip) is None:
        return None
    return link
