"""The dns kit's properties: which name, in which zone, on which DNS servers, signed with
which TSIG key, and the address the name must point to on each server.

The TSIG secret is a ``SecretStr`` marked ``{"secret": True}`` in its JSON schema: it never
shows in ``repr``, in ``model_dump(mode="json")`` or in validation errors (inputs are hidden
from every error of this model), and the API must not return it in its views.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.name
import dns.reversename
import dns.tsig
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from vigil.kits.base import KitProperties

__all__ = ["ALGORITHMS", "DnsProperties", "Endpoint", "parse_endpoint"]

#: TSIG algorithms by the names BIND's key files use
ALGORITHMS: dict[str, dns.name.Name] = {
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-md5": dns.tsig.HMAC_MD5,
}
Algorithm = Literal[
    "hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5"
]

DNS_PORT = 53


@dataclass(frozen=True)
class Endpoint:
    """One DNS server: an IP address and a port."""

    host: str
    port: int = DNS_PORT

    def __str__(self) -> str:
        if self.port == DNS_PORT:
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """``10.0.0.53``, ``10.0.0.53:5353``, ``2001:db8::53`` or ``[2001:db8::53]:5353``.

    Raises ``ValueError`` saying what is wrong."""
    text = text.strip()
    host, port = text, str(DNS_PORT)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: write an IPv6 server with a port as [address]:port")
        port = rest[1:] if rest else port
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address (DNS servers are given by address, optionally "
            "with :port)"
        ) from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return Endpoint(str(address), int(port))


def _domain(value: str, what: str) -> dns.name.Name:
    try:
        name = dns.name.from_text(value.strip())
    except dns.exception.DNSException as exc:
        raise ValueError(f"{value!r} is not a valid {what}: {exc}") from None
    if name == dns.name.root:
        raise ValueError(f"{what} must not be the root zone")
    return name


class DnsProperties(KitProperties):
    """What the dns kit needs to keep one name pointing at the server where its hierarchy
    is in service: an A record (and its PTR record) kept up to date by RFC 2136 dynamic
    updates signed with a TSIG key."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    zone: str = Field(
        min_length=1,
        description="The forward zone that holds the name, e.g. 'example.com'.",
    )
    name: str = Field(
        min_length=1,
        description=(
            "The protected name: the primary server's name or an alias, relative to the zone "
            "('mail') or absolute ('mail.example.com.'); '@' is the zone itself."
        ),
    )
    servers: list[str] = Field(
        min_length=1,
        description=(
            "DNS servers to update and check, primary first: IP addresses, optionally with "
            "a port ('10.0.0.53', '10.0.0.53:5353', '[2001:db8::53]:53')."
        ),
    )
    tsig_key: str = Field(
        min_length=1, description="Name of the TSIG key the DNS servers accept updates with."
    )
    tsig_algorithm: Algorithm = Field("hmac-sha256", description="The TSIG key's algorithm.")
    tsig_secret: SecretStr = Field(
        description=(
            "The TSIG key's secret, base64 (the 'secret' of a BIND key file). Never shown "
            "or logged."
        ),
        json_schema_extra={"secret": True},
    )
    address: str = Field(
        description=(
            "The IPv4 address the name points to while the hierarchy is in service on this "
            "server (default on extend: the server's first address)."
        ),
        json_schema_extra={"per_server": True},
    )
    ttl: int = Field(30, ge=0, le=86400, description="TTL (seconds) of the records written.")
    update_ptr: bool = Field(
        True,
        description=(
            "Also keep the PTR record in step: the new address's reverse name points to the "
            "name, the old address's PTR to the name is deleted."
        ),
    )
    remove_records: bool = Field(
        False,
        description=(
            "On remove, delete the records if they still point here. Default: leave them, "
            "as the original product does; the next restore rewrites them."
        ),
    )
    request_timeout: float = Field(
        5.0, gt=0, le=300, description="Seconds to wait for one DNS server to answer."
    )

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _domain(value, "zone name").to_text()

    @field_validator("tsig_key")
    @classmethod
    def _key(cls, value: str) -> str:
        return _domain(value, "TSIG key name").to_text(omit_final_dot=True)

    @field_validator("servers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        endpoints = [parse_endpoint(text) for text in value]
        if len(set(endpoints)) != len(endpoints):
            raise ValueError("a DNS server is listed twice")
        return [str(endpoint) for endpoint in endpoints]

    @field_validator("tsig_secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        # the messages never quote the value
        try:
            decoded = base64.b64decode(value.get_secret_value().strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                "must be base64, as the 'secret' line of a BIND key file (tsig-keygen)"
            ) from None
        if not decoded:
            raise ValueError("must not be empty")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            return str(ipaddress.IPv4Address(value.strip()))
        except ValueError:
            raise ValueError(f"must be an IPv4 address (of an A record), not {value!r}") from None

    @model_validator(mode="after")
    def _name_in_zone(self) -> DnsProperties:
        name = self.fqdn
        if not name.is_subdomain(self.zone_name):
            raise ValueError(f"name {name} is not inside zone {self.zone}")
        return self

    # --- derived values --------------------------------------------------------------------

    @property
    def zone_name(self) -> dns.name.Name:
        return dns.name.from_text(self.zone)

    @property
    def fqdn(self) -> dns.name.Name:
        """The protected name, absolute. A name without a final dot is relative to the
        zone unless it already ends with the zone's name."""
        text = self.name.strip()
        zone = self.zone_name
        if text == "@":
            return zone
        absolute = _domain(text if text.endswith(".") else text + ".", "name")
        if text.endswith(".") or absolute.is_subdomain(zone):
            return absolute
        try:
            return dns.name.from_text(text, origin=zone)
        except dns.exception.DNSException as exc:
            raise ValueError(f"{text!r} is not a valid name in zone {zone}: {exc}") from None

    @property
    def reverse_name(self) -> dns.name.Name:
        """The PTR owner name of ``address``."""
        return dns.reversename.from_address(self.address)

    def endpoints(self) -> list[Endpoint]:
        return [parse_endpoint(text) for text in self.servers]

    def tsig(self) -> dns.tsig.Key:
        """The TSIG key. Its ``repr`` shows the secret: never log it."""
        secret = base64.b64decode(self.tsig_secret.get_secret_value().strip())
        return dns.tsig.Key(self.tsig_key, secret, ALGORITHMS[self.tsig_algorithm])
