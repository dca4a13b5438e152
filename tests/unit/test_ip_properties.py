"""The ip kit's properties: parsing, netmask to prefix, and what is unique or per server."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest

from vigil.errors import KitError, Severity
from vigil.kits.ip import IpKit, IpProperties, netmask_to_prefix

KIT = IpKit()


def parse(**values: Any) -> IpProperties:
    base: dict[str, Any] = {"address": "10.0.0.7", "interface": "eth0"}
    parsed = KIT.parse_properties({**base, **values})
    assert isinstance(parsed, IpProperties)
    return parsed


def refused(**values: Any) -> str:
    base: dict[str, Any] = {"address": "10.0.0.7", "interface": "eth0"}
    with pytest.raises(KitError) as caught:
        KIT.parse_properties({**base, **values})
    assert caught.value.severity is Severity.FATAL
    return str(caught.value)


@pytest.mark.parametrize(
    ("netmask", "prefix"),
    [
        ("255.255.255.0", 24),
        ("255.255.0.0", 16),
        ("255.255.255.255", 32),
        ("255.255.255.252", 30),
        ("255.255.240.0", 20),
        ("128.0.0.0", 1),
        ("0.0.0.0", 0),
        (" 255.255.255.128 ", 25),
    ],
)
def test_netmask_to_prefix(netmask: str, prefix: int) -> None:
    assert netmask_to_prefix(netmask) == prefix


@pytest.mark.parametrize("netmask", ["255.0.255.0", "0.0.0.255", "255.255.255.1", "24", "x"])
def test_bad_netmasks_are_refused(netmask: str) -> None:
    with pytest.raises(ValueError, match="netmask"):
        netmask_to_prefix(netmask)


def test_prefix_or_netmask() -> None:
    assert parse(prefix=24).prefixlen == 24
    converted = parse(netmask="255.255.255.0")
    assert converted.prefixlen == 24
    assert str(converted.network) == "10.0.0.0/24"
    assert converted.shown == "10.0.0.7/24"
    assert parse(prefix=24, netmask="255.255.255.0").prefixlen == 24
    assert "prefix length" in refused()
    assert "disagree" in refused(prefix=16, netmask="255.255.255.0")
    assert "not a netmask" in refused(netmask="255.0.255.0")
    assert "covers every address" in refused(netmask="0.0.0.0")
    assert "prefix" in refused(prefix=33)
    assert "prefix" in refused(prefix=0)


def test_address_must_be_a_usable_unicast_address() -> None:
    assert parse(prefix=24).address == IPv4Address("10.0.0.7")
    assert "address" in refused(address="10.0.0.300", prefix=24)
    assert "address" in refused(address="fe80::1", prefix=64)
    for bad in ("0.0.0.0", "127.0.0.5", "224.0.0.1", "240.0.0.1"):
        assert "cannot be a switchable address" in refused(address=bad, prefix=24)
    assert "network address of 10.0.0.0/24" in refused(address="10.0.0.0", prefix=24)
    assert "broadcast address of 10.0.0.0/24" in refused(address="10.0.0.255", prefix=24)
    # /31 and /32 have no network or broadcast address to avoid
    assert parse(address="10.0.0.1", prefix=31).prefixlen == 31
    assert parse(address="10.0.0.0", prefix=32).prefixlen == 32


def test_interfaces() -> None:
    assert parse(prefix=24).interfaces == ("eth0",)
    assert parse(prefix=24, backup_interface="eth1").interfaces == ("eth0", "eth1")
    assert parse(prefix=24, interface=" eth0 ").interface == "eth0"
    assert "interface" in refused(prefix=24, interface="")
    assert "not a network interface name" in refused(prefix=24, interface="eth0:1")
    assert "not a network interface name" in refused(prefix=24, interface="a" * 16)
    assert "not a network interface name" in refused(prefix=24, interface="my eth")
    assert "is the interface itself" in refused(prefix=24, backup_interface="eth0")
    assert "interface" in refused(prefix=24, interface=None)


def test_ping_list_and_local_recovery() -> None:
    p = parse(prefix=24, ping_list=["10.0.0.1", "10.0.0.2"], local_recovery=False)
    assert p.ping_list == [IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")]
    assert p.local_recovery is False
    assert parse(prefix=24).local_recovery is True
    assert parse(prefix=24).ping_list == []
    assert "ping_list" in refused(prefix=24, ping_list=["gateway"])


def test_unknown_property_is_refused() -> None:
    assert "mask" in refused(prefix=24, mask=24)


def test_unique_and_per_server_declarations() -> None:
    assert IpProperties.unique_fields() == {"address"}
    assert IpProperties.per_server_fields() == {
        "prefix",
        "netmask",
        "interface",
        "backup_interface",
        "local_recovery",
    }
    described = IpKit.describe()
    assert described["unique"] == ["address"]
    assert "interface" in described["per_server"]
    assert described["properties_schema"]["properties"]["address"]["format"] == "ipv4"
