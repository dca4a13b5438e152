"""The lab network, built over netlink with pyroute2: namespaces, bridge, veths, addresses.

Every function here is idempotent where it removes things and raises ``LabError`` (naming
the object) where it cannot create them.

pyroute2 0.9 notes:

- ``IPRoute`` is a synchronous wrapper that drives its own asyncio loop; called from a
  thread where a loop already runs it fails ("This event loop is already running"), so
  every entry point here moves itself to a worker thread in that case.
- ``IPRoute(netns=NAME)`` *creates* the namespace when it does not exist (its default is
  ``flags=os.O_CREAT``); this module always passes ``flags=0`` when it only wants to look.
- ``peer={...}`` of a veth takes raw netlink attributes: ``net_ns_fd`` must be an open
  descriptor there, not a namespace name.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from pyroute2 import IPRoute, NetlinkError, netns

from vigil.errors import LabError
from vigil.lab.naming import NETNS_DIR

P = ParamSpec("P")
T = TypeVar("T")


def _outside_event_loop(func: Callable[P, T]) -> Callable[P, T]:
    """Run ``func`` in a worker thread if the calling thread runs an asyncio loop."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return func(*args, **kwargs)
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(func, *args, **kwargs).result()

    return wrapper


@contextlib.contextmanager
def _iproute(netns_name: str | None = None) -> Iterator[Any]:
    try:
        ipr = IPRoute(netns=netns_name, flags=0) if netns_name else IPRoute()
    except OSError as exc:
        where = f"network namespace {netns_name}" if netns_name else "the host"
        raise LabError(f"cannot open a netlink socket in {where}: {exc}") from exc
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _disable_ipv6(ifname: str) -> None:
    """No IPv6 on a lab interface: no router solicitations or MLD leave the lab."""
    path = Path("/proc/sys/net/ipv6/conf") / ifname / "disable_ipv6"
    with contextlib.suppress(FileNotFoundError):
        path.write_text("1\n")


# -- inspection ---------------------------------------------------------------------------
def list_netns() -> list[str]:
    """Names of the named network namespaces (files in ``/run/netns``)."""
    return sorted(netns.listnetns(str(NETNS_DIR)))


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


@_outside_event_loop
def link_names() -> list[str]:
    """Names of the host's network interfaces."""
    with _iproute() as ipr:
        return [str(link.get("ifname")) for link in ipr.link("dump")]


@_outside_event_loop
def subnet_conflicts(subnet: ipaddress.IPv4Network) -> list[str]:
    """Addresses and routes of the host that overlap ``subnet`` (empty when it is free).

    Default routes (prefix length 0) overlap everything and are not counted.
    """
    conflicts = []
    with _iproute() as ipr:
        names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
        for msg in ipr.addr("dump", family=2):
            net = ipaddress.IPv4Network(f"{msg.get('address')}/{msg['prefixlen']}", strict=False)
            if net.overlaps(subnet):
                ifname = names.get(msg["index"], msg["index"])
                conflicts.append(f"address {msg.get('address')}/{msg['prefixlen']} on {ifname}")
        for msg in ipr.route("dump", family=2):
            if msg["dst_len"] == 0 or msg.get("dst") is None:
                continue
            net = ipaddress.IPv4Network(f"{msg.get('dst')}/{msg['dst_len']}", strict=False)
            if net.overlaps(subnet):
                conflicts.append(f"route {net} (table {msg.get('table')})")
    return conflicts


# -- creation -----------------------------------------------------------------------------
def create_netns(name: str) -> None:
    """Create the named network namespace ``name``; ``LabError`` if it exists or fails."""
    if netns_exists(name):
        raise LabError(f"network namespace {name} exists already")
    try:
        netns.create(name)
    except Exception as exc:  # pyroute2 runs this in a child process, errors vary
        raise LabError(f"cannot create network namespace {name}: {exc}") from exc


@_outside_event_loop
def create_bridge(name: str, address: str, prefixlen: int, alias: str) -> None:
    """Create bridge ``name`` with the host's lab address; no IPv6, no STP delay."""
    try:
        with _iproute() as ipr:
            ipr.link("add", ifname=name, kind="bridge", br_forward_delay=0)
            index = _index(ipr, name)
            _disable_ipv6(name)
            ipr.link("set", index=index, ifalias=alias)
            ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
            ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        raise LabError(f"cannot create bridge {name} ({address}/{prefixlen}): {exc}") from exc


@_outside_event_loop
def connect_server(
    *, bridge: str, host_veth: str, netns_name: str, address: str, prefixlen: int
) -> None:
    """Plug a server into the bridge: a veth whose peer is ``eth0`` in ``netns_name``.

    Inside the namespace: loopback up, ``eth0`` up with ``address/prefixlen``, and no
    default route, so nothing sent there can leave the lab subnet.
    """
    try:
        ns_fd = os.open(NETNS_DIR / netns_name, os.O_RDONLY)
        try:
            with _iproute() as ipr:
                ipr.link(
                    "add",
                    ifname=host_veth,
                    kind="veth",
                    peer={"ifname": "eth0", "net_ns_fd": ns_fd},
                )
                index = _index(ipr, host_veth)
                _disable_ipv6(host_veth)
                ipr.link("set", index=index, master=_index(ipr, bridge), state="up")
        finally:
            os.close(ns_fd)
        with _iproute(netns_name) as ipr:
            ipr.link("set", index=_index(ipr, "lo"), state="up")
            eth0 = _index(ipr, "eth0")
            ipr.addr("add", index=eth0, address=address, prefixlen=prefixlen)
            ipr.link("set", index=eth0, state="up")
    except (NetlinkError, OSError) as exc:
        raise LabError(
            f"cannot connect network namespace {netns_name} to bridge {bridge} "
            f"through {host_veth} with address {address}: {exc}"
        ) from exc


# -- removal ------------------------------------------------------------------------------
@_outside_event_loop
def delete_links(bridge: str, is_lab_link: Callable[[str], bool]) -> list[str]:
    """Delete the bridge, every link enslaved to it and every link ``is_lab_link`` accepts.

    Deleting a host-side veth deletes its peer inside the server too. Returns one message
    per link that could not be deleted; links already gone are not an error.
    """
    problems = []
    with _iproute() as ipr:
        bridge_index = _index(ipr, bridge)
        doomed = []
        for link in ipr.link("dump"):
            ifname = str(link.get("ifname"))
            enslaved = bridge_index is not None and link.get("master") == bridge_index
            if enslaved or is_lab_link(ifname):
                doomed.append((link["index"], ifname))
        if bridge_index is not None:
            doomed.append((bridge_index, bridge))
        for index, ifname in doomed:
            try:
                ipr.link("del", index=index)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    problems.append(f"interface {ifname}: {exc}")
    return problems


def remove_netns(name: str) -> str | None:
    """Remove the named network namespace; a message if it failed, ``None`` otherwise."""
    path = NETNS_DIR / name
    if not path.exists():
        return None
    try:
        netns.remove(name)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"network namespace {name}: {exc}"
    return f"network namespace {name}: still present" if path.exists() else None
