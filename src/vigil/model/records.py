"""How the cluster is laid out in the store: the keys, and the JSON stored under them.

Every value is a pydantic model with a ``schema_version`` so a later vigil can read what an
earlier one wrote. ``cluster_from_snapshot`` turns one store snapshot into a ``Cluster``.
Pure: no I/O (the store calls live in the agent and the API).

Key layout (all under ``PREFIX``)::

    servers/<server>            ServerRecord      persistent: registered by the agent
    alive/<server>              AliveRecord       bound to the agent's lease
    commpaths/<path id>         CommPathRecord    persistent
    paths/<server>/<path id>    PathRecord        one end's view of a path
    resources/<tag>             ResourceRecord    persistent: kit, properties, instances
    deps/<parent>/<child>       DependencyRecord  persistent
    intent/<tag>                IntentRecord      where the resource is wanted in service
    owner/<tag>                 OwnerRecord       bound to the owner's lease (fencing)
    state/<server>/<tag>        StateRecord       what the agent of <server> observes
    events/<time>-<server>-<n>  EventRecord       the cluster event log
    config                      ConfigRecord      bumped by every configuration change
    serverpolicy/<server>       ServerPolicyRecord the server's recovery/failover policies
    stopped/<server>            StoppedRecord     the server was stopped on purpose
    confirm/<hierarchy>         ConfirmRecord     a failover waiting for an operator
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vigil.errors import ValidationError
from vigil.model.cluster import (
    Cluster,
    CommPath,
    Confirmation,
    Dependency,
    Intent,
    Observed,
    Ownership,
    PathObservation,
    Resource,
    Server,
)
from vigil.model.policies import ServerPolicy, StopMode, parse_policy
from vigil.model.states import InstanceState, PathState

PREFIX = "/vigil/"
SCHEMA_VERSION = 1


def key(*parts: str) -> str:
    """A store key under the vigil prefix: ``key("resources", "web")``."""
    return PREFIX + "/".join(parts)


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
    heartbeat other agents time with their own clocks against ``ttl``."""

    started_at: float
    pid: int
    maintenance: bool = False
    ttl: float = 0.0
    beat: int = 0


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


def cluster_from_snapshot(revision: int, items: list[tuple[str, bytes, int, int]]) -> Cluster:
    """Build a ``Cluster`` from ``(key, value, create_revision, mod_revision)`` tuples read at
    ``revision`` under ``PREFIX``. Unknown keys and malformed values are skipped (a newer
    writer may have added keys this version does not know)."""
    servers: dict[str, ServerRecord] = {}
    alive: dict[str, AliveRecord] = {}
    heartbeats: dict[str, int] = {}
    paths: list[CommPath] = []
    path_obs: list[PathObservation] = []
    resources: dict[str, Resource] = {}
    deps: set[Dependency] = set()
    intents: dict[str, Intent] = {}
    owners: dict[str, Ownership] = {}
    observed: dict[tuple[str, str], Observed] = {}
    config_revision = 0
    server_policies: dict[str, ServerPolicy] = {}
    stopped: dict[str, StopMode] = {}
    confirmations: dict[str, Confirmation] = {}
    for full_key, value, create_rev, mod_rev in items:
        if not full_key.startswith(PREFIX):
            continue
        kind, _, rest = full_key[len(PREFIX) :].partition("/")
        try:
            if kind == "config":
                config_revision = mod_rev
            elif kind == "servers":
                servers[rest] = _load(ServerRecord, value)
            elif kind == "alive":
                alive[rest] = _load(AliveRecord, value)
                heartbeats[rest] = mod_rev
            elif kind == "commpaths":
                r = _load(CommPathRecord, value)
                paths.append(
                    CommPath(
                        r.server_a,
                        r.address_a,
                        r.server_b,
                        r.address_b,
                        r.heartbeat_interval,
                        r.max_missed,
                    )
                )
            elif kind == "paths":
                server, _, path_id = rest.partition("/")
                p = _load(PathRecord, value)
                path_obs.append(PathObservation(path_id, server, p.state, p.last_heartbeat))
            elif kind == "resources":
                resources[rest] = _load(ResourceRecord, value).to_model()
            elif kind == "deps":
                parent, _, child = rest.partition("/")
                deps.add(Dependency(parent, child))
            elif kind == "intent":
                i = _load(IntentRecord, value)
                intents[rest] = Intent(rest, i.server, mod_rev, i.reason, i.origin, tuple(i.tried))
            elif kind == "serverpolicy":
                values = _load(ServerPolicyRecord, value).policy
                server_policies[rest] = parse_policy(ServerPolicy, values, rest)
            elif kind == "stopped":
                stopped[rest] = _load(StoppedRecord, value).mode
            elif kind == "confirm":
                c = _load(ConfirmRecord, value)
                confirmations[rest] = Confirmation(rest, c.target, c.origin, c.since, c.decision)
            elif kind == "owner":
                o = _load(OwnerRecord, value)
                owners[rest] = Ownership(rest, o.server, create_rev)
            elif kind == "state":
                server, _, tag = rest.partition("/")
                s = _load(StateRecord, value)
                observed[(server, tag)] = Observed(
                    tag, server, s.state, s.reason, s.since, s.intent_revision
                )
        except (ValueError, ValidationError):
            continue
    server_models = {
        name: Server(
            name=name,
            api_url=record.api_url,
            addresses=tuple(record.addresses),
            alive=name in alive,
            maintenance=alive[name].maintenance if name in alive else False,
            heartbeat=heartbeats.get(name, 0),
            ttl=alive[name].ttl if name in alive else 0.0,
        )
        for name, record in servers.items()
    }
    return Cluster(
        revision=revision,
        servers=server_models,
        comm_paths=tuple(sorted(paths, key=lambda p: p.id)),
        resources=resources,
        dependencies=frozenset(d for d in deps if d.parent in resources and d.child in resources),
        intents=intents,
        owners=owners,
        observed=observed,
        path_observations=tuple(path_obs),
        config_revision=config_revision,
        server_policies=server_policies,
        stopped=stopped,
        confirmations=confirmations,
    )
