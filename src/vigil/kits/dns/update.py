"""Talking to one DNS server: TSIG-signed queries and RFC 2136 dynamic updates over TCP.

Every message is signed with the resource's TSIG key (queries too, so a check also finds a
key the server no longer accepts). dnspython's errors are translated here into two
``DnsFailure`` kinds, with messages for an administrator:

* ``Unreachable``: the server did not answer in time, refused the connection or closed it
  (transient: a later try may work);
* ``Rejected``: the server answered no (a TSIG key it does not accept, a zone it does not
  serve, updates it does not allow): a misconfiguration an operator must fix.

The TSIG key (``dns.tsig.Key``) shows its secret in its ``repr``: it is never put in a
message, a log line or an exception here.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update

from vigil.kits.dns.properties import DnsProperties, Endpoint

__all__ = ["DnsClient", "DnsFailure", "Rejected", "Unreachable"]


#: what the DNS protocol calls the TSIG errors dnspython raises
_TSIG_ERRORS = {"PeerBadKey": "BADKEY", "PeerBadSignature": "BADSIG"}


class DnsFailure(Exception):
    """A DNS server did not do what was asked; the message says which and why."""


class Unreachable(DnsFailure):
    """The server did not answer (timeout, connection refused or closed)."""


class Rejected(DnsFailure):
    """The server answered with a refusal: a configuration problem."""


@dataclass(frozen=True)
class Answer:
    """The records of one type found at one name on one server."""

    #: the record data as text (addresses for A, names for PTR), empty when there is none
    values: frozenset[str]
    #: the target when the name is an alias (CNAME) instead
    cname: str | None = None


class DnsClient:
    """Queries and updates for one dns resource (its key, timeout and zone)."""

    def __init__(self, properties: DnsProperties) -> None:
        self._properties = properties

    def __repr__(self) -> str:
        return f"DnsClient(zone={self._properties.zone!r}, key={self._properties.tsig_key!r})"

    @property
    def key_name(self) -> str:
        return self._properties.tsig_key

    # --- queries ---------------------------------------------------------------------------

    async def lookup(self, server: Endpoint, name: dns.name.Name, rdtype: str) -> Answer:
        """The ``rdtype`` records at ``name`` as ``server`` answers them (authoritatively)."""
        reply = await self._query(server, name, rdtype)
        code = reply.rcode()
        if code not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise Rejected(
                f"DNS server {server} answers {dns.rcode.to_text(code)} for {name}: check "
                "that it serves the zone"
            )
        if not reply.flags & dns.flags.AA:
            raise Rejected(f"DNS server {server} is not authoritative for {name}")
        wanted = dns.rdatatype.from_text(rdtype)
        values: set[str] = set()
        cname = None
        for rrset in reply.answer:
            if rrset.name != name:
                continue
            if rrset.rdtype == wanted:
                values.update(rdata.to_text() for rdata in rrset)
            elif rrset.rdtype == dns.rdatatype.CNAME:
                cname = next(iter(rrset)).to_text()
        return Answer(frozenset(values), cname)

    async def zone_of(self, server: Endpoint, name: dns.name.Name) -> dns.name.Name | None:
        """The zone ``server`` serves that holds ``name``, or None when it serves none."""
        reply = await self._query(server, name, "SOA")
        if reply.rcode() == dns.rcode.REFUSED or not reply.flags & dns.flags.AA:
            return None
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            code = dns.rcode.to_text(reply.rcode())
            raise Rejected(f"DNS server {server} answers {code} for the zone of {name}")
        for rrset in (*reply.answer, *reply.authority):
            if rrset.rdtype == dns.rdatatype.SOA and name.is_subdomain(rrset.name):
                return rrset.name
        return None

    async def require_zone(self, server: Endpoint, zone: dns.name.Name) -> None:
        """Raises ``Rejected`` unless ``server`` serves ``zone`` itself (not a parent)."""
        found = await self.zone_of(server, zone)
        if found != zone:
            also = f" (it serves {found})" if found is not None else ""
            raise Rejected(f"DNS server {server} does not serve zone {zone}{also}")

    # --- updates ---------------------------------------------------------------------------

    def update(self, zone: dns.name.Name) -> dns.update.UpdateMessage:
        """An empty update of ``zone``, signed with the resource's key."""
        message = dns.update.UpdateMessage(zone)
        message.use_tsig(self._properties.tsig())
        return message

    async def send(self, server: Endpoint, update: dns.update.UpdateMessage) -> dns.rcode.Rcode:
        """Send ``update``; returns its rcode when the server applied it or a prerequisite
        failed (NOERROR, NXDOMAIN, YXDOMAIN, NXRRSET, YXRRSET), raises ``Rejected`` for a
        refusal and ``Unreachable`` when there is no answer."""
        reply = await self._exchange(server, update)
        code = reply.rcode()
        prerequisite = (
            dns.rcode.NXDOMAIN,
            dns.rcode.YXDOMAIN,
            dns.rcode.NXRRSET,
            dns.rcode.YXRRSET,
        )
        if code == dns.rcode.NOERROR or code in prerequisite:
            return code
        zone = update.zone[0].name if update.zone else "?"
        if code == dns.rcode.REFUSED:
            raise Rejected(
                f"DNS server {server} refuses updates of zone {zone} with TSIG key "
                f"{self.key_name}: allow them (allow-update or update-policy for the key)"
            )
        if code in (dns.rcode.NOTAUTH, dns.rcode.NOTZONE):
            raise Rejected(
                f"DNS server {server} is not the primary of zone {zone} "
                f"({dns.rcode.to_text(code)}): list the zone's primary server first"
            )
        raise Rejected(
            f"DNS server {server} did not apply an update of zone {zone}: {dns.rcode.to_text(code)}"
        )

    async def may_update(self, server: Endpoint, zone: dns.name.Name) -> None:
        """Whether ``server`` accepts updates of ``zone`` with the key, without changing
        anything: an update whose only prerequisite ("the zone has no SOA") always fails.
        Raises ``Rejected`` or ``Unreachable``."""
        probe = self.update(zone)
        probe.absent(zone, "SOA")
        code = await self.send(server, probe)
        if code != dns.rcode.YXRRSET:
            raise Rejected(
                f"DNS server {server} answered {dns.rcode.to_text(code)} to a test update of "
                f"zone {zone} (expected YXRRSET)"
            )

    # --- the wire ----------------------------------------------------------------------------

    async def _query(
        self, server: Endpoint, name: dns.name.Name, rdtype: str
    ) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~dns.flags.RD
        query.use_tsig(self._properties.tsig())
        return await self._exchange(server, query)

    async def _exchange(
        self, server: Endpoint, message: dns.message.Message
    ) -> dns.message.Message:
        seconds = self._properties.request_timeout
        try:
            return await dns.asyncquery.tcp(message, server.host, timeout=seconds, port=server.port)
        except dns.tsig.PeerBadTime:
            raise Rejected(
                f"DNS server {server} rejects TSIG key {self.key_name}: the clocks differ "
                "too much (BADTIME); synchronise the clocks"
            ) from None
        except (dns.tsig.PeerError, dns.tsig.BadSignature, dns.tsig.BadKey) as exc:
            what = _TSIG_ERRORS.get(type(exc).__name__, type(exc).__name__)
            raise Rejected(
                f"TSIG key {self.key_name} rejected by {server} ({what}): check the key name, "
                "algorithm and secret"
            ) from None
        except dns.exception.Timeout:
            raise Unreachable(f"DNS server {server} did not answer within {seconds:g}s") from None
        except (OSError, EOFError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise Unreachable(
                f"DNS server {server} cannot be reached: {reason or type(exc).__name__}"
            ) from None
        except dns.exception.DNSException as exc:
            raise Unreachable(f"DNS server {server} sent a bad answer: {exc}") from None
