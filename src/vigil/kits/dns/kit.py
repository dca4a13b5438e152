"""The dns kit: keeps a name's A record (and its PTR record) pointing at the server where
its hierarchy is in service, by RFC 2136 dynamic updates signed with TSIG.

This is the seed product's DNS resource: it protects the A record of the primary server's
name or of an alias, for clients that reach a service by name where a switchable address
cannot follow it (servers in different subnets). Each server has its own ``address``
(proposed on extend: the server's first address).

======================  ==================================================================
action                  what it does
======================  ==================================================================
validate_create,        on every DNS server: the zone is served, the TSIG key accepted,
can_extend              updates allowed (a test update that changes nothing), the name is
                        not an alias, and a reverse zone exists for the address when
                        ``update_ptr``
restore                 on every DNS server, primary first: one update replaces the name's
                        A records by this server's address; the PTR of the new address is
                        written and the old address's PTR to the name deleted. Idempotent
remove                  leaves the records (the next restore rewrites them), as the original
                        product does; with ``remove_records``, deletes them if they still
                        point here. Never raises: stale records are no split brain
quick_check             asks each DNS server: running when all answer this server's address,
                        stopped when one points elsewhere or has no record, failed when
                        none answers (running with a warning when only some do not answer)
deep_check              the quick check, and the PTR record of the address
recover                 restore, then the quick check
delete                  nothing: the records are left, as on remove
======================  ==================================================================

Severities: a DNS server that refuses (a TSIG key it rejects, a zone it does not serve,
updates it does not allow) is a misconfiguration, FATAL; a restore that reached no DNS
server is HARD. The TSIG secret never appears in a log line or a message.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import ClassVar

from vigil.errors import KitError, Severity
from vigil.kits.base import (
    Action,
    Check,
    CheckIntervals,
    CheckStatus,
    ExtendCheck,
    Kit,
    KitContext,
    Timeouts,
)
from vigil.kits.dns.properties import DnsProperties
from vigil.kits.dns.records import ServerView, delete_records, look, point_here, problems_on
from vigil.kits.dns.update import DnsClient, DnsFailure, Rejected

__all__ = ["DnsKit"]

#: DNS requests per DNS server an action may make (at most), for its timeout
_REQUESTS = {
    Action.RESTORE: 8,
    Action.REMOVE: 4,
    Action.RECOVER: 9,
    Action.VALIDATE_CREATE: 6,
    Action.CAN_EXTEND: 6,
}
#: checks ask all DNS servers at once: requests in a row
_CHECK_REQUESTS = {Action.QUICK_CHECK: 1, Action.DEEP_CHECK: 3}
_MARGIN = 2.0


class DnsKit(Kit[DnsProperties]):
    """DNS records: a name's A (and PTR) record follows the hierarchy."""

    name: ClassVar[str] = "dns"
    description: ClassVar[str] = (
        "DNS records: keeps a name's A record (and PTR) pointing at the server where the "
        "hierarchy is in service, by TSIG-signed dynamic update (RFC 2136)"
    )
    Properties = DnsProperties
    timeouts: ClassVar[Timeouts] = Timeouts(
        restore=60.0, remove=30.0, quick_check=15.0, deep_check=30.0, recover=90.0, validate=60.0
    )
    check_intervals: ClassVar[CheckIntervals] = CheckIntervals(quick=10.0, deep=60.0)

    def timeout(self, action: Action, properties: DnsProperties) -> float:
        """Enough for every DNS request the action may make, each bounded by the
        resource's ``request_timeout``."""
        per_request = properties.request_timeout
        if action in _CHECK_REQUESTS:
            return _CHECK_REQUESTS[action] * per_request + _MARGIN
        if action in _REQUESTS:
            return len(properties.servers) * _REQUESTS[action] * per_request + _MARGIN
        return super().timeout(action, properties)

    # --- configuration actions ----------------------------------------------------------

    async def validate_create(self, ctx: KitContext[DnsProperties]) -> list[str]:
        """Every problem on every DNS server (see the module's table). Changes nothing."""
        return await _problems(ctx.properties)

    async def can_extend(self, ctx: KitContext[DnsProperties]) -> ExtendCheck:
        """The same checks for the target's address. Proposes the target's first IPv4
        address when the address given is not one of the target's (it was copied from
        the server the hierarchy is extended from)."""
        p = ctx.properties
        proposed: dict[str, str] = {}
        own = [a for a in ctx.addresses if _is_ipv4(a)]
        if own and p.address not in own:
            proposed["address"] = own[0]
            p = p.model_copy(update={"address": own[0]})
        return ExtendCheck(problems=await _problems(p), proposed=proposed)

    # --- service actions ----------------------------------------------------------------

    async def restore(self, ctx: KitContext[DnsProperties]) -> None:
        """Point the records at this server's address on every DNS server, primary first.
        Raises ``KitError``: FATAL when a server refuses, HARD when none was updated; DNS
        servers that did not answer while another was updated are logged as warnings."""
        p = ctx.properties
        client = DnsClient(p)
        failures: list[DnsFailure] = []
        for server in p.endpoints():
            try:
                await point_here(client, p, server, ctx.log)
            except DnsFailure as failure:
                ctx.log.warning("%s: %s", ctx.tag, failure)
                failures.append(failure)
        where = f"dns resource {ctx.tag} on {ctx.server}"
        rejected = [str(f) for f in failures if isinstance(f, Rejected)]
        if rejected:
            raise KitError(f"{where}: {'; '.join(rejected)}", Severity.FATAL)
        if len(failures) == len(p.servers):
            reasons = "; ".join(str(f) for f in failures)
            raise KitError(f"{where}: no DNS server could be updated: {reasons}", Severity.HARD)

    async def remove(self, ctx: KitContext[DnsProperties]) -> None:
        """Leave the records (default), or delete them where they still point here
        (``remove_records``). Never raises: a problem is logged as a warning."""
        p = ctx.properties
        if not p.remove_records:
            ctx.log.info(
                "%s: out of service here; %s keeps pointing at %s until the next restore",
                ctx.tag,
                p.fqdn,
                p.address,
            )
            return
        client = DnsClient(p)
        for server in p.endpoints():
            try:
                await delete_records(client, p, server, ctx.log)
            except DnsFailure as failure:
                ctx.log.warning("%s: records not deleted: %s", ctx.tag, failure)

    async def quick_check(self, ctx: KitContext[DnsProperties]) -> Check:
        """Does every DNS server answer this server's address for the name? Read-only."""
        return await _check(ctx.properties, deep=False)

    async def deep_check(self, ctx: KitContext[DnsProperties]) -> Check:
        """The quick check, and the PTR record of the address. Read-only."""
        return await _check(ctx.properties, deep=True)

    async def recover(self, ctx: KitContext[DnsProperties]) -> bool:
        """Restore again, then the quick check; True when the records point here. Only a
        FATAL error is raised."""
        return await self.recover_by(ctx, self.restore)


async def _problems(p: DnsProperties) -> list[str]:
    client = DnsClient(p)
    found = await asyncio.gather(*(problems_on(client, p, s) for s in p.endpoints()))
    return [problem for problems in found for problem in problems]


async def _check(p: DnsProperties, *, deep: bool) -> Check:
    client = DnsClient(p)
    views = await asyncio.gather(*(look(client, p, s, deep) for s in p.endpoints()))
    return combine(list(views))


def combine(views: list[ServerView]) -> Check:
    """One answer from every DNS server's: stopped if one points elsewhere; failed if one
    answers wrongly or none answers; running (with a warning when some did not answer)."""
    by_status: dict[CheckStatus, list[ServerView]] = {s: [] for s in CheckStatus}
    for view in views:
        by_status[view.status].append(view)
    stopped, failed = by_status[CheckStatus.STOPPED], by_status[CheckStatus.FAILED]
    if stopped:
        return Check.stopped("; ".join(v.detail for v in stopped))
    answered_wrong = [v for v in failed if v.reachable]
    if answered_wrong or len(failed) == len(views):
        return Check.failed("; ".join(v.detail for v in answered_wrong or failed))
    running = "; ".join(v.detail for v in by_status[CheckStatus.RUNNING])
    return Check.running(running, warning="; ".join(v.detail for v in failed))


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
