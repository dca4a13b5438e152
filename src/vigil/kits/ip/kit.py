"""The ip kit: a switchable IPv4 address that moves with its hierarchy.

What each action does on the server it runs on (the agent runs inside that server's
network namespace, and so does everything below):

=============  =========================================================================
action         behaviour
=============  =========================================================================
validate       the address is not configured here yet; the interface (and the backup
               interface) exists, is up, and has an address in a subnet that contains
               the switchable address (the seed's same-subnet rule); nobody on the
               network answers for the address (ARP probe)
can_extend     the same checks on the target, without the ARP probe (the address is in
               service on the primary); proposes the interface that has the address's
               subnet there (the seed's Network Connection), drops a backup interface
               the target does not have
extend         repeats the checks with the final per-server properties (an
               administrator's override skips the proposal): FATAL if they fail
restore        picks the interface (the backup interface if the interface cannot carry
               the address now), probes for another owner for ``probe_wait`` s
               (KitError HARD if one answers), adds the address over netlink
               (already there: fine),
               announces it by gratuitous ARP at once and again ``ANNOUNCE_AGAIN`` s
               later in the background
remove         deletes the address from every interface it is on (and the one the last
               restore noted in the state directory, should ``address`` have been edited
               since); idempotent; cancels a pending announcement; raises HARD only
               after trying every deletion
quick_check    address on the interface or backup interface with the link up: RUNNING;
               absent: STOPPED; on a link that is down or on another interface: FAILED
deep_check     the quick check, then pings the ping list (or the subnet's gateway, when
               the list is empty and there is one) from the address: FAILED when none
               answers, RUNNING with a warning naming those that do not
recover        if ``local_recovery``: re-add and re-announce on the interface, else move
               to the backup interface; False (fail over) when neither works
delete         nothing was created on the server: cancels a pending announcement
escalate       after a remove that overran (or failed where the agent must let go):
               cancels the announcement without waiting for it, deletes the address
               from every interface it is on; HARD if it is still configured
fence_actions  the address on the interface and on the backup interface, for the fence
               guard to delete if the agent stops renewing its lease
=============  =========================================================================

Netlink and ARP both run on the event loop without blocking it (``netlink``, ``arp``);
only ``deep_check`` starts processes (``ping``), through ``kits.process.run_command``.
"""

from __future__ import annotations

import asyncio
import contextlib
from ipaddress import IPv4Address
from typing import ClassVar

from vigil.errors import KitError, KitTimeout, Severity
from vigil.kits.base import (
    Check,
    CheckIntervals,
    CheckStatus,
    ExtendCheck,
    FenceActions,
    Kit,
    KitContext,
    Timeouts,
)
from vigil.kits.ip import arp, netlink
from vigil.kits.ip.netlink import Link, NetView
from vigil.kits.ip.properties import IpProperties
from vigil.kits.ip.validation import (
    choose_interface,
    config_problems,
    interface_problems,
    usable,
)
from vigil.kits.process import run_command

__all__ = ["CONFIGURED_FILE", "PING_TIMEOUT", "IpKit"]

#: seconds ``ping`` waits for each deep-check target's answer
PING_TIMEOUT = 1
#: the file in the resource's state directory naming the address restore configured
CONFIGURED_FILE = "configured-address"


class IpKit(Kit[IpProperties]):
    """Switchable IPv4 address, added over netlink and announced by gratuitous ARP."""

    name: ClassVar[str] = "ip"
    description: ClassVar[str] = (
        "Switchable IP address: an IPv4 address that moves with its hierarchy, "
        "checked for duplicates and announced by gratuitous ARP"
    )
    Properties = IpProperties
    timeouts: ClassVar[Timeouts] = Timeouts(
        restore=15.0,
        remove=15.0,
        quick_check=5.0,
        deep_check=15.0,
        recover=30.0,
        validate=15.0,
        delete=5.0,
    )
    check_intervals: ClassVar[CheckIntervals] = CheckIntervals(quick=2.0, deep=30.0)

    def __init__(self) -> None:
        self._announcer = arp.Announcer()

    # --- configuration actions ----------------------------------------------------------

    async def validate_create(self, ctx: KitContext[IpProperties]) -> list[str]:
        """Configuration checks here, then an ARP probe for another owner of the address."""
        p = ctx.properties
        view = await netlink.read_view()
        problems = config_problems(view, p, ctx.server, _linkdown_ignored(p))
        if not problems:
            link = view.link(p.interface)
            if link is not None and link.uses_arp:
                owner = await arp.probe(link.name, p.address, view.macs(), p.probe_wait)
                if owner is not None:
                    problems.append(_duplicate(p.address, owner, link.name, ctx.server))
        return problems

    async def can_extend(self, ctx: KitContext[IpProperties]) -> ExtendCheck:
        """The configuration checks on the target, with the proposed interface."""
        p = ctx.properties
        view = await netlink.read_view()
        proposed: dict[str, object] = {"interface": choose_interface(view, p)}
        if p.backup_interface is not None and view.link(p.backup_interface) is None:
            ctx.log.info(
                "%s: %s has no interface %s: proposing no backup interface there",
                ctx.tag,
                ctx.server,
                p.backup_interface,
            )
            proposed["backup_interface"] = None
        final = p.model_copy(update=proposed)
        problems = config_problems(view, final, ctx.server, _linkdown_ignored(final))
        return ExtendCheck(problems=problems, proposed=proposed)

    async def extend(self, ctx: KitContext[IpProperties]) -> None:
        """Check the final per-server properties once more; FATAL when they cannot work."""
        p = ctx.properties
        view = await netlink.read_view()
        problems = config_problems(view, p, ctx.server, _linkdown_ignored(p))
        if problems:
            raise KitError(
                f"ip resource {ctx.tag} cannot be extended to {ctx.server}: " + "; ".join(problems),
                Severity.FATAL,
            )

    async def delete(self, ctx: KitContext[IpProperties]) -> None:
        """Nothing was created on the server: a pending announcement is cancelled and the
        note of the configured address is removed. Idempotent."""
        await self._announcer.stop(ctx.tag)
        await asyncio.to_thread(_forget_configured, ctx)

    def fence_actions(self, ctx: KitContext[IpProperties]) -> FenceActions:
        """The fence guard deletes the address from the interface and the backup
        interface (wherever local recovery may have put it) if the agent stops renewing."""
        p = ctx.properties
        return FenceActions(
            addresses=tuple((str(p.address), p.prefixlen, name) for name in p.interfaces)
        )

    # --- service actions ----------------------------------------------------------------

    async def restore(self, ctx: KitContext[IpProperties]) -> None:
        """Bring the address up here (idempotent). KitError HARD when no interface can
        carry it or another host answers for it."""
        p = ctx.properties
        view = await netlink.read_view()
        for ifname in p.interfaces:
            link = usable(view, p, ifname)
            if link is not None:
                await self._claim(ctx, view, p, link)
                return
        problems = [
            problem
            for ifname in p.interfaces
            for problem in interface_problems(view, p, ctx.server, ifname)
        ]
        raise KitError(
            f"ip resource {ctx.tag}: no interface on {ctx.server} can carry {p.shown}: "
            + "; ".join(problems),
            Severity.HARD,
        )

    async def remove(self, ctx: KitContext[IpProperties]) -> None:
        """Delete the address from every interface it is on (idempotent); raises HARD,
        after trying every deletion, if it is still configured."""
        await self._announcer.stop(ctx.tag)
        await _delete_everywhere(ctx)

    async def escalate(self, ctx: KitContext[IpProperties]) -> list[str]:
        """After a remove that overran or failed: the pending announcement cancelled
        without waiting for it, and the address deleted from every interface it is on;
        what was deleted. HARD if it is still configured."""
        self._announcer.cancel(ctx.tag)
        return await _delete_everywhere(ctx)

    async def quick_check(self, ctx: KitContext[IpProperties]) -> Check:
        """RUNNING when the address is on the interface or backup interface and that
        link is up; STOPPED when absent; FAILED otherwise. Read-only."""
        return _check(await netlink.read_view(), ctx.properties)

    async def deep_check(self, ctx: KitContext[IpProperties]) -> Check:
        """The quick check, then the ping list (or the subnet's gateway) from the address:
        FAILED when no target answers. Read-only."""
        p = ctx.properties
        view = await netlink.read_view()
        check = _check(view, p)
        if check.status is not CheckStatus.RUNNING:
            return check
        targets = list(p.ping_list)
        if not targets:
            here = view.find(p.address)[0]
            targets = await netlink.gateways(view.links[here.link], p.network)
        if not targets:
            return check
        return await _ping_all(ctx, p.address, targets, check)

    async def recover(self, ctx: KitContext[IpProperties]) -> bool:
        """Re-add and re-announce the address on the interface, else move it to the
        backup interface; True when the quick check then says RUNNING. False at once when
        ``local_recovery`` is off here."""
        p = ctx.properties
        if not p.local_recovery:
            ctx.log.info("%s: local recovery is off on %s", ctx.tag, ctx.server)
            return False
        view = await netlink.read_view()
        for ifname in p.interfaces:
            link = usable(view, p, ifname)
            if link is None:
                problems = "; ".join(interface_problems(view, p, ctx.server, ifname))
                ctx.log.warning("%s: cannot recover on %s: %s", ctx.tag, ifname, problems)
                continue
            try:
                await self._claim(ctx, view, p, link)
            except KitError as exc:
                if exc.severity is Severity.FATAL:
                    raise
                ctx.log.warning("%s: recovery on %s failed: %s", ctx.tag, ifname, exc)
            view = await netlink.read_view()
            check = _check(view, p)
            if check.status is CheckStatus.RUNNING:
                ctx.log.info("%s: recovered: %s", ctx.tag, check.detail)
                return True
        return False

    # --- helpers ------------------------------------------------------------------------

    async def _claim(
        self, ctx: KitContext[IpProperties], view: NetView, p: IpProperties, link: Link
    ) -> None:
        """Probe, put the address on ``link`` (moving it from any other link), announce."""
        if link.uses_arp:
            owner = await arp.probe(link.name, p.address, view.macs(), p.probe_wait)
            if owner is not None:
                raise KitError(
                    f"ip resource {ctx.tag}: "
                    + _duplicate(p.address, owner, link.name, ctx.server)
                    + "; not bringing it in service",
                    Severity.HARD,
                )
        for address in view.find(p.address):
            if address.link != link.name or address.interface != p.vip:
                await netlink.delete_address(address)
        await _note_configured(ctx, p.address)
        if await netlink.add_address(link, p.vip):
            ctx.log.info("%s: added %s to %s", ctx.tag, p.shown, link.name)
        if not link.uses_arp:
            return
        try:
            await arp.announce(link.name, p.address)
        except KitError as exc:  # the address works; the repetition tries again
            ctx.log.warning("%s: announcing %s failed: %s", ctx.tag, p.address, exc)

        async def still_there() -> bool:
            """Whether the address is still on ``link`` (not removed or moved since)."""
            current = await netlink.read_view()
            return any(a.link == link.name for a in current.find(p.address))

        self._announcer.start(ctx.tag, link.name, p.address, still_there, ctx.log)


async def _delete_everywhere(ctx: KitContext[IpProperties]) -> list[str]:
    """Delete the address (and the one the last restore noted, should ``address`` have
    been edited since) from every interface it is on; what was deleted. HARD, after
    trying every deletion, if it is still configured."""
    p = ctx.properties
    ips = {p.address}
    noted = await _configured(ctx)
    if noted is not None and noted != p.address:
        ctx.log.info("%s: removing %s too, configured before a property change", ctx.tag, noted)
        ips.add(noted)
    view = await netlink.read_view()
    failures: list[str] = []
    deleted: list[str] = []
    for address in [a for a in view.addresses if a.ip in ips]:
        try:
            if await netlink.delete_address(address):
                ctx.log.info("%s: deleted %s from %s", ctx.tag, address.interface, address.link)
                deleted.append(f"deleted {address.interface} from {address.link}")
        except KitError as exc:
            failures.append(str(exc))
    left = [a for a in (await netlink.read_view()).addresses if a.ip in ips]
    if not left:
        await asyncio.to_thread(_forget_configured, ctx)
    else:
        where = ", ".join(f"{a.interface} on {a.link}" for a in left)
        detail = f" ({'; '.join(failures)})" if failures else ""
        raise KitError(
            f"ip resource {ctx.tag}: {where} is still configured on {ctx.server}{detail}",
            Severity.HARD,
        )
    return deleted


async def _note_configured(ctx: KitContext[IpProperties], ip: IPv4Address) -> None:
    """Note the address about to be configured (in the resource's state directory), so
    that ``remove`` deletes it even if the ``address`` property is edited meanwhile."""

    def write() -> None:
        ctx.state_dir.mkdir(parents=True, exist_ok=True)
        (ctx.state_dir / CONFIGURED_FILE).write_text(f"{ip}\n")

    try:
        await asyncio.to_thread(write)
    except OSError as exc:
        ctx.log.warning("%s: cannot note the configured address: %s", ctx.tag, exc)


def _forget_configured(ctx: KitContext[IpProperties]) -> None:
    """Remove the note of the configured address, and the state directory if empty."""
    (ctx.state_dir / CONFIGURED_FILE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        ctx.state_dir.rmdir()


async def _configured(ctx: KitContext[IpProperties]) -> IPv4Address | None:
    """The address noted by the last restore here, if any."""
    try:
        text = await asyncio.to_thread((ctx.state_dir / CONFIGURED_FILE).read_text)
        return IPv4Address(text.strip())
    except (OSError, ValueError):
        return None


def _linkdown_ignored(p: IpProperties) -> bool:
    return p.backup_interface is None or netlink.ignores_linkdown_routes(p.interface)


def _duplicate(ip: IPv4Address, owner: str, ifname: str, server: str) -> str:
    return (
        f"{ip} already answers on the network from hardware address {owner} (probed on "
        f"{ifname} of {server}): another host uses it; free it there or choose another address"
    )


def _check(view: NetView, p: IpProperties) -> Check:
    found = view.find(p.address)
    if not found:
        return Check.stopped(f"{p.address} is not configured")
    where = found[0]
    if where.link not in p.interfaces:
        return Check.failed(
            f"{where.interface} is on {where.link}, not on {' or '.join(p.interfaces)}"
        )
    link = view.links[where.link]
    if not link.up:
        return Check.failed(f"{where.interface} is on {link.name}, which is {link.state()}")
    return Check.running(f"{where.interface} on {link.name}")


async def _ping_all(
    ctx: KitContext[IpProperties], source: IPv4Address, targets: list[IPv4Address], check: Check
) -> Check:
    """Ping every target once, in parallel, from ``source``."""
    results = await asyncio.gather(*(_ping(ctx, source, target) for target in targets))
    silent = [str(t) for t, answered in zip(targets, results, strict=True) if answered is False]
    missing = [str(t) for t, answered in zip(targets, results, strict=True) if answered is None]
    if missing:
        return Check.running(check.detail, warning="ping is not installed: no deep check")
    if len(silent) == len(targets):
        return Check.failed(f"no ping target answers from {source}: {', '.join(silent)}")
    if silent:
        return Check.running(check.detail, warning=f"not answering pings: {', '.join(silent)}")
    return check


async def _ping(
    ctx: KitContext[IpProperties], source: IPv4Address, target: IPv4Address
) -> bool | None:
    """True when ``target`` answers a ping from ``source``; None when ping is missing."""
    argv = ["ping", "-n", "-q", "-c", "1", "-W", str(PING_TIMEOUT), "-I", str(source)]
    try:
        result = await run_command(
            [*argv, str(target)], log=ctx.log, timeout=PING_TIMEOUT + 4.0, name=f"{ctx.tag} ping"
        )
    except KitTimeout:
        return False
    if result.returncode in (126, 127):
        return None
    return result.ok
