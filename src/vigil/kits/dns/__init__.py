"""The ``dns`` kit: keeps a name's A record (and its PTR record) pointing at the server
where its hierarchy is in service, by TSIG-signed dynamic updates (RFC 2136). See
``vigil.kits.dns.kit`` for what each action does and ``docs/kits/dns.md`` for a guide."""

from vigil.kits.dns.kit import DnsKit
from vigil.kits.dns.properties import DnsProperties

__all__ = ["DnsKit", "DnsProperties"]
