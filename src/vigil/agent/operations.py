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
from dataclasses import dataclass, replace
from typing import Any

from vigil.agent.cache import ClusterCache
from vigil.agent.kitrunner import KitRunner
from vigil.agent.storeio import apply_change, event_operation
from vigil.engine import changes
from vigil.engine.changes import Change
from vigil.engine.children import ChildRequest, add_children
from vigil.errors import Conflict, KitError, ValidationError
from vigil.kits.base import Action, Kit, KitProperties
from vigil.model.cluster import Cluster, Hierarchy, Resource
from vigil.model.states import InstanceState
from vigil.store.base import Store

log = logging.getLogger("vigil.agent.operations")


@dataclass(frozen=True)
class Outcome:
    """What an operation did, and where things stand after it."""

    summary: str
    ok: bool = True
    detail: str = ""
    revision: int = 0


class Operations:
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
        doomed = changes.deletion_set(cluster, tag)
        if not force:
            self._refuse_delete_on_backup(cluster, tag, doomed)
        if any(
            t in cluster.owners or (cluster.intents.get(t) and cluster.intents[t].server)
            for t in doomed
        ):
            crossing = frozenset(
                d for d in cluster.dependencies if (d.parent in doomed) != (d.child in doomed)
            )
            detach = Change(
                deleted_dependencies=crossing,
                intents=dict.fromkeys(doomed),
                intent_reason=f"being deleted by {user}",
                summary=f"{tag}: out of service before deletion",
            )
            revision = await self._commit(cluster, detach, user)
            outcome = await self.wait_released(frozenset(doomed), revision, timeout, detach.summary)
            if not outcome.ok:
                return Outcome(f"{tag} was not deleted", False, outcome.detail)
            cluster = await self.cluster()
        change = changes.delete_hierarchy(cluster, tag)
        revision = await self._commit(cluster, change, user)
        return Outcome(change.summary, revision=revision)

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

    def _refuse_delete_on_backup(self, cluster: Cluster, tag: str, doomed: set[str]) -> None:
        hierarchy = cluster.hierarchy(tag)
        active = cluster.intended_server(hierarchy)
        root = cluster.resources[hierarchy.name]
        if active is None or root.servers_by_priority[0] == active:
            return
        for member in sorted(doomed):
            kit_name = cluster.resources[member].kit
            if kit_name not in self.runner.kits.names():
                continue
            warning = self.runner.kit(kit_name).delete_on_backup
            if warning:
                primary = root.servers_by_priority[0]
                raise Conflict(
                    f"{hierarchy.name} is in service on {active}, a backup (its primary is "
                    f"{primary}): {warning.replace('TAG', hierarchy.name)}",
                )

    # --- waiting for the agents ---------------------------------------------------------------

    async def wait_in_service(
        self, tag: str, server: str, revision: int, timeout: float, summary: str
    ) -> Outcome:
        """Wait, on the cache's watch, until the hierarchy of ``tag`` is in service on
        ``server`` after the change written at ``revision`` (or failed, moved, timed out)."""
        deadline = time.monotonic() + timeout
        cluster = await self._view_after(revision, deadline)
        while True:
            if tag not in cluster.resources:
                return Outcome(summary, False, f"{tag} was deleted meanwhile")
            hierarchy = cluster.hierarchy(tag)
            states = {t: cluster.state_of(server, t) for t in hierarchy.tags}
            failed = [
                s
                for s in states.values()
                if s.state is InstanceState.OSF and s.intent_revision >= revision
            ]
            if failed:
                detail = "; ".join(f"{s.tag}: {s.reason}" for s in failed)
                return Outcome(
                    summary,
                    False,
                    f"{hierarchy.name} could not be brought in service on {server}: {detail}",
                )
            intent = cluster.intent(hierarchy)
            if intent and intent.revision > revision and intent.server != server:
                detail = f"{hierarchy.name} is now wanted on {intent.server}: {intent.reason}"
                return Outcome(summary, False, detail)
            if all(s.state.in_service for s in states.values()) and _owned_by(
                cluster, hierarchy, server
            ):
                return Outcome(
                    summary, True, f"{hierarchy.name} is in service on {server}", revision
                )
            if time.monotonic() > deadline:
                pending = ", ".join(
                    f"{t} {s.state} ({s.reason})" for t, s in sorted(states.items())
                )
                return Outcome(
                    summary, False, f"not in service on {server} after {timeout:g}s: {pending}"
                )
            cluster = await self._next_view(cluster, deadline)

    async def wait_released(
        self, tags: frozenset[str], revision: int, timeout: float, summary: str
    ) -> Outcome:
        """Wait, on the cache's watch, until no server owns any of ``tags`` after the change
        written at ``revision`` (or they are wanted somewhere again, or time runs out)."""
        deadline = time.monotonic() + timeout
        cluster = await self._view_after(revision, deadline)
        while True:
            owned = sorted(t for t in tags if t in cluster.owners)
            if not owned:
                return Outcome(summary, True, "out of service on every server", revision)
            moved = [
                cluster.intents[t]
                for t in owned
                if t in cluster.intents
                and cluster.intents[t].revision > revision
                and cluster.intents[t].server
            ]
            if moved:  # e.g. a remove failed and the owner took the hierarchy back
                return Outcome(
                    summary, False, f"wanted on {moved[0].server} again: {moved[0].reason}"
                )
            if time.monotonic() > deadline:
                where = ", ".join(f"{t} on {cluster.owners[t].server}" for t in owned)
                return Outcome(summary, False, f"still in service after {timeout:g}s: {where}")
            cluster = await self._next_view(cluster, deadline)

    # --- waiting on the cache's watch ---------------------------------------------------------

    async def _view_after(self, revision: int, deadline: float) -> Cluster:
        """The cached view once it holds the change written at ``revision`` (or the newest
        one at ``deadline``, on ``time.monotonic``)."""
        self._watching()
        if self.cache.revision < revision:
            await self.cache.changed(revision - 1, max(0.0, deadline - time.monotonic()))
        return self.cache.cluster

    async def _next_view(self, cluster: Cluster, deadline: float) -> Cluster:
        """The next cached view after ``cluster`` (or the same one at ``deadline``)."""
        await self.cache.changed(cluster.revision, max(0.0, deadline - time.monotonic()))
        return self.cache.cluster

    def _watching(self) -> None:
        """Start the watch of a cache of this object's own (an agent's cache is fed by the
        agent): until cancelled, it lives as long as the event loop."""
        if self._own_cache and self._own_watch is None:
            self._own_watch = asyncio.create_task(self.cache.run(), name="operations watch")


#: how long a change waits to show in the agent's cached view (its watch's delay: a poll
#: interval, a round trip) before the operation answers all the same
_VISIBLE = 2.0


@contextlib.contextmanager
def _no_hold(tags: frozenset[str]) -> Iterator[None]:
    yield


def _owned_by(cluster: Cluster, hierarchy: Hierarchy, server: str) -> bool:
    return all(t in cluster.owners and cluster.owners[t].server == server for t in hierarchy.tags)


def _with_server_properties(resource: Resource, server: str, values: Mapping[str, Any]) -> Resource:
    return replace(resource, server_properties={**resource.server_properties, server: dict(values)})
