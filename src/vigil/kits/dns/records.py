"""What the dns kit does on one DNS server: point the records here, delete them, look at
them, and check that everything needed is in place.

The A record is replaced in one update (delete the name's A rrset, add the new A record),
so a client never sees the name with two addresses or with none. The PTR records live in
reverse zones, found by asking the server which zone holds each reverse name: the new
address's reverse name gets a PTR to the name; the PTR to the name at each old address
(the A record's previous values) is deleted. PTR records of other names are never touched.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

import dns.name
import dns.rcode
import dns.reversename
import dns.update

from vigil.kits.base import CheckStatus
from vigil.kits.dns.properties import DnsProperties, Endpoint
from vigil.kits.dns.update import DnsClient, DnsFailure, Unreachable
from vigil.kits.process import Logger

__all__ = ["ServerView", "delete_records", "look", "point_here", "problems_on"]


@dataclass(frozen=True)
class ServerView:
    """What one DNS server says about the records, judged against this server's address."""

    server: Endpoint
    status: CheckStatus
    detail: str
    #: False when the server did not answer at all
    reachable: bool = True


async def point_here(client: DnsClient, p: DnsProperties, server: Endpoint, log: Logger) -> None:
    """Make ``server`` answer ``p.address`` for the name (and the PTR). Idempotent.
    Raises ``DnsFailure``."""
    name = p.fqdn
    old = await client.lookup(server, name, "A")
    update = client.update(p.zone_name)
    update.delete(name, "A")
    update.add(name, p.ttl, "A", p.address)
    await client.send(server, update)
    previous = sorted(old.values - {p.address})
    if old.values != {p.address}:
        was = ", ".join(previous) or "nothing"
        log.info("%s now points at %s on DNS server %s (was %s)", name, p.address, server, was)
    if p.update_ptr:
        await _point_ptr(client, p, server, previous, log)


async def _point_ptr(
    client: DnsClient, p: DnsProperties, server: Endpoint, previous: Iterable[str], log: Logger
) -> None:
    name = p.fqdn
    updates: dict[dns.name.Name, dns.update.UpdateMessage] = {}

    async def update_for(owner: dns.name.Name) -> dns.update.UpdateMessage | None:
        zone = await client.zone_of(server, owner)
        if zone is None:
            return None
        return updates.setdefault(zone, client.update(zone))

    for address in previous:
        if not _is_ipv4(address):
            continue
        owner = dns.reversename.from_address(address)
        stale = await update_for(owner)
        if stale is not None:
            stale.delete(owner, "PTR", name.to_text())
    fresh = await update_for(p.reverse_name)
    if fresh is None:
        log.warning(
            "DNS server %s serves no reverse zone for %s (%s): its PTR record is not written",
            server,
            p.address,
            p.reverse_name,
        )
    else:
        fresh.delete(p.reverse_name, "PTR", name.to_text())
        fresh.add(p.reverse_name, p.ttl, "PTR", name.to_text())
    for update in updates.values():
        await client.send(server, update)


async def delete_records(
    client: DnsClient, p: DnsProperties, server: Endpoint, log: Logger
) -> None:
    """Delete the A record if it is exactly this server's address (a record another
    server has pointed elsewhere is left alone), and this address's PTR to the name.
    Idempotent. Raises ``DnsFailure``."""
    name = p.fqdn
    update = client.update(p.zone_name)
    update.present(name, "A", p.address)
    update.delete(name, "A")
    code = await client.send(server, update)
    if code == dns.rcode.NOERROR:
        log.info("%s no longer points at %s on DNS server %s", name, p.address, server)
    if p.update_ptr:
        zone = await client.zone_of(server, p.reverse_name)
        if zone is not None:
            update = client.update(zone)
            update.delete(p.reverse_name, "PTR", name.to_text())
            await client.send(server, update)


async def look(client: DnsClient, p: DnsProperties, server: Endpoint, deep: bool) -> ServerView:
    """What ``server`` answers for the name (and, when ``deep``, the PTR). Read-only."""
    name = p.fqdn
    try:
        answer = await client.lookup(server, name, "A")
        if answer.cname is not None:
            return ServerView(
                server, CheckStatus.STOPPED, f"{name} is an alias of {answer.cname} on {server}"
            )
        if answer.values != {p.address}:
            shown = ", ".join(sorted(answer.values)) or "no address"
            return ServerView(
                server,
                CheckStatus.STOPPED,
                f"{name} points at {shown} on DNS server {server}, not at {p.address}",
            )
        if deep and p.update_ptr and await client.zone_of(server, p.reverse_name) is not None:
            ptr = await client.lookup(server, p.reverse_name, "PTR")
            if name.to_text() not in ptr.values:
                return ServerView(
                    server,
                    CheckStatus.FAILED,
                    f"{name} points at {p.address} on DNS server {server} but the PTR record "
                    f"of {p.address} is missing",
                )
    except DnsFailure as failure:
        reachable = not isinstance(failure, Unreachable)
        return ServerView(server, CheckStatus.FAILED, str(failure), reachable)
    return ServerView(server, CheckStatus.RUNNING, f"{name} points at {p.address} on {server}")


async def problems_on(client: DnsClient, p: DnsProperties, server: Endpoint) -> list[str]:
    """Everything on ``server`` that prevents the resource from working: the zone served,
    the key accepted, updates allowed, the name not an alias, a reverse zone for the address
    when ``update_ptr``. Read-only (the update test changes nothing)."""
    try:
        await client.require_zone(server, p.zone_name)
        await client.may_update(server, p.zone_name)
        answer = await client.lookup(server, p.fqdn, "A")
    except DnsFailure as failure:
        return [_advice(failure)]
    problems = []
    if answer.cname is not None:
        problems.append(
            f"{p.fqdn} is an alias (CNAME) of {answer.cname} on DNS server {server}: protect "
            "the name it points to, or delete the alias"
        )
    if p.update_ptr:
        try:
            reverse_zone = await client.zone_of(server, p.reverse_name)
            if reverse_zone is None:
                problems.append(
                    f"DNS server {server} serves no reverse zone for {p.address} "
                    f"({p.reverse_name}): add one that accepts updates with TSIG key "
                    f"{p.tsig_key}, or set update_ptr to false"
                )
            else:
                await client.may_update(server, reverse_zone)
        except DnsFailure as failure:
            problems.append(_advice(failure))
    return problems


def _advice(failure: DnsFailure) -> str:
    if isinstance(failure, Unreachable):
        return f"{failure}: check that it runs and that servers lists the right address and port"
    return str(failure)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
