"""The mail kit's administrator operations (the seed's chapter 4 "Services Config" and
"Manage User", and its utilities: LKMoveExUsers, LKExADUtil /MSU, lkmsad_mu,
SetSvcMode), carried out by an agent for the API.

Each operation validates everything first and changes nothing on bad input: a changed
account must bind before it is stored; a service must be known or fully described; a user
must exist before it is moved. Property changes go through ``Operations.configure`` (one
transaction, guarded by the configuration revision); directory changes are made with the
mail kit's own directory code, on the agent that received the request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from vigil.agent.operations import Operations, Outcome
from vigil.engine import changes
from vigil.errors import Conflict, KitError, NotFound, ValidationError
from vigil.kits.mail import directory
from vigil.kits.mail.properties import HomeMode, MailProperties, OptionalService
from vigil.kits.mail.queue import path_problems, relocate_queue
from vigil.kits.mail.rehoming import read_failed_users
from vigil.kits.mail.services import KNOWN_SERVICES
from vigil.kits.process import run_command
from vigil.model.cluster import Cluster, Resource

__all__ = ["MailOperations"]

log = logging.getLogger("vigil.agent.mail")

SERVICE_MODES = {"auto": "enable", "manual": "disable"}


class MailOperations:
    """Operations on mail resources, through the agent's ``Operations``."""

    def __init__(self, operations: Operations) -> None:
        self.operations = operations

    # --- finding the resource -------------------------------------------------------------

    async def _mail(self, tag: str) -> tuple[Cluster, Resource]:
        cluster = await self.operations.cluster()
        resource = changes.require_resource(cluster, tag)
        if resource.kit != "mail":
            raise ValidationError(f"{tag} is a {resource.kit} resource, not a mail resource")
        return cluster, resource

    def _props(self, resource: Resource, server: str, **override: Any) -> MailProperties:
        """The resource's properties on ``server`` (secrets opened), with ``override``."""
        runner = self.operations.runner
        kit = runner.kit("mail")
        values = runner.secrets.open_fields(
            resource.properties_on(server), kit.Properties.secret_fields()
        )
        props = kit.parse_properties({**values, **override})
        assert isinstance(props, MailProperties)
        return props

    def _active(self, cluster: Cluster, tag: str) -> str | None:
        return cluster.intended_server(cluster.hierarchy(tag))

    def _home_by_server(self, resource: Resource) -> dict[str, str]:
        """Each server's home value (home_mode server)."""
        found = {}
        for server in resource.servers_by_priority:
            value = resource.properties_on(server).get("home_server")
            if isinstance(value, str) and value:
                found[server] = value
        return found

    # --- Manage User -------------------------------------------------------------------------

    async def show_user(self, tag: str) -> dict[str, Any]:
        _, resource = await self._mail(tag)
        props = self._props(resource, resource.servers_by_priority[0])
        return {"bind_dn": props.bind_dn, "directory_urls": props.directory_urls}

    async def set_user(self, tag: str, bind_dn: str | None, password: str, user: str) -> Outcome:
        """Change the password (and the account, with ``bind_dn``): the new account must
        bind and find the users before it is stored, on every server at once."""
        if not password:
            raise ValidationError("give the directory account's password")
        _, resource = await self._mail(tag)
        new = {"bind_password": password, **({"bind_dn": bind_dn} if bind_dn else {})}
        props = self._props(resource, self.operations.server, **new)
        problems = await asyncio.to_thread(directory.check_account, props)
        if problems:
            raise ValidationError(
                f"the directory refuses {props.bind_dn}: {problems[0]}; nothing was changed",
                problems,
            )
        outcome = await self.operations.configure(changes.update_properties, user, tag, new, {})
        what = "account and password" if bind_dn else "password"
        return Outcome(
            f"{tag}: directory {what} changed on every server", revision=outcome.revision
        )

    # --- Services Config ---------------------------------------------------------------------

    async def services(self, tag: str) -> dict[str, list[dict[str, Any]]]:
        _, resource = await self._mail(tag)
        return {
            server: [
                s.model_dump(exclude_none=True) for s in self._props(resource, server).services
            ]
            for server in resource.servers_by_priority
        }

    async def add_service(
        self, tag: str, spec: OptionalService, server: str | None, user: str
    ) -> Outcome:
        """Add an optional service at the end of the start order, on ``server`` or on every
        server of the hierarchy (the seed's "Update All Systems")."""
        if spec.name not in KNOWN_SERVICES and not (spec.start and spec.stop and spec.check):
            raise ValidationError(
                f"vigil does not know the service {spec.name} (known: "
                f"{', '.join(sorted(KNOWN_SERVICES))}): give its start, stop and check commands"
            )
        _, resource = await self._mail(tag)
        targets = self._targets(resource, server)
        per_server: dict[str, Mapping[str, object]] = {}
        for target in targets:
            current = self._props(resource, target).services
            if any(s.name == spec.name for s in current):
                raise Conflict(f"{spec.name} is protected on {target} already")
            listed = [s.model_dump(exclude_none=True) for s in [*current, spec]]
            per_server[target] = {"services": listed}
        await self.operations.configure(changes.update_properties, user, tag, {}, per_server)
        return Outcome(f"{tag}: {spec.name} protected on {', '.join(targets)}")

    async def delete_service(self, tag: str, name: str, server: str | None, user: str) -> Outcome:
        _, resource = await self._mail(tag)
        targets = self._targets(resource, server)
        per_server: dict[str, Mapping[str, object]] = {}
        for target in targets:
            current = self._props(resource, target).services
            if not any(s.name == name for s in current):
                raise NotFound(f"{name} is not an optional service of {tag} on {target}")
            kept = [s.model_dump(exclude_none=True) for s in current if s.name != name]
            per_server[target] = {"services": kept}
        await self.operations.configure(changes.update_properties, user, tag, {}, per_server)
        return Outcome(
            f"{tag}: {name} no longer protected on {', '.join(targets)} (stop it yourself "
            "if it still runs)"
        )

    def _targets(self, resource: Resource, server: str | None) -> list[str]:
        if server is None:
            return list(resource.servers_by_priority)
        if server not in resource.instances:
            raise NotFound(f"{resource.tag} is not extended to {server}")
        return [server]

    # --- the users' home ---------------------------------------------------------------------

    async def failed_users(self, tag: str) -> list[dict[str, object]]:
        """The failed-users log of ``tag`` on this server (the API asks the active one)."""
        await self._mail(tag)
        state_dir = self.operations.runner.state_dir / "kits" / tag
        return await asyncio.to_thread(read_failed_users, state_dir)

    async def home(self, tag: str, user: str) -> dict[str, Any]:
        """Which server a user's mailbox is on (the seed's "Client Connection Problems")."""
        cluster, resource = await self._mail(tag)
        props = self._props(resource, resource.servers_by_priority[0])
        dn, value = await self._lookup(props, user)
        by_value = {v: s for s, v in self._home_by_server(resource).items()}
        if props.home_mode is HomeMode.SERVICE:
            server = self._active(cluster, tag) if value == props.service_home else None
        else:
            server = by_value.get(value or "")
        return {
            "user": dn,
            "home": value,
            "server": server,
            "active_server": self._active(cluster, tag),
            "home_attribute": props.home_attribute,
        }

    async def move_user(self, tag: str, user: str, to: str, who: str) -> Outcome:
        """Move one user's home to server ``to`` (the seed's LKExADUtil /MSU)."""
        _, resource = await self._mail(tag)
        homes = self._home_by_server(resource)
        if to not in resource.instances:
            raise NotFound(f"{tag} is not extended to {to}: move users to one of its servers")
        if to not in homes:
            raise ValidationError(f"{to} has no home_server value for {tag}: set it first")
        props = self._props(resource, to)
        dn, value = await self._lookup(props, user)
        if value == homes[to]:
            return Outcome(f"{dn} is homed on {to} already", detail="nothing to do")
        await self._directory(directory.move_user, props, dn, homes[to])
        return Outcome(f"{dn}: {props.home_attribute} {value} -> {homes[to]} ({to}), by {who}")

    async def move_users(self, tag: str, domain: str | None, who: str) -> Outcome:
        """Move every user homed on another server of the hierarchy to the server it is in
        service on (the seed's LKMoveExUsers), optionally only one mail domain's."""
        cluster, resource = await self._mail(tag)
        active = self._active(cluster, tag)
        if active is None:
            raise Conflict(f"{tag} is in service nowhere: bring it in service first")
        return await self._move_all(resource, active, domain, who)

    async def failback_users(self, tag: str, who: str) -> Outcome:
        """Move every user of the hierarchy back to its primary (the seed's lkmsad_mu):
        before deleting a hierarchy that is in service on a backup."""
        cluster, resource = await self._mail(tag)
        primary = resource.servers_by_priority[0]
        outcome = await self._move_all(resource, primary, None, who)
        active = self._active(cluster, tag)
        if active not in (None, primary):
            note = (
                f"{tag} is in service on {active}: users now route to {primary}; bring it in "
                f"service there (vigil in-service {tag} --on {primary}) or delete it"
            )
            return Outcome(outcome.summary, detail=note)
        return outcome

    async def _move_all(
        self, resource: Resource, to_server: str, domain: str | None, who: str
    ) -> Outcome:
        homes = self._home_by_server(resource)
        if to_server not in homes:
            raise ValidationError(f"{to_server} has no home_server value for {resource.tag}")
        props = self._props(resource, to_server)
        if domain:
            if "@" in domain or not domain.strip():
                raise ValidationError(f"{domain!r} is not a mail domain like example.com")
            props = props.model_copy(
                update={"user_filter": f"(&{props.user_filter}(mail=*@{domain}))"}
            )
        away = [v for s, v in homes.items() if s != to_server]
        if props.service_home:  # users homed on the hierarchy itself (home_mode service before)
            away.append(props.service_home)
        result = await asyncio.to_thread(directory.rehome, props, homes[to_server], away)
        if any(f.whole_base for f in result.failed):
            raise Conflict(f"nothing moved: {result.failed[0].reason}")
        failed = ""
        if result.failed:
            first = result.failed[0]
            failed = f"; {len(result.failed)} failed (first: {first.dn}: {first.reason})"
        scope = f" of {domain}" if domain else ""
        return Outcome(
            f"{resource.tag}: moved {result.moved} users{scope} to {to_server} in "
            f"{result.seconds:.2f}s{failed} (by {who})",
            ok=not result.failed,
            detail=failed.lstrip("; "),
        )

    async def _lookup(self, props: MailProperties, user: str) -> tuple[str, str | None]:
        try:
            return await asyncio.to_thread(directory.home_of, props, user)
        except LookupError as exc:
            raise NotFound(str(exc)) from exc
        except directory.DirectoryUnavailable as exc:
            raise Conflict(f"the directory cannot be asked: {exc}") from exc

    async def _directory(self, call: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(call, *args)
        except directory.DirectoryUnavailable as exc:
            raise Conflict(str(exc)) from exc

    # --- SetSMTPQueuePath -------------------------------------------------------------------

    async def set_queue_path(self, tag: str, path: str, who: str) -> tuple[Outcome, dict[str, str]]:
        """Move the queue of a protected hierarchy on the server it is in service on (the
        API forwards there), onto one of its volumes, and record it; returns the outcome
        and the other servers' Postfix configuration directories, where the API then sets
        the new ``queue_directory``. Checks and recovery of the hierarchy wait meanwhile."""
        cluster, resource = await self._mail(tag)
        me = self.operations.server
        active = self._active(cluster, tag)
        if active is None:
            raise Conflict(
                f"{tag} is in service nowhere: its queue is on a volume mounted only where it is "
                "in service; bring it in service first"
            )
        if active != me:
            raise Conflict(f"{tag} is in service on {active}: ask its agent (the API forwards)")
        mounts = sorted(
            str(cluster.resources[c].properties.get("mount_point"))
            for c in cluster.children(tag)
            if cluster.resources[c].kit in ("volume", "mirror")
        )
        if not any(path.startswith(m.rstrip("/") + "/") for m in mounts):
            raise ValidationError(
                f"{path} is not on a volume of {tag} ({', '.join(mounts) or 'it has none'}): "
                "the queue must stay on storage that moves with the hierarchy"
            )
        props = self._props(resource, me)
        _, ctx = self.operations.runner.resource_context(resource)
        if props.setting("postfix:queue_directory") != path:
            with self.operations.hold(frozenset(cluster.hierarchy(tag).tags)):
                try:
                    await relocate_queue(props.postfix_config, path, log, cgroup=ctx.cgroup)
                except KitError as exc:
                    raise Conflict(f"the queue was not moved: {exc}") from exc
        settings = {**props.expected_settings, "postfix:queue_directory": path}
        await self.operations.configure(
            changes.update_properties, who, tag, {"expected_settings": settings}, {}
        )
        others = {
            server: self._props(resource, server).postfix_config
            for server in resource.servers_by_priority
            if server != me
        }
        return Outcome(f"{tag}: the Postfix queue is now {path} (moved on {me})"), others

    async def set_server_queue_path(
        self, path: str, postfix_config: str, move: bool, who: str
    ) -> Outcome:
        """On this server: move the queue of the Postfix at ``postfix_config`` (or only set
        ``queue_directory``, for a backup of a hierarchy whose queue moved)."""
        me = self.operations.server
        if move:
            cluster = await self.operations.cluster()
            for tag, resource in sorted(cluster.resources.items()):
                protects = resource.kit == "mail" and me in resource.instances
                if protects and self._props(resource, me).postfix_config == postfix_config:
                    raise Conflict(
                        f"{tag} protects {postfix_config} on {me}: use "
                        f"`vigil mail set-queue-path {tag} {path}`"
                    )
            try:
                old = await relocate_queue(postfix_config, path, log)
            except KitError as exc:
                raise ValidationError(f"the queue was not moved: {exc}") from exc
            return Outcome(f"{me}: moved the Postfix queue from {old} to {path} (by {who})")
        problems = [p for p in path_problems(path, "") if "canonical" in p]
        if problems:
            raise ValidationError(problems[0])
        result = await run_command(
            ["postconf", "-c", postfix_config, "-e", f"queue_directory = {path}"], log=log,
            timeout=30,
        )  # fmt: skip
        if not result.ok:
            return Outcome(f"postconf failed on {me}", False, result.last_line)
        return Outcome(f"{me}: queue_directory = {path} in {postfix_config}")

    # --- SetSvcMode --------------------------------------------------------------------------

    async def set_service_mode(self, mode: str, services: list[str]) -> Outcome:
        """Services started at boot again (auto) or not (manual), on this server (the
        seed's SetSvcMode). Auto is refused while a mail hierarchy protects them here."""
        if mode not in SERVICE_MODES:
            raise ValidationError(f"mode {mode!r}: use auto or manual")
        names = services or ["postfix", "dovecot"]
        for name in names:
            OptionalService(name=name)  # a service name, without spaces
        cluster = await self.operations.cluster()
        me = self.operations.server
        protecting = sorted(
            t for t, r in cluster.resources.items() if r.kit == "mail" and me in r.instances
        )
        if mode == "auto" and protecting:
            raise Conflict(
                f"{', '.join(protecting)} protect the mail services on {me}: services started "
                "at boot would run outside vigil; delete or unextend the hierarchy first"
            )
        verb = SERVICE_MODES[mode]
        result = await run_command(["systemctl", verb, *names], log=log, timeout=60)
        if not result.ok:
            return Outcome(f"systemctl {verb} failed on {me}", False, result.last_line)
        return Outcome(f"{', '.join(names)}: {mode} start on {me} (systemctl {verb})")
