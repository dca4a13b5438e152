"""The kit contract: what a recovery kit is, and what the agent promises it.

A kit manages one type of resource (an application, an address, a volume...). It is a
subclass of ``Kit`` registered under the entry point group ``vigil.kits``. The agent keeps
one instance per kit and calls its async actions with a ``KitContext``; the kit never
touches the store, never talks to other servers, and keeps no state between calls except
on the server itself (files under ``ctx.state_dir``).

Actions (LifeKeeper's names; OCF's in brackets):

==================  =========================  ==============================================
action              when                       contract
==================  =========================  ==============================================
validate_create     before create              every problem found, each a clear message
create              on the primary, once       may return child resources to create below it
can_extend          on the target, pre-extend  problems, and proposed per-server properties
extend              on the target              records/creates what the target needs
restore [start]     bring in service           idempotent; children are in service already
remove [stop]       take out of service        idempotent; must try everything; parents are
                                               out of service already
quick_check         often, while in service    three-state, read-only, cheap
deep_check          less often                 three-state, read-only, thorough
recover             after a failed check       local recovery; True when it worked
delete              on delete/unextend         cleans up what create/extend made there
eligible            often, on every server     whether this server may take the resource
                    the resource is extended   over now, and why not (read-only; default:
                    to                         it may)
standby             often, where the resource  keeps a standby ready (a mirror target's
                    is extended but not in     receiver); idempotent; default: nothing
                    service
escalate            after a remove that        the forceful stop (kill the resource's
                    overran its timeout, or    processes, force unmount, delete the
                    failed when the agent      address); idempotent; what it did, or
                    must let go (fencing, a    KitError when the resource may still be
                    stop, a copy found at      in service (the lease's fencing then
                    start)                     remains)
==================  =========================  ==============================================

A kit is generic in its properties model: ``class AppKit(Kit[AppProperties])`` sets
``Properties = AppProperties`` and its actions get a ``KitContext[AppProperties]``, whose
``properties`` are already parsed into that model.

Failures are raised as ``KitError`` with a severity: SOFT (recover here), HARD (move the
hierarchy), FATAL (misconfigured: wait for an operator). Timeouts are **enforced by the
agent**; a kit only advertises defaults (``Kit.timeouts``) and may let a property override
them (``Kit.timeout``). A kit action that is cancelled at its timeout must not leave a
child process behind (run commands through ``vigil.kits.process``).
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from vigil.errors import KitError, Severity
from vigil.kits.cgroup import describe_killed, kill_cgroup


class Action(StrEnum):
    VALIDATE_CREATE = "validate_create"
    CREATE = "create"
    CAN_EXTEND = "can_extend"
    EXTEND = "extend"
    RESTORE = "restore"
    REMOVE = "remove"
    QUICK_CHECK = "quick_check"
    DEEP_CHECK = "deep_check"
    RECOVER = "recover"
    DELETE = "delete"
    ELIGIBLE = "eligible"
    STANDBY = "standby"
    ESCALATE = "escalate"


class CheckStatus(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class Check:
    """A check's answer: running, stopped or failed, with a detail for the log and the UI.

    ``warning`` marks a running resource that needs attention (a volume nearly full): it
    stays in service, with the warning as its reason.
    """

    status: CheckStatus
    detail: str = ""
    warning: str = ""

    @classmethod
    def running(cls, detail: str = "", warning: str = "") -> Check:
        return cls(CheckStatus.RUNNING, detail, warning)

    @classmethod
    def stopped(cls, detail: str = "") -> Check:
        return cls(CheckStatus.STOPPED, detail)

    @classmethod
    def failed(cls, detail: str) -> Check:
        return cls(CheckStatus.FAILED, detail)


@dataclass(frozen=True)
class Timeouts:
    """Default timeouts (seconds) a kit advertises for its actions."""

    restore: float = 60.0
    remove: float = 60.0
    quick_check: float = 10.0
    deep_check: float = 30.0
    recover: float = 60.0
    validate: float = 30.0
    delete: float = 30.0
    eligible: float = 10.0
    standby: float = 30.0
    escalate: float = 30.0

    def for_action(self, action: Action) -> float:
        name = {
            Action.VALIDATE_CREATE: "validate",
            Action.CAN_EXTEND: "validate",
            Action.CREATE: "validate",
            Action.EXTEND: "validate",
        }.get(action, action.value)
        value: float = getattr(self, name)
        return value


@dataclass(frozen=True)
class Eligibility:
    """The answer of ``eligible``: whether this server may take the resource over now
    (DESIGN.md section 4: the engine skips a server whose kits say no), with the reason
    shown to an administrator (why not, or a note: "mirroring, in sync")."""

    eligible: bool
    reason: str = ""

    @classmethod
    def yes(cls, reason: str = "") -> Eligibility:
        return cls(True, reason)

    @classmethod
    def no(cls, reason: str) -> Eligibility:
        return cls(False, reason)


@dataclass(frozen=True)
class CheckIntervals:
    """How often the agent runs each check while a resource is in service (seconds)."""

    quick: float = 2.0
    deep: float = 60.0


class KitProperties(BaseModel):
    """Base of every kit's property model.

    Fields are cluster-wide unless marked per server with
    ``Field(json_schema_extra={"per_server": True})``; a value that must be unique across the
    cluster (an address, a mount point) is marked ``{"unique": True}``.
    """

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def per_server_fields(cls) -> set[str]:
        return {
            name
            for name, f in cls.model_fields.items()
            if _extra(f.json_schema_extra, "per_server")
        }

    @classmethod
    def secret_fields(cls) -> set[str]:
        """Fields never shown by the API or logged (``{"secret": True}``)."""
        fields = cls.model_fields.items()
        return {name for name, f in fields if _extra(f.json_schema_extra, "secret")}

    @classmethod
    def unique_fields(cls) -> set[str]:
        return {
            name for name, f in cls.model_fields.items() if _extra(f.json_schema_extra, "unique")
        }


#: a kit's properties model
P = TypeVar("P", bound=KitProperties)


async def stop_cgroup(cgroup: Path | None) -> list[str]:
    """Kill every process left in a resource's cgroup (None: none, nothing to do); what
    was done, for ``Kit.escalate``."""
    if cgroup is None:
        return []
    return describe_killed(await asyncio.to_thread(kill_cgroup, cgroup))


def _extra(extra: object, flag: str) -> bool:
    return isinstance(extra, dict) and bool(extra.get(flag))


@dataclass(frozen=True)
class ChildResource:
    """A resource a kit's ``create`` wants below the one being created: a new one (its
    properties, cluster-wide and per server together), unless a resource of ``kit`` with
    the same unique values exists already (it is adopted); with ``adopt``, the existing
    resource tagged ``tag`` (an ip resource the administrator named)."""

    tag: str
    kit: str
    properties: Mapping[str, Any] = field(default_factory=dict)
    adopt: bool = False


@dataclass(frozen=True)
class ExtendCheck:
    """The answer of ``can_extend``: what prevents the extend, and the per-server properties
    the kit proposes for the target (an administrator may override them)."""

    problems: list[str] = field(default_factory=list)
    proposed: dict[str, Any] = field(default_factory=dict)
    #: the problems the kit can correct itself on the target (``fix_extend``), when asked
    fixable: bool = False


@dataclass(frozen=True)
class Related:
    """Another resource as a kit may see it (read-only): a child of the resource, for
    instance the ip resource whose address a service's checks connect to. ``properties``
    are its values on this server, secrets left out."""

    tag: str
    kit: str
    properties: Mapping[str, Any]


#: records an event in the cluster event log: (kind, message); set by the agent
Notify = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class KitContext(Generic[P]):
    """Everything a kit action may use. Built by the agent for each call, with the
    resource's properties on this server parsed into the kit's model."""

    tag: str
    server: str
    properties: P
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]
    #: a directory on this server for the kit's own files about this one resource
    #: (``<state_dir>/kits/<tag>``; it may not exist yet)
    state_dir: Path
    #: fencing token of the current ownership (0 when not owned, e.g. validate/extend)
    epoch: int = 0
    #: addresses of this server (as registered), for kits that need them
    addresses: tuple[str, ...] = ()
    #: a cgroup v2 directory for the resource's processes (None where cgroups are not
    #: available): run commands with ``run_command(..., cgroup=ctx.cgroup)`` so the fence
    #: guard can stop everything the resource started
    cgroup: Path | None = None
    #: the resource's children (read-only), when the agent knows the cluster
    children: tuple[Related, ...] = ()
    #: the resource's raw properties on every server it is extended to, by server, in
    #: priority order (a kit that must know its peers: the mail kit's home values)
    instances: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: other resources of the same kit extended to this server (an N+1 backup has several)
    others_here: tuple[str, ...] = ()
    #: the server that has the resource's hierarchy in service now (its owner), None when
    #: no server has it, when the agent knows the cluster (a mirror's copy on a server is
    #: the newest only while no other server has taken the mirror over)
    active: str | None = None
    #: how the kit records an event in the cluster event log (None: nowhere, e.g. tests)
    notify: Notify | None = None

    async def event(self, kind: str, message: str) -> None:
        """Record an event in the cluster event log (through the agent; a kit never writes
        to the store). Logged here as well; never raises."""
        self.log.info("%s: %s", self.tag, message)
        if self.notify is not None:
            try:
                await self.notify(kind, message)
            except Exception as exc:  # an event that cannot be recorded is only logged
                self.log.warning("%s: could not record event %s: %s", self.tag, kind, exc)

    def child_of_kit(self, kit: str) -> Related | None:
        """The first child of kit ``kit``, if any."""
        return next((child for child in self.children if child.kit == kit), None)


@dataclass(frozen=True)
class FenceActions:
    """What the fence guard must undo, without the kit, if this server loses its lease
    while the resource is in service. Processes in the resource's cgroup are always
    killed; kits add what outlives processes: addresses, mounts."""

    #: (address, prefix length, interface) to delete
    addresses: tuple[tuple[str, int, str], ...] = ()
    #: mount points to unmount (lazily, after the processes are killed)
    mounts: tuple[str, ...] = ()


class Kit(abc.ABC, Generic[P]):
    """Base class of every recovery kit, generic in its properties model ``P``. Subclasses
    set the class attributes (``Properties`` among them) and implement at least
    ``restore``, ``remove`` and ``quick_check``."""

    #: the resource type, as used in ``--kit`` (the entry point name)
    name: ClassVar[str]
    #: one line for listings
    description: ClassVar[str] = ""
    #: the properties model (a class attribute: a type variable cannot be a ClassVar); a
    #: kit that declares none has none (``KitProperties``, see ``__init_subclass__``)
    Properties: type[P]
    timeouts: ClassVar[Timeouts] = Timeouts()
    check_intervals: ClassVar[CheckIntervals] = CheckIntervals()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not hasattr(cls, "Properties"):
            # setattr: the base model where the kit's own would go (no properties at all)
            setattr(cls, "Properties", KitProperties)  # noqa: B010

    def timeout(self, action: Action, properties: P) -> float:
        """The timeout the agent enforces for ``action`` on a resource with ``properties``.

        Default: the kit's advertised value; kits whose users set timeouts per resource
        (the app kit) override this."""
        return self.timeouts.for_action(action)

    def parse_properties(self, values: Mapping[str, Any]) -> P:
        """Validate raw property values into the kit's model; ``KitError`` (FATAL) names
        every bad field."""
        from pydantic import ValidationError as PydanticError

        try:
            return self.Properties.model_validate(dict(values))
        except PydanticError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'properties'}: {e['msg']}"
                for e in exc.errors()
            )
            raise KitError(f"invalid {self.name} properties: {problems}", Severity.FATAL) from exc

    # --- configuration actions ----------------------------------------------------------

    async def validate_create(self, ctx: KitContext[P]) -> list[str]:
        """Every problem that prevents creating this resource on ``ctx.server``."""
        return []

    async def create(self, ctx: KitContext[P]) -> list[ChildResource]:
        """Make what the resource needs on the primary; may ask for child resources.

        Each child is created below the resource in the same transaction, unless a
        resource of the same kit with the same unique values (a volume's mount point)
        exists: that one is adopted as the child when it belongs to no other hierarchy,
        and the create is refused when it does."""
        return []

    async def can_extend(self, ctx: KitContext[P]) -> ExtendCheck:
        """The pre-extend checks, run on the target server (``ctx.server``)."""
        return ExtendCheck()

    async def extend(self, ctx: KitContext[P]) -> None:
        """Make what the resource needs on the target server."""

    async def fix_extend(self, ctx: KitContext[P]) -> list[str]:
        """Correct on the target what ``can_extend`` found fixable (an administrator asked
        for it: ``vigil extend --fix``); returns each change made. Default: nothing."""
        return []

    async def recorded_properties(self, ctx: KitContext[P]) -> Mapping[str, Any]:
        """Properties found on the primary at create, to be stored with the resource (the
        mail kit: the settings every backup must match). Called after ``create``, within
        its timeout; default: none."""
        return {}

    #: why deleting a hierarchy while it is in service on a backup (not its priority-1
    #: server) is dangerous, and what to do first; None: no such danger. Delete is then
    #: refused unless forced (the seed's "do not delete ... on the backup server").
    delete_on_backup: ClassVar[str | None] = None

    async def delete(self, ctx: KitContext[P]) -> None:
        """Clean up what create/extend made on ``ctx.server``. Idempotent."""

    def fence_actions(self, ctx: KitContext[P]) -> FenceActions:
        """What the fence guard must undo for this resource (beyond killing its cgroup)."""
        return FenceActions()

    # --- failover eligibility and standby -------------------------------------------------

    async def eligible(self, ctx: KitContext[P]) -> Eligibility:
        """Whether ``ctx.server`` may take the resource over now (restore it as the new
        active server), and why not: a mirror target that is not in sync may not. Called
        by the agent on every server the resource is extended to, in service or not;
        read-only and cheap. The agent records the answer in the store (bound to its
        lease) whenever it changes, and the engine never chooses a server whose answer is
        no. Default: eligible (kits that do not override it record nothing)."""
        return Eligibility.yes()

    @classmethod
    def has_eligibility(cls) -> bool:
        """Whether the kit has its own eligibility rules (overrides ``eligible``)."""
        return cls.eligible is not Kit.eligible

    async def standby(self, ctx: KitContext[P]) -> None:
        """Keep what a standby of the resource needs running on ``ctx.server``, where the
        resource is extended but not in service (a mirror target's receiver). Called by
        the agent every few seconds; idempotent; never brings the resource in service.
        Default: nothing."""

    # --- service actions ----------------------------------------------------------------

    @abc.abstractmethod
    async def restore(self, ctx: KitContext[P]) -> None:
        """Bring the resource in service here. Idempotent. Raises ``KitError``."""

    @abc.abstractmethod
    async def remove(self, ctx: KitContext[P]) -> None:
        """Take the resource out of service here. Idempotent; tries everything before
        raising ``KitError`` (a failed remove leads to fencing)."""

    @abc.abstractmethod
    async def quick_check(self, ctx: KitContext[P]) -> Check:
        """Cheap three-state check. Read-only."""

    async def deep_check(self, ctx: KitContext[P]) -> Check:
        """Thorough three-state check. Read-only. Default: the quick check."""
        return await self.quick_check(ctx)

    async def recover(self, ctx: KitContext[P]) -> bool:
        """Local recovery after a failed check; True when the resource runs again.

        Default: restore, then check (``recover_by``)."""
        return await self.recover_by(ctx, self.restore)

    async def escalate(self, ctx: KitContext[P]) -> list[str]:
        """The forceful stop, after a ``remove`` that overran its timeout (or failed when
        the agent must let the resource go: fencing, a stop, a copy found at start).
        Idempotent; returns what it did (empty: nothing was left). ``KitError`` when the
        resource may still be in service afterwards: the agent then leaves it owned here
        and the lease's fencing does the rest. Within ``Timeouts.escalate``.

        Default: every process left in the resource's cgroup is killed; kits override it
        to undo what outlives processes too (an address, a mount)."""
        return await stop_cgroup(ctx.cgroup)

    async def recover_by(
        self, ctx: KitContext[P], *steps: Callable[[KitContext[P]], Awaitable[None]]
    ) -> bool:
        """Run ``steps`` in order, then the quick check: True when the resource runs again.
        A failing step or check is logged and gives False (the agent then fails over); only
        a FATAL error is raised (misconfigured: an operator must act)."""
        try:
            for step in steps:
                await step(ctx)
        except KitError as err:
            if err.severity is Severity.FATAL:
                raise
            ctx.log.warning("%s: local recovery failed: %s", ctx.tag, err)
            return False
        check = await self.quick_check(ctx)
        if check.status is not CheckStatus.RUNNING:
            ctx.log.warning(
                "%s: local recovery failed: quick check says %s after recovery: %s",
                ctx.tag,
                check.status,
                check.detail,
            )
            return False
        return True

    # --- description ----------------------------------------------------------------------

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, description, property JSON schema, timeouts and check intervals."""
        return {
            "name": cls.name,
            "description": cls.description,
            "properties_schema": cls.Properties.model_json_schema(),
            "per_server": sorted(cls.Properties.per_server_fields()),
            "unique": sorted(cls.Properties.unique_fields()),
            "timeouts": dataclasses.asdict(cls.timeouts),
            "check_intervals": {
                "quick": cls.check_intervals.quick,
                "deep": cls.check_intervals.deep,
            },
        }
