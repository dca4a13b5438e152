"""The mail kit: a Postfix + Dovecot mail server whose users live in an LDAP directory,
protected as the seed's Exchange kit protects Exchange.

=============  =========================================================================
action         behaviour
=============  =========================================================================
validate       Postfix and Dovecot installed in supported versions, their configuration
               there, no protected service enabled at boot, the directory account
               binds; every data location (queue, mail location, every namespace's
               directories) is on a filesystem vigil can protect
create         a volume resource below the mail resource for each filesystem the data is
               on (or the existing one, adopted), and the named ip and dns resources;
               records the primary's settings every backup must match
can_extend     the same checks on the backup, and its configuration compared with the
               primary's: each difference a change to make (``--fix`` makes them, but
               never for a second primary of an N+1 backup); proposes the backup's
               home value (its first address)
restore        Dovecot, the optional services, Postfix, each up within ``max_wait``
               (before Postfix: messages the last server delivered but left queued are
               removed from the queue, ``inflight``);
               then users are moved home here and the front-ends flushed (never fatal:
               users that cannot be moved go to the failed-users log, retried)
remove         Postfix, the optional services, Dovecot, each gone within ``max_wait``
               (then forced); the resource's cgroup is emptied by the agent afterwards
quick_check    every service's process, and its listeners at the protected address:
               SMTP banner, IMAP (and POP3) greeting, LMTP greeting
deep_check     the quick check, then a probe message end to end (SMTP -> LMTP -> IMAP,
               read back and deleted); the failure names the hop. A directory outage
               is a warning, not a failure: moving the mail service would not cure it
recover        restarts the failed service only, then the quick check
delete         removes the resource's state on this server (the failed-users log)
escalate       after a remove that overran (or failed where the agent must let go): every
               daemon of the resource's cgroup killed; HARD if a service still runs
=============  =========================================================================
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from typing import Any, ClassVar

from vigil.errors import KitError, Severity
from vigil.kits.base import (
    Action,
    Check,
    CheckIntervals,
    CheckStatus,
    ChildResource,
    ExtendCheck,
    Kit,
    KitContext,
    Timeouts,
    stop_cgroup,
)
from vigil.kits.mail import config, fix, inflight, validation
from vigil.kits.mail.probes import Probe, ProbeResult, round_trip
from vigil.kits.mail.properties import HomeMode, MailProperties
from vigil.kits.mail.rehoming import Rehomer, home_values
from vigil.kits.mail.services import Endpoint, Service, services_in_start_order
from vigil.kits.process import CLEANUP_ALLOWANCE

__all__ = ["MailKit"]

#: seconds beyond the services' own waits that restore may spend moving users home
REHOME_ALLOWANCE = 120.0


class MailKit(Kit[MailProperties]):
    """Postfix + Dovecot with LDAP users (the seed's Microsoft Exchange Recovery Kit)."""

    name: ClassVar[str] = "mail"
    description: ClassVar[str] = (
        "Mail server: Postfix and Dovecot (and optional services), users in an LDAP "
        "directory moved to the server in service"
    )
    Properties = MailProperties
    timeouts: ClassVar[Timeouts] = Timeouts(
        restore=3 * 900.0, remove=3 * 900.0, quick_check=20.0, deep_check=60.0,
        recover=3 * 900.0, validate=120.0, delete=30.0,
    )  # fmt: skip
    check_intervals: ClassVar[CheckIntervals] = CheckIntervals(quick=5.0, deep=60.0)
    delete_on_backup: ClassVar[str | None] = (
        "its users are homed on the backup it is in service on; move them back to the "
        "primary first (`vigil mail failback-users TAG`, the seed's lkmsad_mu), or delete "
        "with --force and move them later"
    )

    def __init__(self) -> None:
        self.rehomer = Rehomer()
        self._read_settings: dict[tuple[str, str], dict[str, str]] = {}

    def timeout(self, action: Action, properties: MailProperties) -> float:
        """``max_wait`` per service start or stop (each service may take it all), plus the
        time to move users home after a restore."""
        services = 2 + len(properties.services)
        per_service = properties.max_wait + 5.0 + CLEANUP_ALLOWANCE
        if action in (Action.RESTORE, Action.RECOVER):
            return (
                services * per_service * (2 if action is Action.RECOVER else 1) + REHOME_ALLOWANCE
            )
        if action is Action.REMOVE:
            return services * per_service
        return super().timeout(action, properties)

    # --- configuration actions ----------------------------------------------------------

    async def validate_create(self, ctx: KitContext[MailProperties]) -> list[str]:
        props = ctx.properties
        problems = await validation.setup_problems(ctx, props)
        if problems:
            return problems
        return (await validation.create_plan(ctx, props)).problems

    async def create(self, ctx: KitContext[MailProperties]) -> list[ChildResource]:
        props = ctx.properties
        plan = await validation.create_plan(ctx, props)
        if plan.problems:
            raise KitError(plan.problems[0], Severity.FATAL)
        named = [ChildResource(props.ip_resource, "ip", adopt=True)] if props.ip_resource else []
        named += [ChildResource(tag, "dns", adopt=True) for tag in props.dns_resources]
        return [*plan.volumes, *named]

    async def recorded_properties(self, ctx: KitContext[MailProperties]) -> Mapping[str, Any]:
        props = ctx.properties
        recorded: dict[str, Any] = {
            "expected_settings": await config.settings(props.postfix_config, props.dovecot_config)
        }
        if props.home_mode is HomeMode.SERVER and not props.home_server:
            recorded["home_server"] = home_values(ctx, props)[0]
        return recorded

    async def can_extend(self, ctx: KitContext[MailProperties]) -> ExtendCheck:
        props = ctx.properties
        problems, fixable = await validation.extend_problems(ctx, props)
        proposed: dict[str, Any] = {}
        if props.home_mode is HomeMode.SERVER:
            taken = {
                values.get("home_server")
                for server, values in ctx.instances.items()
                if server != ctx.server
            }
            if not props.home_server or props.home_server in taken:
                mine = ctx.addresses[0] if ctx.addresses else ctx.server
                if mine in taken:
                    problems.append(
                        f"give {ctx.server} its own home_server value: {mine} is another "
                        "server's already"
                    )
                proposed["home_server"] = mine
        return ExtendCheck(problems=problems, proposed=proposed, fixable=fixable)

    async def fix_extend(self, ctx: KitContext[MailProperties]) -> list[str]:
        return await fix.apply_fixes(ctx, ctx.properties)

    async def delete(self, ctx: KitContext[MailProperties]) -> None:
        """Forget this resource's state here (the failed-users log). Idempotent."""
        self.rehomer.cancel(ctx.tag)
        if ctx.state_dir.name == ctx.tag:
            await asyncio.to_thread(shutil.rmtree, ctx.state_dir, ignore_errors=True)

    # --- service actions ----------------------------------------------------------------

    async def _services(self, ctx: KitContext[MailProperties]) -> list[Service]:
        """The services in start order, with where their checks find them."""
        props = ctx.properties
        if not props.setting("postfix:queue_directory"):
            props = props.model_copy(update={"expected_settings": await self._settings(props)})
        ip = ctx.child_of_kit("ip")
        if ip is not None and ip.properties.get("address"):
            address = str(ip.properties["address"])
        else:
            address = ctx.addresses[0] if ctx.addresses else "127.0.0.1"
        endpoint = Endpoint(
            address=address,
            smtp_port=int(props.setting("record:postfix:smtp_port", "25") or 25),
            imap_port=int(props.setting("record:dovecot:imap_port", "143") or 143),
            pop3_port=int(props.setting("record:dovecot:pop3_port", "110") or 110),
            lmtp=props.setting("postfix:virtual_transport"),
        )
        return services_in_start_order(props, endpoint)

    async def _settings(self, props: MailProperties) -> dict[str, str]:
        """This server's settings, for a resource that has none recorded (made by hand or
        by an older vigil): read once per configuration, then kept."""
        key = (props.postfix_config, props.dovecot_config)
        if key not in self._read_settings:
            self._read_settings[key] = await config.settings(*key)
        return self._read_settings[key]

    async def restore(self, ctx: KitContext[MailProperties]) -> None:
        """Check the queue is where the hierarchy keeps it, start every service in order,
        then move the users home here."""
        props = ctx.properties
        await self._same_queue(ctx, props)
        for service in await self._services(ctx):
            await self._start(ctx, service)
        await self.rehomer.on_restore(ctx, props)

    async def _start(self, ctx: KitContext[MailProperties], service: Service) -> None:
        if service.name == "postfix" and not await service.running(ctx):
            # Dovecot runs: what a Postfix that died delivered but left queued goes now
            await inflight.settle_in_flight(ctx)
        await service.start(ctx)

    async def _same_queue(self, ctx: KitContext[MailProperties], props: MailProperties) -> None:
        """A server whose Postfix queues elsewhere than on the hierarchy's volume would
        accept mail into a queue that does not move with it: refused (HARD: the next
        server is tried)."""
        wanted = props.setting("postfix:queue_directory")
        if not wanted:
            return
        found = await config.postconf(props.postfix_config, ("queue_directory",))
        if found.get("queue_directory") != wanted:
            raise KitError(
                f"Postfix on {ctx.server} queues in {found.get('queue_directory')!r}, the "
                f"hierarchy's queue is {wanted}: set it there (vigil mail set-queue-path, "
                "or postconf -e) before it may serve",
                Severity.HARD,
            )

    async def remove(self, ctx: KitContext[MailProperties]) -> None:
        """Stop every service in reverse order; tries each before raising."""
        self.rehomer.cancel(ctx.tag)
        failures = []
        for service in reversed(await self._services(ctx)):
            try:
                await service.stop(ctx)
            except KitError as exc:
                failures.append(str(exc))
        if failures:
            raise KitError(f"mail resource {ctx.tag}: {'; '.join(failures)}", Severity.HARD)

    async def escalate(self, ctx: KitContext[MailProperties]) -> list[str]:
        """Kill every daemon of the resource's cgroup (a remove overran or failed); HARD
        when a service still runs afterwards (started outside vigil, no cgroup here)."""
        self.rehomer.cancel(ctx.tag)
        done = await stop_cgroup(ctx.cgroup)
        running = [s.name for s in await self._services(ctx) if await s.running(ctx)]
        if running:
            raise KitError(
                f"mail resource {ctx.tag}: {', '.join(running)} still running on {ctx.server} "
                "after its cgroup was killed",
                Severity.HARD,
            )
        return done

    async def quick_check(self, ctx: KitContext[MailProperties]) -> Check:
        checks = [(s.name, await s.check(ctx)) for s in await self._services(ctx)]
        states = {check.status for _, check in checks}
        if states == {CheckStatus.STOPPED}:
            return Check.stopped("no mail service runs")
        bad = [f"{check.detail}" for _, check in checks if check.status is not CheckStatus.RUNNING]
        if bad:
            return Check.failed("; ".join(bad))
        return Check.running(", ".join(name for name, _ in checks) + " running and answering")

    async def deep_check(self, ctx: KitContext[MailProperties]) -> Check:
        quick = await self.quick_check(ctx)
        props = ctx.properties
        if quick.status is not CheckStatus.RUNNING or not props.has_probe:
            return quick
        result = await self._round_trip(props, (await self._services(ctx))[0].endpoint)
        if result.ok:
            ctx.log.info("%s: deep check: %s", ctx.tag, result.detail)
            return Check.running(result.detail)
        if result.directory:
            return Check.running(
                quick.detail,
                warning=f"the directory does not answer the mail service: {result.detail}",
            )
        return Check.failed(f"end-to-end probe failed at {result.hop}: {result.detail}")

    async def recover(self, ctx: KitContext[MailProperties]) -> bool:
        """Restart only the services whose check failed, then the quick check."""

        async def restart_failed(ctx: KitContext[MailProperties]) -> None:
            services = await self._services(ctx)
            failed = {}
            for service in services:
                check = await service.check(ctx)
                if check.status is not CheckStatus.RUNNING:
                    failed[service.name] = check.detail
            if not failed:
                failed = await self._failed_hop(ctx, services)
            for service in services:  # in start order: what Postfix needs comes up first
                if service.name in failed:
                    ctx.log.warning(
                        "%s: restarting %s: %s", ctx.tag, service.name, failed[service.name]
                    )
                    await service.stop(ctx)
                    await self._start(ctx, service)

        return await self.recover_by(ctx, restart_failed)

    async def _failed_hop(
        self, ctx: KitContext[MailProperties], services: list[Service]
    ) -> dict[str, str]:
        """Every service answers: the deep check's round trip tells which hop is stuck."""
        props = ctx.properties
        if not props.has_probe:
            return {}
        result = await self._round_trip(props, services[0].endpoint)
        if result.ok or result.directory:
            return {}
        culprits = {"smtp": ("postfix",), "imap": ("dovecot",), "delivery": ("dovecot", "postfix")}
        return dict.fromkeys(culprits.get(result.hop, ()), f"{result.hop}: {result.detail}")

    async def _round_trip(self, props: MailProperties, endpoint: Endpoint) -> ProbeResult:
        assert props.probe_user and props.probe_address and props.probe_password
        return await round_trip(
            Probe(
                endpoint.address, endpoint.smtp_port, endpoint.imap_port, props.probe_user,
                props.probe_address, props.probe_password.get_secret_value(),
            )
        )  # fmt: skip
