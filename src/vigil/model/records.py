"""How the cluster is laid out in the store: the keys, and the JSON stored under them.

Every value is a pydantic model with a ``schema_version`` so a later vigil can read what an
earlier one wrote. ``parse_item`` turns one key into a model entry, ``vigil.model.assembly``
puts entries together into a ``Cluster``, and ``cluster_from_snapshot`` does both for one
store snapshot. Pure: no I/O (the store calls live in the agent and the API).

Key layout of the cluster (all under ``PREFIX``; what an agent reads and watches)::

    servers/<server>            ServerRecord      persistent: registered by the agent
    alive/<server>              AliveRecord       bound to the agent's lease
    commpaths/<path id>         CommPathRecord    persistent
    paths/<server>/<path id>    PathRecord        one end's view of a path
    resources/<tag>             ResourceRecord    persistent: kit, properties, instances
    deps/<parent>/<child>       DependencyRecord  persistent
    intent/<tag>                IntentRecord      where the resource is wanted in service
    owner/<tag>                 OwnerRecord       bound to the owner's lease (fencing)
    state/<server>/<tag>        StateRecord       what the agent of <server> observes
    config                      ConfigRecord      bumped by every configuration change
    serverpolicy/<server>       ServerPolicyRecord the server's recovery/failover policies
    stopped/<server>            StoppedRecord     the server was stopped on purpose
    confirm/<hierarchy>         ConfirmRecord     a failover waiting for an operator
    eligible/<server>/<tag>     EligibleRecord    bound to the agent's lease: its kit's
                                                  answer to "may it take <tag> over now?"

The cluster event log lives beside it, under ``EVENTS_PREFIX`` (``/vigil-events/``, not
under ``/vigil/``), so that reading and watching the cluster never touches history::

    <time>-<server>-<n>         EventRecord       one event; keys sort by time

An earlier version kept events under ``/vigil/events/``: a cluster read skips them (an
unknown kind) and the agents' housekeeping deletes them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vigil.errors import ValidationError
from vigil.model.cluster import (
    Cluster,
    CommPath,
    Confirmation,
    Dependency,
    EligibilityReport,
    Intent,
    Observed,
    Ownership,
    PathObservation,
    Resource,
)
from vigil.model.policies import ServerPolicy, StopMode, parse_policy
from vigil.model.states import InstanceState, PathState

PREFIX = "/vigil/"
#: the cluster event log: outside ``PREFIX`` (it must not start with it)
EVENTS_PREFIX = "/vigil-events/"
#: where an earlier version kept the event log (deleted by housekeeping)
LEGACY_EVENTS_PREFIX = PREFIX + "events/"
SCHEMA_VERSION = 1


def key(*parts: str) -> str:
    """A store key under the vigil prefix: ``key("resources", "web")``."""
    return PREFIX + "/".join(parts)


def event_key(name: str) -> str:
    """The store key of the event called ``name`` (``<time>-<server>-<n>``)."""
    return EVENTS_PREFIX + name


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    schema_version: int = SCHEMA_VERSION

    def dump(self) -> bytes:
        return self.model_dump_json().encode()


class ServerRecord(Record):
    name: str
    api_url: str
    addresses: list[str] = Field(default_factory=list)
    registered_at: float = 0.0


class AliveRecord(Record):
    """Rewritten with every lease renewal (``beat`` counts them): its revision is the
    heartbeat other agents time with their own clocks against ``ttl``.

    ``failsafe``: how long past this renewal the agent may hold its lease through a store
    outage (0: never); ``members``: the servers it would then ask, over comm paths, whether
    they cannot reach the store either. An observer listed there times the heartbeat
    against ``ttl``, any other against ``ttl + failsafe`` (``vigil.agent.failsafe``)."""

    started_at: float
    pid: int
    maintenance: bool = False
    ttl: float = 0.0
    beat: int = 0
    failsafe: float = 0.0
    members: tuple[str, ...] = ()


class CommPathRecord(Record):
    server_a: str
    address_a: str
    server_b: str
    address_b: str
    heartbeat_interval: float = 1.0
    max_missed: int = 5


class PathRecord(Record):
    state: PathState
    last_heartbeat: float = 0.0


class ResourceRecord(Record):
    tag: str
    kit: str
    properties: dict[str, Any] = Field(default_factory=dict)
    server_properties: dict[str, dict[str, Any]] = Field(default_factory=dict)
    instances: dict[str, int] = Field(default_factory=dict)
    policies: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, resource: Resource) -> ResourceRecord:
        return cls(
            tag=resource.tag,
            kit=resource.kit,
            properties=dict(resource.properties),
            server_properties={s: dict(p) for s, p in resource.server_properties.items()},
            instances=dict(resource.instances),
            policies=dict(resource.policies),
        )

    def to_model(self) -> Resource:
        return Resource(
            tag=self.tag,
            kit=self.kit,
            properties=self.properties,
            server_properties=self.server_properties,
            instances=self.instances,
            policies=self.policies,
        )


class DependencyRecord(Record):
    created_at: float = 0.0


class IntentRecord(Record):
    server: str | None
    reason: str = ""
    requested_by: str = ""
    at: float = 0.0
    origin: str | None = None
    tried: list[str] = Field(default_factory=list)


class ServerPolicyRecord(Record):
    policy: dict[str, Any] = Field(default_factory=dict)


class StoppedRecord(Record):
    mode: StopMode
    at: float = 0.0


class ConfirmRecord(Record):
    target: str
    origin: str
    since: float
    decision: bool | None = None


class OwnerRecord(Record):
    server: str
    since: float = 0.0


class StateRecord(Record):
    state: InstanceState
    reason: str = ""
    since: float = 0.0
    intent_revision: int = 0


class EligibleRecord(Record):
    eligible: bool
    reason: str = ""
    since: float = 0.0


class ConfigRecord(Record):
    changed_at: float = 0.0
    summary: str = ""


class EventRecord(Record):
    at: float
    server: str
    kind: str
    message: str
    hierarchy: str | None = None
    tag: str | None = None


def _load(model: type[Record], value: bytes) -> Any:
    return model.model_validate_json(value)


#: the kinds of keys a ``Cluster`` is made of (the first part of a key under ``PREFIX``)
KINDS = (
    "config",
    "servers",
    "alive",
    "commpaths",
    "paths",
    "resources",
    "deps",
    "intent",
    "serverpolicy",
    "stopped",
    "confirm",
    "owner",
    "state",
    "eligible",
)


@dataclass(frozen=True)
class Item:
    """One key of the store, parsed: its ``kind``, its ``name`` in the ``Cluster`` mapping of
    that kind (a tag, a server, ``(server, tag)`` for states...), and the model ``entry``:

    ==============  =====================  ==============================================
    kind            name                   entry
    ==============  =====================  ==============================================
    config          ``""``                 the key's mod revision (``int``)
    servers         server                 ``ServerRecord``
    alive           server                 ``(AliveRecord, mod revision)``
    commpaths       path id                ``CommPath``
    paths           ``server/path id``     ``PathObservation``
    resources       tag                    ``Resource``
    deps            ``parent/child``       ``Dependency``
    intent          tag                    ``Intent``
    serverpolicy    server                 ``ServerPolicy``
    stopped         server                 ``StopMode``
    confirm         hierarchy              ``Confirmation``
    owner           tag                    ``Ownership``
    state           ``(server, tag)``      ``Observed``
    eligible        ``(server, tag)``      ``EligibilityReport``
    ==============  =====================  ==============================================
    """

    kind: str
    name: Hashable
    entry: Any


def parse_item(full_key: str, value: bytes, create_revision: int, mod_revision: int) -> Item | None:
    """Parse one key of a snapshot or a watch. None for keys outside ``PREFIX``, of a kind
    this version does not know (a newer writer's, or the event log of an older version
    under ``/vigil/events/``), or whose value is malformed."""
    if not full_key.startswith(PREFIX):
        return None
    kind, _, rest = full_key[len(PREFIX) :].partition("/")
    parse = _PARSERS.get(kind)
    if parse is None:
        return None
    try:
        name, entry = parse(rest, value, create_revision, mod_revision)
    except (ValueError, ValidationError):
        return None
    return Item(kind, name, entry)


_Parsed = tuple[Hashable, Any]


def _config(rest: str, value: bytes, create: int, mod: int) -> _Parsed:
    return "", mod


def _server(rest: str, value: bytes, create: int, mod: int) -> _Parsed:
    return rest, _load(ServerRecord, value)


def _alive(rest: str, value: bytes, create: int, mod: int) -> _Parsed:
    return rest, (_load(AliveRecord, value), mod)


def _comm_path(rest: str, value: bytes, create: int, mod: int) -> _Parsed:
    r = _load(CommPathRecord, value)
    path = CommPath(
        r.server_a, r.address_a, r.server_b, r.address_b, r.heartbeat_interval, r.max_missed
    )
    return rest, path


def _path(rest: str, value: bytes, create: int, mod: int) -> _Parsed:
    server, _, path_id = rest.partition("/")
    p = _load(PathRecord, value)
    return rest, PathObservation(path_id, server, p.state, p.last_heartbeat)


def _resource(rest: str, value: bytes, create: int, mod: int) -> _Parsed:
    return rest, _load(ResourceRecord, value).to_model()


def _dependency(rest: str, value: bytes, create: int, mod: int) -> _Parsed:
    parent, _, child = rest.partition("/")
    return rest, Dependency(parent, child)


def _intent(rest: str, value: bytes, create: int, mod: int) -> _Parsed:
    i = _load(IntentRecord, value)
    return rest, Intent(rest, i.server, mod, i.reason, i.origin, tuple(i.tried))


def _server_policy(rest: str, value: bytes, create: int, mod: int) -> _Parsed:
    values = _load(ServerPolicyRecord, value).policy
    return rest, parse_policy(ServerPolicy, values, rest)


def _stopped(rest: str, value: bytes, create: int, mod: int) -> _Parsed:
    return rest, _load(StoppedRecord, value).mode


def _confirm(rest: str, value: bytes, create: int, mod: int) -> _Parsed:
    c = _load(ConfirmRecord, value)
    return rest, Confirmation(rest, c.target, c.origin, c.since, c.decision)


def _owner(rest: str, value: bytes, create: int, mod: int) -> _Parsed:
    return rest, Ownership(rest, _load(OwnerRecord, value).server, create)


def _state(rest: str, value: bytes, create: int, mod: int) -> _Parsed:
    server, _, tag = rest.partition("/")
    s = _load(StateRecord, value)
    return (server, tag), Observed(tag, server, s.state, s.reason, s.since, s.intent_revision)


def _eligible(rest: str, value: bytes, create: int, mod: int) -> _Parsed:
    server, _, tag = rest.partition("/")
    e = _load(EligibleRecord, value)
    return (server, tag), EligibilityReport(tag, server, e.eligible, e.reason, e.since)


_PARSERS: dict[str, Callable[[str, bytes, int, int], _Parsed]] = {
    "config": _config,
    "servers": _server,
    "alive": _alive,
    "commpaths": _comm_path,
    "paths": _path,
    "resources": _resource,
    "deps": _dependency,
    "intent": _intent,
    "serverpolicy": _server_policy,
    "stopped": _stopped,
    "confirm": _confirm,
    "owner": _owner,
    "state": _state,
    "eligible": _eligible,
}


def cluster_from_snapshot(revision: int, items: list[tuple[str, bytes, int, int]]) -> Cluster:
    """Build a ``Cluster`` from ``(key, value, create_revision, mod_revision)`` tuples read at
    ``revision`` under ``PREFIX``. Unknown keys and malformed values are skipped (a newer
    writer may have added keys this version does not know). ``parse_item`` for each key,
    then ``assembly.ClusterBuilder`` puts them together."""
    from vigil.model.assembly import ClusterBuilder  # it builds on this module's parsers

    builder = ClusterBuilder()
    for full_key, value, create_revision, mod_revision in items:
        builder.put(full_key, value, mod_revision, create_revision)
    return builder.build(revision)
