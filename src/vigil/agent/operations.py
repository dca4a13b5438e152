"""The administrator's operations, carried out by an agent for the API.

Each operation reads the cluster, validates everything (the engine's rules, then the kits'
checks on this server), and writes one transaction guarded by the configuration revision it
validated against. Operations that change where something is in service then wait for the
agents to report the outcome, so the caller learns whether it worked.

Kit checks run where the resource will live: the API forwards ``create`` and ``extend`` to
the agent of the target server, which runs them here (``self.server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from vigil.agent.cache import ClusterCache
from vigil.agent.kitrunner import KitRunner
from vigil.agent.storeio import apply_change, event_operation
from vigil.agent.waiting import Outcome, Waiting
from vigil.engine import changes, deletion
from vigil.engine.changes import Change
from vigil.engine.children import ChildRequest, add_children
from vigil.errors import KitError, ValidationError
from vigil.kits.base import Action, Kit, KitProperties
from vigil.model.cluster import Cluster, Resource
from vigil.store.base import Store

log = logging.getLogger("vigil.agent.operations")

__all__ = ["Operations", "Outcome"]


class Operations(Waiting):
    def __init__(
        self, store: Store, runner: KitRunner, server: str, cache: ClusterCache | None = None
    ) -> None:
        """``cache``: the agent's view of the cluster, kept current by its watch (what
        operations wait on, and status views show); without one, Operations keeps its own,
        watching from the first time it waits."""
        self.store = store
        self.runner = runner
        self.server = server
        self.cache = cache or ClusterCache(store)
        #: keeps the agent's steps and checks off some resources while an administrator's
        #: operation works on them (the agent sets it; alone, nothing to keep off)
        self.hold: Callable[[frozenset[str]], AbstractContextManager[None]] = _no_hold
        self._own_cache = cache is None
        self._own_watch: asyncio.Task[None] | None = None

    async def cluster(self) -> Cluster:
        """A fresh, linearizable view to validate a change against. Not the cached view:
        a change is guarded only by the configuration revision, so a view a watch delay
        old could let through what the cluster no longer allows (a server that has just
        died, an intent just changed); a fresh read is cheap now that the event log is
        outside the cluster, and only the keys that changed since the cache's view are
        parsed again. Raises ``StoreError`` when the store fails."""
        return await self.cache.reload()

    def secret_fields(self, kit_name: str) -> set[str]:
        """Properties of ``kit_name`` that the API never shows."""
        if kit_name not in self.runner.kits.names():
            return set()
        return self.runner.kit(kit_name).Properties.secret_fields()

    async def _commit(self, cluster: Cluster, change: Change, user: str) -> int:
        """Write ``change`` and the event that records it, in one transaction; return once
        this agent's cached view has it too (read your writes: a status asked for next
        shows the change), or after ``_VISIBLE`` seconds."""
        event = event_operation(self.server, "configuration", f"{change.summary} (by {user})")
        revision = await apply_change(self.store, cluster, change, user, event)
        log.info("%s (by %s)", change.summary, user)
        await self._view_after(revision, time.monotonic() + _VISIBLE)
        return revision

    # --- properties ------------------------------------------------------------------------

    def split_properties(
        self, kit: Kit[KitProperties], values: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(cluster-wide, per-server) by the kit's declaration of its fields."""
        per_server = kit.Properties.per_server_fields()
        shared = {k: v for k, v in values.items() if k not in per_server}
        mine = {k: v for k, v in values.items() if k in per_server}
        return shared, mine

    def check_properties(self, cluster: Cluster, resource: Resource, server: str) -> list[str]:
        """Problems with ``resource``'s properties on ``server``: type errors, and values that
        must be unique in the cluster but are used by another resource of the same kit."""
        kit = self.runner.kit(resource.kit)
        secret = kit.Properties.secret_fields()
        try:
            kit.parse_properties(
                self.runner.secrets.open_fields(resource.properties_on(server), secret)
            )
        except KitError as exc:
            return [str(exc)]
        problems = []
        for name in sorted(kit.Properties.unique_fields()):
            value = resource.properties_on(server).get(name)
            if value is None:
                continue  # an optional unique value that is not set collides with nothing
            for other in cluster.resources.values():
                if other.tag == resource.tag or other.kit != resource.kit:
                    continue
                if any(other.properties_on(s).get(name) == value for s in other.instances):
                    problems.append(f"{name} {value!r} is already used by resource {other.tag}")
        return problems

    # --- create ---------------------------------------------------------------------------

    async def create_resource(
        self, tag: str, kit_name: str, properties: Mapping[str, Any], user: str, timeout: float
    ) -> Outcome:
        cluster = await self.cluster()
        kit = self.runner.kit(kit_name) if kit_name in self.runner.kits.names() else None
        shared, mine = self.split_properties(kit, properties) if kit else (dict(properties), {})
        change = changes.create_resource(
            cluster,
            tag=tag,
            kit=kit_name,
            server=self.server,
            properties=shared,
            server_properties=mine,
            known_kits=self.runner.kits.names(),
        )
        resource = change.resources[tag]
        problems = self.check_properties(cluster, resource, self.server)
        if not problems:
            problems = await self.runner.validate_create(
                tag, kit_name, resource.properties_on(self.server)
            )
        if problems:
            raise ValidationError(f"cannot create {tag} on {self.server}: {problems[0]}", problems)
        change = await self._with_children(cluster, change, tag)
        revision = await self._commit(cluster, self._sealed(change), user)
        return await self.wait_in_service(tag, self.server, revision, timeout, change.summary)

    async def _with_children(self, cluster: Cluster, change: Change, tag: str) -> Change:
        """The kit's ``create`` on this server: the properties it recorded, and the child
        resources it asked for (adopted or created, each new one checked by its kit)."""
        resource = change.resources[tag]
        requested, recorded = await self.runner.create(resource)
        if recorded:
            shared, mine = self.split_properties(self.runner.kit(resource.kit), recorded)
            here = {**resource.server_properties.get(self.server, {}), **mine}
            resource = replace(
                resource,
                properties={**resource.properties, **shared},
                server_properties={**resource.server_properties, self.server: here},
            )
            change = replace(change, resources={**change.resources, tag: resource})
        requests = []
        for child in requested:
            if child.kit not in self.runner.kits.names():
                raise ValidationError(
                    f"cannot create {tag}: its kit asks for a {child.kit} resource, and the "
                    f"{child.kit} kit is not installed on {self.server}"
                )
            kit = self.runner.kit(child.kit)
            shared, mine = self.split_properties(kit, child.properties)
            requests.append(
                ChildRequest(
                    child.tag, child.kit, shared, mine, child.adopt,
                    frozenset(kit.Properties.unique_fields()),
                )
            )  # fmt: skip
        change, created = add_children(cluster, change, tag, self.server, requests)
        problems = []
        for child_tag in created:
            made = change.resources[child_tag]
            problems += [
                f"{child_tag}: {p}" for p in self.check_properties(cluster, made, self.server)
            ]
            if not problems:
                problems += [
                    f"{child_tag}: {p}"
                    for p in await self.runner.validate_create(
                        child_tag, made.kit, made.properties_on(self.server)
                    )
                ]
        if problems:
            raise ValidationError(f"cannot create {tag} on {self.server}: {problems[0]}", problems)
        return change

    # --- extend / unextend -------------------------------------------------------------------

    async def extend(
        self,
        tag: str,
        priority: int | None,
        overrides: Mapping[str, Mapping[str, Any]],
        user: str,
        *,
        fix: bool = False,
    ) -> Outcome:
        """Extend the hierarchy of ``tag`` to this server (the target). With ``fix``, a kit
        whose pre-extend checks found what it can correct corrects it first."""
        cluster = await self.cluster()
        change, priority = changes.extend(cluster, tag, self.server, priority)
        unknown = sorted(set(overrides) - set(change.resources))
        if unknown:
            raise ValidationError(
                f"properties given for {', '.join(unknown)}, which are not in this hierarchy"
            )
        resources, problems, fixed = {}, [], []
        for member, resource in sorted(change.resources.items()):
            updated, found, made = await self._prepare_extend(
                cluster, resource, overrides.get(member, {}), fix
            )
            resources[member] = updated
            problems += found
            fixed += made
        if problems:
            raise ValidationError(f"cannot extend {tag} to {self.server}: {problems[0]}", problems)
        change = self._sealed(replace(change, resources=resources))
        for resource in resources.values():
            kit, ctx = self.runner.resource_context(resource)
            try:
                await self.runner.run(Action.EXTEND, kit, ctx, kit.extend)
            except KitError as exc:
                raise ValidationError(f"cannot extend {tag} to {self.server}: {exc}") from exc
        revision = await self._commit(cluster, change, user)
        detail = f"fixed before extending: {'; '.join(fixed)}" if fixed else ""
        return Outcome(change.summary, detail=detail, revision=revision)

    async def preview_extend(self, tag: str) -> dict[str, Any]:
        """What ``extend`` to this server would do, without doing it (the web UI's extend
        wizard): the default priority and, per resource, the per-server properties it would
        store here (given none: the kit's proposals over the template's values, secrets
        masked) and the problems its pre-extend checks find. Refused as ``extend`` is."""
        cluster = await self.cluster()
        change, priority = changes.extend(cluster, tag, self.server, None)
        resources = {}
        for member, resource in sorted(change.resources.items()):
            candidate, problems, _ = await self._prepare_extend(cluster, resource, {}, False)
            kit = self.runner.kit(resource.kit)
            secret = kit.Properties.secret_fields()
            values = candidate.server_properties.get(self.server, {})
            resources[member] = {
                "kit": resource.kit,
                "per_server": sorted(kit.Properties.per_server_fields()),
                "values": {k: ("********" if k in secret else v) for k, v in values.items()},
                "problems": problems,
            }
        return {"server": self.server, "priority": priority, "resources": resources}

    async def _prepare_extend(
        self, cluster: Cluster, resource: Resource, override: Mapping[str, Any], fix: bool
    ) -> tuple[Resource, list[str], list[str]]:
        """The resource with this server's properties set (given, else proposed by the kit's
        pre-extend checks, else copied from the template), and the problems found."""
        kit = self.runner.kit(resource.kit)
        template = resource.servers_by_priority[0]
        per_server = kit.Properties.per_server_fields()
        bad = sorted(set(override) - per_server)
        if bad:
            return resource, [f"{resource.tag}: {', '.join(bad)} cannot differ per server"], []
        values = {k: v for k, v in resource.server_properties.get(template, {}).items()}
        values.update(override)
        candidate = _with_server_properties(resource, self.server, values)
        check = await self.runner.can_extend(candidate, candidate.properties_on(self.server))
        proposed = {k: v for k, v in check.proposed.items() if k not in override}
        if proposed:
            # the kit proposed values: check again with exactly what will be stored
            values.update(proposed)
            candidate = _with_server_properties(resource, self.server, values)
            check = await self.runner.can_extend(candidate, candidate.properties_on(self.server))
        made: list[str] = []
        if check.problems and check.fixable and fix:
            made = await self.runner.fix_extend(candidate)
            check = await self.runner.can_extend(candidate, candidate.properties_on(self.server))
        elif check.problems and check.fixable:
            check = replace(
                check,
                problems=[
                    *check.problems,
                    f"extend with --fix to let vigil make these changes on {self.server}",
                ],
            )
        problems = [f"{resource.tag}: {p}" for p in check.problems]
        problems += [
            f"{resource.tag}: {p}" for p in self.check_properties(cluster, candidate, self.server)
        ]
        return candidate, problems, [f"{resource.tag}: {m}" for m in made]

    async def unextend(self, tag: str, server: str, user: str) -> Outcome:
        cluster = await self.cluster()
        change = changes.unextend(cluster, tag, server)
        revision = await self._commit(cluster, change, user)
        return Outcome(change.summary, revision=revision)

    # --- dependencies, properties, comm paths: configuration only ------------------------

    async def configure(self, build: Any, user: str, *args: Any, **kwargs: Any) -> Outcome:
        """Validate with ``build(cluster, *args)`` (an engine function) and commit."""
        cluster = await self.cluster()
        change: Change = build(cluster, *args, **kwargs)
        for resource in change.resources.values():
            for server in resource.instances:
                problems = self.check_properties(cluster, resource, server)
                if problems:
                    raise ValidationError(
                        f"invalid properties for {resource.tag}: {problems[0]}", problems
                    )
        revision = await self._commit(cluster, self._sealed(change), user)
        return Outcome(change.summary, revision=revision)

    # --- in service, out of service, delete -------------------------------------------------

    async def in_service(self, tag: str, server: str, user: str, timeout: float) -> Outcome:
        cluster = await self.cluster()
        change = changes.bring_in_service(cluster, tag, server, user)
        revision = await self._commit(cluster, change, user)
        return await self.wait_in_service(tag, server, revision, timeout, change.summary)

    async def out_of_service(self, tag: str, user: str, timeout: float) -> Outcome:
        cluster = await self.cluster()
        change = changes.take_out_of_service(cluster, tag, user)
        revision = await self._commit(cluster, change, user)
        return await self.wait_released(
            cluster.hierarchy(tag).tags, revision, timeout, change.summary
        )

    async def delete(self, tag: str, user: str, timeout: float, *, force: bool = False) -> Outcome:
        """Out of service (just the doomed part), then delete from every server. Refused,
        unless ``force``, while in service on a backup when one of its kits warns against
        that (the mail kit: its users are homed on the backup)."""
        cluster = await self.cluster()
        if not force:
            deletion.refuse_on_backup(cluster, tag, self._delete_warnings())
        detach = deletion.detach(cluster, tag, user)
        if detach is not None:
            revision = await self._commit(cluster, detach, user)
            doomed = frozenset(detach.intents)
            outcome = await self.wait_released(doomed, revision, timeout, detach.summary)
            if not outcome.ok:
                return Outcome(f"{tag} was not deleted", False, outcome.detail)
            cluster = await self.cluster()
        change = changes.delete_hierarchy(cluster, tag)
        revision = await self._commit(cluster, change, user)
        return Outcome(change.summary, revision=revision)

    def _delete_warnings(self) -> dict[str, str]:
        """Each installed kit's warning against deleting a hierarchy that is in service
        on a backup (``Kit.delete_on_backup``)."""
        kits = self.runner.kits
        return {
            name: warning
            for name in kits.names()
            if (warning := kits.get(name).delete_on_backup) is not None
        }

    def _sealed(self, change: Change) -> Change:
        """``change`` with every secret property sealed (encrypted at rest)."""
        box = self.runner.secrets
        resources = {}
        for tag, resource in change.resources.items():
            if resource.kit not in self.runner.kits.names():
                resources[tag] = resource
                continue
            secret = self.runner.kit(resource.kit).Properties.secret_fields()
            resources[tag] = replace(
                resource,
                properties=box.seal_fields(resource.properties, secret),
                server_properties={
                    s: box.seal_fields(p, secret) for s, p in resource.server_properties.items()
                },
            )
        return replace(change, resources=resources)


#: how long a change waits to show in the agent's cached view (its watch's delay: a poll
#: interval, a round trip) before the operation answers all the same
_VISIBLE = 2.0


@contextlib.contextmanager
def _no_hold(tags: frozenset[str]) -> Iterator[None]:
    yield


def _with_server_properties(resource: Resource, server: str, values: Mapping[str, Any]) -> Resource:
    return replace(resource, server_properties={**resource.server_properties, server: dict(values)})
