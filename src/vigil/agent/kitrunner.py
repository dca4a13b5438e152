"""Running kit actions for the agent: building the context, enforcing the timeout.

The agent owns every timeout (kits only advertise them): an action that overruns is
cancelled (the kit's command helper kills its process group on cancellation) and reported
as ``KitTimeout``. Unexpected exceptions from a kit become ``KitError`` so that one buggy
kit cannot take the agent down.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from vigil.agent.fencing import Cgroups
from vigil.agent.secrets import SecretBox
from vigil.aio import within
from vigil.errors import KitError, KitTimeout, Severity, ValidationError, VigilError
from vigil.kits.base import (
    Action,
    Check,
    ChildResource,
    ExtendCheck,
    Kit,
    KitContext,
    KitProperties,
    Related,
)
from vigil.kits.registry import KitRegistry
from vigil.model.cluster import Cluster, Resource

T = TypeVar("T")
log = logging.getLogger("vigil.agent")


class KitRunner:
    """Runs kit actions on this server."""

    def __init__(
        self,
        kits: KitRegistry,
        server: str,
        state_dir: Path,
        addresses: tuple[str, ...],
        cgroups: Cgroups | None = None,
    ) -> None:
        self.kits = kits
        self.server = server
        self.state_dir = state_dir
        self.addresses = addresses
        self.cgroups = cgroups
        #: opens the secret properties the store holds sealed (no key: stored as given)
        self.secrets = SecretBox(None)
        #: the agent's current view of the cluster, for what a kit may see of its
        #: neighbours (children, its instances on other servers); None: nothing
        self.view: Callable[[], Cluster] | None = None
        #: records an event (kind, message, hierarchy) in the cluster event log
        self.notify: Callable[..., Awaitable[None]] | None = None
        #: told every action's (action, kit, tag, seconds, outcome), for the metrics
        self.measure: Callable[[str, str, str, float, str], None] | None = None

    def kit(self, name: str) -> Kit[KitProperties]:
        return self.kits.get(name)

    def context(
        self,
        tag: str,
        kit: Kit[KitProperties],
        properties: dict[str, Any],
        epoch: int = 0,
        cgroup: Path | None = None,
    ) -> KitContext[KitProperties]:
        parsed = kit.parse_properties(
            self.secrets.open_fields(properties, kit.Properties.secret_fields())
        )
        return KitContext(
            tag=tag,
            server=self.server,
            properties=parsed,
            log=logging.getLogger(f"vigil.kit.{kit.name}.{tag}"),
            epoch=epoch,
            state_dir=self.state_dir / "kits" / tag,
            addresses=self.addresses,
            cgroup=cgroup,
        )

    def resource_context(
        self, resource: Resource, epoch: int = 0, cluster: Cluster | None = None
    ) -> tuple[Kit[KitProperties], KitContext[KitProperties]]:
        """The context of ``resource`` on this server; what it may see of its neighbours
        comes from ``cluster`` (default: the agent's current view)."""
        kit = self.kit(resource.kit)
        cgroup = self.cgroups.path(resource.tag) if self.cgroups else None
        ctx = self.context(resource.tag, kit, resource.properties_on(self.server), epoch, cgroup)
        if cluster is None and self.view is not None:
            cluster = self.view()
        return kit, replace(ctx, **self._neighbours(resource, cluster))

    def _neighbours(self, resource: Resource, cluster: Cluster | None) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "instances": {s: resource.properties_on(s) for s in resource.servers_by_priority}
        }
        if self.notify is not None:
            hierarchy = None
            if cluster is not None and resource.tag in cluster.resources:
                hierarchy = cluster.hierarchy(resource.tag).name
            extra["notify"] = functools.partial(self.notify, hierarchy=hierarchy)
        if cluster is None:
            return extra
        children = []
        for tag in cluster.children(resource.tag):
            child = cluster.resources[tag]
            secret = (
                self.kit(child.kit).Properties.secret_fields() if child.kit in self.kits else set()
            )
            values = {k: v for k, v in child.properties_on(self.server).items() if k not in secret}
            children.append(Related(tag, child.kit, values))
        extra["children"] = tuple(children)
        if resource.tag in cluster.resources:
            owners = cluster.owner_of(cluster.hierarchy(resource.tag))
            extra["active"] = min(owners) if owners else None
        extra["others_here"] = tuple(
            sorted(
                tag
                for tag, other in cluster.resources.items()
                if other.kit == resource.kit
                and tag != resource.tag
                and self.server in other.instances
            )
        )
        return extra

    async def run(
        self,
        action: Action,
        kit: Kit[KitProperties],
        ctx: KitContext[KitProperties],
        call: Callable[[KitContext[KitProperties]], Awaitable[T]],
    ) -> T:
        """Run ``call(ctx)`` (a bound kit action) within the action's timeout."""
        timeout = kit.timeout(action, ctx.properties)
        started, outcome = time.monotonic(), "error"
        try:
            result = await within(call(ctx), timeout)  # never wait_for: see vigil.aio
            outcome = result.status.value if isinstance(result, Check) else "ok"
            return result
        except TimeoutError as exc:
            outcome = "timeout"
            raise KitTimeout(
                f"{action} of {ctx.tag} ({kit.name}) on {self.server} did not finish "
                f"within {timeout:g}s and was stopped",
                Severity.HARD,
            ) from exc
        except VigilError:
            raise
        except Exception as exc:  # a kit bug must not stop the agent
            log.exception(
                "kit %s raised an unexpected error during %s of %s", kit.name, action, ctx.tag
            )
            raise KitError(
                f"{action} of {ctx.tag} ({kit.name}) on {self.server} failed unexpectedly: "
                f"{type(exc).__name__}: {exc}",
                Severity.HARD,
            ) from exc
        finally:
            if self.measure is not None:
                self.measure(str(action), kit.name, ctx.tag, time.monotonic() - started, outcome)

    # thin, typed shortcuts for the common actions

    async def restore(self, resource: Resource, epoch: int) -> None:
        kit, ctx = self.resource_context(resource, epoch)
        await self.run(Action.RESTORE, kit, ctx, kit.restore)

    async def remove(self, resource: Resource, epoch: int = 0) -> None:
        kit, ctx = self.resource_context(resource, epoch)
        await self.run(Action.REMOVE, kit, ctx, kit.remove)

    async def escalate(self, resource: Resource) -> list[str]:
        """The kit's forceful stop of ``resource`` after a remove that failed or overran
        (``Kit.escalate``): what it did. ``KitError`` when it failed too."""
        kit, ctx = self.resource_context(resource)
        return await self.run(Action.ESCALATE, kit, ctx, kit.escalate)

    async def check(self, resource: Resource, action: Action = Action.QUICK_CHECK) -> Check:
        """A quick or deep check; overrunning its timeout is a failed check."""
        kit, ctx = self.resource_context(resource)
        call = kit.deep_check if action is Action.DEEP_CHECK else kit.quick_check
        try:
            return await self.run(action, kit, ctx, call)
        except KitTimeout as exc:
            return Check.failed(str(exc))

    async def recover(self, resource: Resource) -> bool:
        kit, ctx = self.resource_context(resource)
        return await self.run(Action.RECOVER, kit, ctx, kit.recover)

    async def validate_create(
        self, tag: str, kit_name: str, properties: dict[str, Any]
    ) -> list[str]:
        kit = self.kit(kit_name)
        try:
            ctx = self.context(tag, kit, properties)
        except KitError as exc:
            return [str(exc)]
        return await self.run(Action.VALIDATE_CREATE, kit, ctx, kit.validate_create)

    async def create(self, resource: Resource) -> tuple[list[ChildResource], dict[str, Any]]:
        """The kit's ``create`` on this server: the children it asks for, and the
        properties it records (``recorded_properties``)."""
        kit = self.kit(resource.kit)
        ctx = self.context(resource.tag, kit, resource.properties_on(self.server))
        try:
            children = await self.run(Action.CREATE, kit, ctx, kit.create)
            recorded = await self.run(Action.CREATE, kit, ctx, kit.recorded_properties)
        except KitError as exc:
            raise ValidationError(f"cannot create {resource.tag} on {self.server}: {exc}") from exc
        return children, dict(recorded)

    async def can_extend(self, resource: Resource, properties: dict[str, Any]) -> ExtendCheck:
        """The kit's pre-extend checks on this server for ``resource`` (whose instances
        include this server) with ``properties`` (its values here)."""
        try:
            kit, ctx = self.resource_context(resource)
            secret = kit.Properties.secret_fields()
            opened = self.secrets.open_fields(properties, secret)
            ctx = replace(ctx, properties=kit.parse_properties(opened))
        except KitError as exc:
            return ExtendCheck(problems=[str(exc)])
        return await self.run(Action.CAN_EXTEND, kit, ctx, kit.can_extend)

    async def fix_extend(self, resource: Resource) -> list[str]:
        """The kit corrects on this server what its pre-extend checks found."""
        kit, ctx = self.resource_context(resource)
        try:
            return await self.run(Action.EXTEND, kit, ctx, kit.fix_extend)
        except KitError as exc:
            raise ValidationError(
                f"cannot extend {resource.tag} to {self.server}: the fixes failed: {exc}"
            ) from exc

    async def delete(self, resource: Resource) -> None:
        kit, ctx = self.resource_context(resource)
        await self.run(Action.DELETE, kit, ctx, kit.delete)
