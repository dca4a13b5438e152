"""The ip kit's netlink layer: read links and IPv4 addresses, add and delete one address.

Everything goes through pyroute2's ``AsyncIPRoute`` on the running event loop: a netlink
socket is opened **in the network namespace of the calling thread** (the agent runs
inside its server's namespace; the conformance suite runs the kit in a thread that
entered a test namespace), used for one action, and closed. No worker thread is involved
(a thread pool's threads may sit in another namespace), and no call blocks the loop.

Failures of the kernel or of the socket become ``KitError`` (HARD) naming the operation.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute, NetlinkError

from vigil.errors import KitError, Severity

__all__ = [
    "Address",
    "Link",
    "NetView",
    "add_address",
    "delete_address",
    "gateways",
    "ignores_linkdown_routes",
    "read_view",
]

IFF_UP = 0x1
IFF_NOARP = 0x80
IFF_LOWER_UP = 0x10000
ARPHRD_ETHER = 1


@dataclass(frozen=True)
class Link:
    """One network interface as the kernel reports it."""

    index: int
    name: str
    flags: int
    kind: int  # ARPHRD_* hardware type
    mac: str

    @property
    def up(self) -> bool:
        """Administratively up and with a carrier: it can carry traffic."""
        return bool(self.flags & IFF_UP) and bool(self.flags & IFF_LOWER_UP)

    @property
    def uses_arp(self) -> bool:
        """An Ethernet link that speaks ARP (duplicate detection and announcements apply)."""
        return self.kind == ARPHRD_ETHER and not self.flags & IFF_NOARP

    def state(self) -> str:
        """``up``, ``administratively down`` or ``up but without carrier``, for messages."""
        if not self.flags & IFF_UP:
            return "administratively down"
        if not self.flags & IFF_LOWER_UP:
            return "up but without carrier (cable, switch port or peer down)"
        return "up"


@dataclass(frozen=True)
class Address:
    """One IPv4 address configured on a link."""

    link: str
    index: int
    interface: IPv4Interface

    @property
    def ip(self) -> IPv4Address:
        """The address without its prefix length."""
        return self.interface.ip

    @property
    def network(self) -> IPv4Network:
        """The subnet the address defines on its link."""
        return self.interface.network


@dataclass(frozen=True)
class NetView:
    """Links and IPv4 addresses of this network namespace, read at one moment."""

    links: dict[str, Link] = field(default_factory=dict)
    addresses: tuple[Address, ...] = ()

    def link(self, name: str) -> Link | None:
        """The link called ``name``, None when there is none."""
        return self.links.get(name)

    def find(self, ip: IPv4Address) -> list[Address]:
        """Where ``ip`` is configured (usually nowhere or on one link)."""
        return [a for a in self.addresses if a.ip == ip]

    def subnets(self, link: str, excluding: IPv4Address | None = None) -> list[Address]:
        """The addresses of ``link`` (other than ``excluding``), which define its subnets."""
        return [a for a in self.addresses if a.link == link and a.ip != excluding]

    def holder(self, link: str, vip: IPv4Interface) -> Address | None:
        """An address of ``link`` (other than ``vip`` itself) whose subnet contains
        ``vip``'s network: the same-subnet rule of a switchable address."""
        for addr in self.subnets(link, excluding=vip.ip):
            if addr.network.prefixlen < 32 and vip.network.subnet_of(addr.network):
                return addr
        return None

    def links_holding(self, vip: IPv4Interface) -> list[str]:
        """Links with a subnet containing ``vip``'s network, sorted by name."""
        return sorted(name for name in self.links if self.holder(name, vip) is not None)

    def macs(self) -> set[str]:
        """Hardware addresses of this namespace's Ethernet links (lower case)."""
        return {link.mac for link in self.links.values() if link.kind == ARPHRD_ETHER}


@contextlib.asynccontextmanager
async def _netlink(what: str) -> AsyncIterator[Any]:
    """An RTNL socket in the calling thread's namespace; errors become ``KitError``."""
    try:
        ipr = AsyncIPRoute()
    except OSError as exc:
        raise KitError(f"cannot open a netlink socket to {what}: {exc}", Severity.HARD) from exc
    try:
        yield ipr
    except NetlinkError as exc:
        raise KitError(f"netlink refused to {what}: {exc}", Severity.HARD) from exc
    except OSError as exc:
        raise KitError(f"netlink failed to {what}: {exc}", Severity.HARD) from exc
    finally:
        ipr.close()


async def read_view() -> NetView:
    """Every link and IPv4 address of this network namespace."""
    links: dict[str, Link] = {}
    addresses: list[Address] = []
    async with _netlink("list interfaces and addresses") as ipr:
        names: dict[int, str] = {}
        async for msg in await ipr.link("dump"):
            name = str(msg.get("ifname"))
            names[msg["index"]] = name
            links[name] = Link(
                index=int(msg["index"]),
                name=name,
                flags=int(msg["flags"]),
                kind=int(msg["ifi_type"]),
                mac=str(msg.get("address") or "").lower(),
            )
        async for msg in await ipr.addr("dump", family=socket.AF_INET):
            local = msg.get("local") or msg.get("address")
            if local is None or msg["index"] not in names:
                continue
            addresses.append(
                Address(
                    link=names[msg["index"]],
                    index=int(msg["index"]),
                    interface=IPv4Interface(f"{local}/{msg['prefixlen']}"),
                )
            )
    return NetView(links, tuple(addresses))


async def add_address(link: Link, interface: IPv4Interface) -> bool:
    """Add ``interface`` (address/prefix) to ``link``; False when it was there already."""
    async with _netlink(f"add {interface} to {link.name}") as ipr:
        try:
            await ipr.addr(
                "add",
                index=link.index,
                address=str(interface.ip),
                prefixlen=interface.network.prefixlen,
            )
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise
    return True


async def delete_address(address: Address) -> bool:
    """Delete ``address`` from its link; False when it was gone already."""
    async with _netlink(f"delete {address.interface} from {address.link}") as ipr:
        try:
            await ipr.addr(
                "del",
                index=address.index,
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
            )
        except NetlinkError as exc:
            if exc.code in (errno.EADDRNOTAVAIL, errno.ENODEV):
                return False
            raise
    return True


async def gateways(link: Link, network: IPv4Network) -> list[IPv4Address]:
    """Gateways of the main routing table reached through ``link`` inside ``network``
    (typically the default gateway of the address's subnet), in table order."""
    found: list[IPv4Address] = []
    async with _netlink(f"list the routes through {link.name}") as ipr:
        async for msg in await ipr.route("dump", family=socket.AF_INET):
            gateway = msg.get("gateway")
            if gateway is None or msg.get("oif") != link.index:
                continue
            ip = IPv4Address(gateway)
            if ip in network and ip not in found:
                found.append(ip)
    return found


def ignores_linkdown_routes(ifname: str) -> bool:
    """Whether routes through ``ifname`` are ignored while its link is down
    (``net.ipv4.conf.{all,IFNAME}.ignore_routes_with_linkdown``): without that, replies
    keep leaving through a dead primary interface after the address moved to the backup
    interface. Reads ``/proc/sys/net``, which shows the calling thread's namespace."""
    for scope in ("all", ifname):
        path = Path("/proc/sys/net/ipv4/conf") / scope / "ignore_routes_with_linkdown"
        try:
            if path.read_text().strip() not in ("", "0"):
                return True
        except OSError:
            continue
    return False
