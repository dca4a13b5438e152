"""The ip kit's properties: the address, its prefix length, the interface on each server.

``address`` is cluster-wide and unique (two resources cannot protect one address). The
prefix length (or netmask), the interface, the backup interface and local recovery are
**per server**, as in the seed's extend wizard (*Subnet Mask*, *Network Connection*,
*Target Local Recovery*): ``can_extend`` proposes the interface on the target.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from pydantic import Field, field_validator, model_validator

from vigil.kits.base import KitProperties

__all__ = ["IpProperties", "netmask_to_prefix"]

#: a Linux interface name: 1-15 bytes, no '/', ':' or whitespace (the kernel's rule)
_IFNAME = re.compile(r"[^/:\s]{1,15}")
_PER_SERVER: dict[str, Any] = {"per_server": True}


def netmask_to_prefix(netmask: str) -> int:
    """The prefix length of a dotted netmask (``255.255.255.0`` → 24).

    Raises ``ValueError`` for a malformed address or a mask whose one bits are not
    contiguous from the left (``255.0.255.0``, or the host mask ``0.0.0.255``)."""
    try:
        value = int(IPv4Address(netmask.strip()))
    except ValueError:
        raise ValueError(f"{netmask!r} is not a netmask like 255.255.255.0") from None
    host_bits = ~value & 0xFFFFFFFF
    if host_bits & (host_bits + 1):
        raise ValueError(
            f"{netmask!r} is not a netmask: its one bits must be contiguous from the left "
            "(like 255.255.255.0)"
        )
    return 32 - host_bits.bit_length()


def _ifname(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not _IFNAME.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"{value!r} is not a network interface name (1-15 characters, no '/', ':' or "
            "spaces, e.g. eth0)"
        )
    return value


class IpProperties(KitProperties):
    """A switchable IPv4 address: where it lives on each server and how it is checked."""

    address: IPv4Address = Field(
        description="The switchable IPv4 address (unique in the cluster).",
        json_schema_extra={"unique": True},
    )
    prefix: int | None = Field(
        None,
        ge=1,
        le=32,
        description=(
            "Prefix length of the address (e.g. 24); or give netmask. The address's "
            "network must lie inside a subnet already configured on the interface."
        ),
        json_schema_extra=_PER_SERVER,
    )
    netmask: str | None = Field(
        None,
        description="Dotted netmask (e.g. 255.255.255.0), instead of prefix.",
        json_schema_extra=_PER_SERVER,
    )
    interface: str = Field(
        description=(
            "Network interface carrying the address on this server (the seed's Network "
            "Connection); it must have an address in the same subnet. Proposed on extend."
        ),
        json_schema_extra=_PER_SERVER,
    )
    backup_interface: str | None = Field(
        None,
        description=(
            "Interface used when the interface's link is down (restore) or re-adding "
            "there did not help (local recovery); same subnet rule."
        ),
        json_schema_extra=_PER_SERVER,
    )
    ping_list: list[IPv4Address] = Field(
        default_factory=list,
        description=(
            "Addresses the deep check pings from the switchable address; the check fails "
            "when none answers. Empty: the gateway of the interface's subnet, if any."
        ),
    )
    probe_wait: float = Field(
        0.1,
        ge=0.02,
        le=10.0,
        description=(
            "Seconds the duplicate-address check (an ARP probe, as arping -D) listens for "
            "another host answering for the address, before every restore adds it; an "
            "answer aborts the restore. Hosts on a LAN answer within milliseconds; raise "
            "it on a slow or lossy link."
        ),
    )
    local_recovery: bool = Field(
        True,
        description=(
            "Recover a failed address on this server (re-add it, then try the backup "
            "interface) before failing over."
        ),
        json_schema_extra=_PER_SERVER,
    )

    @field_validator("address")
    @classmethod
    def _usable_address(cls, value: IPv4Address) -> IPv4Address:
        if value.is_unspecified or value.is_loopback or value.is_multicast or value.is_reserved:
            raise ValueError(f"{value} cannot be a switchable address (use a unicast address)")
        return value

    @field_validator("interface", "backup_interface")
    @classmethod
    def _interface_name(cls, value: str | None) -> str | None:
        return _ifname(value)

    @field_validator("netmask")
    @classmethod
    def _netmask(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        netmask_to_prefix(value)
        return value.strip()

    @model_validator(mode="after")
    def _resolve_prefix(self) -> IpProperties:
        if self.netmask is not None:
            from_mask = netmask_to_prefix(self.netmask)
            if self.prefix is not None and self.prefix != from_mask:
                raise ValueError(
                    f"prefix {self.prefix} and netmask {self.netmask} (/{from_mask}) "
                    "disagree: give only one of them"
                )
            if from_mask == 0:
                raise ValueError(f"netmask {self.netmask} (/0) covers every address")
            self.prefix = from_mask
        if self.prefix is None:
            raise ValueError("give the prefix length (e.g. prefix=24) or the netmask")
        network = self.network
        if network.prefixlen <= 30 and self.address in (
            network.network_address,
            network.broadcast_address,
        ):
            which = "network" if self.address == network.network_address else "broadcast"
            raise ValueError(f"{self.address} is the {which} address of {network}")
        if self.backup_interface is not None and self.backup_interface == self.interface:
            raise ValueError(
                f"backup_interface {self.backup_interface} is the interface itself: "
                "choose another interface or leave it empty"
            )
        return self

    @property
    def prefixlen(self) -> int:
        """The prefix length, from ``prefix`` or ``netmask`` (validation guarantees one)."""
        assert self.prefix is not None
        return self.prefix

    @property
    def network(self) -> IPv4Network:
        """The network ``address/prefixlen`` belongs to."""
        return self.vip.network

    @property
    def vip(self) -> IPv4Interface:
        """The switchable address with its prefix length, as configured on a link."""
        return IPv4Interface(f"{self.address}/{self.prefixlen}")

    @property
    def interfaces(self) -> tuple[str, ...]:
        """The interface, then the backup interface if there is one."""
        if self.backup_interface is None:
            return (self.interface,)
        return (self.interface, self.backup_interface)

    @property
    def shown(self) -> str:
        """``address/prefix`` for messages."""
        return f"{self.address}/{self.prefixlen}"
