"""Re-homing when the hierarchy comes in service, the failed-users log, and the retries.

When the mail hierarchy comes in service on a server (failover, switchover, switchback),
every user whose home attribute names another server of the hierarchy is moved to this
server's value (``home_mode = server``; with ``service`` the home follows the hierarchy's
own name and nobody moves). A user that cannot be moved never keeps the mail service
down: it goes to the **failed-users log** (``failed-users.json`` in the resource's state
directory on this server: the seed's FailedExUsers.log) and a background task tries again
until every user is home, emptying the log as it goes. After users moved, the front-ends
are asked with SMTP ``ETRN`` to deliver at once what they hold for them (the seed's
"Mail Remains in SMTP Queue on Smart Host", done automatically): ETRN needs no shell on
the front-end, only Postfix's fast flush for the domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import email.utils
import json
import os
import smtplib
from collections.abc import Coroutine, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vigil.kits.base import KitContext
from vigil.kits.mail import directory
from vigil.kits.mail.directory import FailedUser, Rehomed
from vigil.kits.mail.probes import PROBE_SUBJECT
from vigil.kits.mail.properties import HomeMode, MailProperties

__all__ = ["FAILED_USERS_FILE", "Rehomer", "etrn", "home_values", "read_failed_users"]

FAILED_USERS_FILE = "failed-users.json"
#: seconds between retries while users could not be moved (doubling up to RETRY_MAX)
RETRY_FIRST = 2.0
RETRY_MAX = 60.0
#: seconds one ETRN may take
ETRN_TIMEOUT = 10.0
#: Postfix's queue manager keeps the route of the recipient it resolved last for 30 s
#: (hard-coded in resolve_clnt.c): a message for that recipient goes to the old home once
#: more on the first ETRN; a second ETRN after this long sends it to the new one
ROUTE_CACHE = 31.0
#: seconds for the front-end to take the route-refresh message before the ETRN
ROUTE_SETTLE = 0.3


def home_values(ctx: KitContext[MailProperties], props: MailProperties) -> tuple[str, list[str]]:
    """(this server's home value, the values users may have elsewhere: the other
    servers', and ``service_home`` when the hierarchy used home_mode service before)."""
    mine = props.home_server or (ctx.addresses[0] if ctx.addresses else ctx.server)
    others = [props.service_home] if props.service_home and props.service_home != mine else []
    for server, values in ctx.instances.items():
        value = values.get("home_server")
        if server != ctx.server and isinstance(value, str) and value and value != mine:
            others.append(value)
    return mine, others


def read_failed_users(state_dir: Path) -> list[dict[str, object]]:
    """The failed-users log of a resource on this server ([] when empty or absent)."""
    try:
        entries = json.loads((state_dir / FAILED_USERS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return entries if isinstance(entries, list) else []


def _write_failed_users(state_dir: Path, failed: tuple[FailedUser, ...]) -> None:
    """Replace the log atomically (a reader never sees half of it)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / FAILED_USERS_FILE
    if not failed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(f) for f in failed], indent=1))
    os.replace(tmp, path)


def _endpoint(frontend: str) -> tuple[str, int]:
    host, _, port = frontend.rpartition(":") if frontend.count(":") == 1 else (frontend, "", "")
    return host or frontend, int(port or 25)


def refresh_route(frontend: str, probe_address: str) -> str:
    """Send one message to the probe mailbox through ``frontend`` (its subject marks it as
    a probe's: the deep check deletes it); "" when accepted, else why not."""
    message = email.message.EmailMessage()
    message["From"] = message["To"] = probe_address
    message["Subject"] = f"{PROBE_SUBJECT} (route refresh)"
    message["Message-ID"] = email.utils.make_msgid("vigil-route")
    message.set_content("vigil: the users moved; this makes the front-end route afresh.\n")
    try:
        host, port = _endpoint(frontend)
        with smtplib.SMTP(host, port, timeout=ETRN_TIMEOUT) as smtp:
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        return f"route refresh through {frontend}: {exc}"
    return ""


def etrn(frontend: str, domain: str) -> str:
    """Ask ``frontend`` (HOST[:PORT]) to deliver what it holds for ``domain`` now; ""
    when it accepted, else why not."""
    try:
        host, port = _endpoint(frontend)
        with smtplib.SMTP(host, port, timeout=ETRN_TIMEOUT) as smtp:
            smtp.ehlo_or_helo_if_needed()
            code, reply = smtp.docmd("ETRN", domain)
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        return f"ETRN {domain} to {frontend}: {exc}"
    if code != 250:
        return f"ETRN {domain} to {frontend}: {code} {reply.decode(errors='replace')}"
    return ""


class Rehomer:
    """Re-homes users for the mail kit, keeps each resource's failed-users log and its
    background retry (one per resource on this server)."""

    def __init__(self) -> None:
        self._retries: dict[str, asyncio.Task[None]] = {}

    async def on_restore(self, ctx: KitContext[MailProperties], props: MailProperties) -> None:
        """Move the users here (server mode), then flush the front-ends (now, and once more
        after their route cache expired). Never raises for a directory problem: it is
        logged, recorded and retried in the background."""
        self.cancel(ctx.tag)
        if props.home_mode is HomeMode.SERVICE:
            await self._flush(ctx, props)
            self._later(ctx.tag, self._flush_again(ctx, props))
            return
        to, away = home_values(ctx, props)
        result = await asyncio.to_thread(directory.rehome, props, to, away)
        await self._record(ctx, props, result, first=True)
        if not result.complete:
            self._later(ctx.tag, self._retry(ctx, props, to, away))
        elif props.frontends:
            self._later(ctx.tag, self._flush_again(ctx, props))

    def _later(self, tag: str, work: Coroutine[Any, Any, None]) -> None:
        self._retries[tag] = asyncio.create_task(work, name=f"mail users {tag}")

    def cancel(self, tag: str) -> None:
        """Stop the background work of ``tag`` (the hierarchy leaves this server)."""
        task = self._retries.pop(tag, None)
        if task is not None:
            task.cancel()

    async def _flush_again(self, ctx: KitContext[MailProperties], props: MailProperties) -> None:
        await asyncio.sleep(ROUTE_CACHE)
        await self._flush(ctx, props)

    def retrying(self, tag: str) -> bool:
        task = self._retries.get(tag)
        return task is not None and not task.done()

    async def _retry(
        self, ctx: KitContext[MailProperties], props: MailProperties, to: str, away: list[str]
    ) -> None:
        delay = RETRY_FIRST
        while True:
            await asyncio.sleep(delay)
            result = await asyncio.to_thread(directory.rehome, props, to, away)
            await self._record(ctx, props, result, first=False)
            if result.complete:
                await self._flush_again(ctx, props)
                return
            delay = min(delay * 2, RETRY_MAX)

    async def _record(
        self,
        ctx: KitContext[MailProperties],
        props: MailProperties,
        result: Rehomed,
        *,
        first: bool,
    ) -> None:
        await asyncio.to_thread(_write_failed_users, ctx.state_dir, result.failed)
        if result.moved or first:
            await self._flush(ctx, props)
        if result.failed:
            base = [f for f in result.failed if f.whole_base]
            what = (
                f"no user could be moved: {base[0].reason}"
                if base
                else f"{len(result.failed)} users could not be moved (first: "
                f"{result.failed[0].dn}: {result.failed[0].reason})"
            )
            if first or result.moved:
                await ctx.event(
                    "mail-users-failed",
                    f"{ctx.tag} on {ctx.server}: moved {result.moved} users; {what}; see "
                    f"`vigil mail failed-users {ctx.tag}` (retrying in the background)",
                )
        elif result.moved or not first:
            await ctx.event(
                "mail-users-moved",
                f"{ctx.tag}: moved {result.moved} users to {ctx.server} in "
                f"{result.seconds:.2f}s; every user is home",
            )

    async def _flush(self, ctx: KitContext[MailProperties], props: MailProperties) -> None:
        domains = props.etrn_domains or _domains(props.expected_settings)
        if props.has_probe and props.frontends:
            # the front-end's queue manager keeps the route of the recipient it resolved
            # last for 30 s: a message of ours to the probe mailbox makes it resolve
            # another one first, so every deferred message gets its new route on the ETRN
            assert props.probe_address
            refreshed = await asyncio.gather(
                *(asyncio.to_thread(refresh_route, f, props.probe_address) for f in props.frontends)
            )
            for problem in filter(None, refreshed):
                ctx.log.warning("%s: %s", ctx.tag, problem)
            await asyncio.sleep(ROUTE_SETTLE)
        problems = await asyncio.gather(
            *(
                asyncio.to_thread(etrn, frontend, domain)
                for frontend in props.frontends
                for domain in domains
            )
        )
        for problem in filter(None, problems):
            ctx.log.warning("%s: %s (the front-end delivers at its next retry)", ctx.tag, problem)


def _domains(settings: Mapping[str, str]) -> list[str]:
    """Plain domain names in the primary's virtual_mailbox_domains (tables are skipped)."""
    value = settings.get("postfix:virtual_mailbox_domains", "")
    words = [w for w in value.replace(",", " ").split() if w]
    return [w for w in words if ":" not in w and "$" not in w]
