"""Clients of a lab: hosts outside the cluster, on the lab's bridge.

A client ``clientK`` is a network namespace ``vigil-NAME-clientK`` (no mount namespace,
no agent) with ``eth0`` on the lab bridge (host side ``vc-NAME-K``), address
``10.213.I.(199+K)/24``, loopback, no IPv6 and no default route. It is where a test
stands to see the cluster as its users do: reach a switchable address, read its own ARP
cache. ``Lab.down`` removes clients by these names (``netns_names``), after a crash too.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from vigil.errors import LabError
from vigil.lab import namespaces, network
from vigil.lab.naming import NETNS_DIR, LabNames, client_number

_NO_IPV6 = (
    "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6 && "
    "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6"
)


@dataclass(frozen=True)
class ClientInfo:
    """One lab client: its name, address and network namespace."""

    name: str
    address: str
    netns: str
    netns_path: Path


def info(names: LabNames, client: str) -> ClientInfo:
    """The names and address of ``client`` (whether it exists or not)."""
    netns = names.client_netns(client)
    return ClientInfo(client, names.client_address(client), netns, NETNS_DIR / netns)


def netns_names(names: LabNames) -> list[str]:
    """The network namespaces of the lab's clients (by their names)."""
    return [n for n in network.list_netns() if names.is_client_netns(n)]


def add(names: LabNames, client: str) -> ClientInfo:
    """Create ``client`` on the lab's bridge; ``LabError`` if the lab is not up or the
    client exists. A half-made client is removed again."""
    client_number(client)
    if names.bridge not in network.link_names():
        raise LabError(f"lab {names.name} is not up (no bridge {names.bridge}): no client added")
    made = info(names, client)
    network.create_netns(made.netns)
    try:
        done = subprocess.run(
            ["nsenter", f"--net={made.netns_path}", "--", "sh", "-c", _NO_IPV6],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if done.returncode != 0:
            raise LabError(f"cannot turn IPv6 off in {made.netns}: {done.stderr.strip()}")
        network.connect_server(
            bridge=names.bridge,
            host_veth=names.client_veth(client),
            netns_name=made.netns,
            address=made.address,
            prefixlen=names.subnet.prefixlen,
        )
    except BaseException:
        network.remove_netns(made.netns)  # its eth0 goes with it, and so does the veth
        raise
    return made


def enter_argv(names: LabNames, client: str, argv: list[str]) -> list[str]:
    """``nsenter --net=... -- argv`` for ``client``; ``LabError`` if it does not exist."""
    made = info(names, client)
    if namespaces.ns_key_of_kind(made.netns_path, "net") is None:
        raise LabError(f"lab {names.name} has no client {client} (no {made.netns_path})")
    return ["nsenter", f"--net={made.netns_path}", "--", *argv]
