"""The cluster as plain, immutable data: servers, comm paths, resources and their instances,
dependencies, hierarchies, and what each agent observes.

A ``Cluster`` is one consistent view read from the store at one revision. Nothing here does
I/O; ``vigil.model.records`` converts between the store's JSON and these classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from vigil.model import graph
from vigil.model.policies import (
    HIERARCHY_POLICY_NAMES,
    RESOURCE_POLICY_NAMES,
    HierarchyPolicy,
    ResourcePolicy,
    ServerPolicy,
    StopMode,
    parse_policy,
)
from vigil.model.states import InstanceState, PathState

JsonObject = Mapping[str, object]


@dataclass(frozen=True)
class Server:
    """A server that has joined the cluster (its agent registered once)."""

    name: str
    api_url: str
    addresses: tuple[str, ...] = ()
    alive: bool = False  # its agent's lease is held now
    maintenance: bool = False  # stopped with --leave-resources
    heartbeat: int = 0  # revision of its alive key: advances with every lease renewal
    ttl: float = 0.0  # the lease TTL its agent counts on (others time its heartbeat by it)
    failsafe: float = 0.0  # how long its agent may hold its lease through a store outage
    members: tuple[str, ...] = ()  # the servers it would ask then (``vigil.agent.failsafe``)


@dataclass(frozen=True)
class CommPath:
    """A communication path: one address on each of two servers, with heartbeats between them.

    Stored once per pair; ``server_a < server_b`` always (``CommPath.between`` normalises).
    """

    server_a: str
    address_a: str
    server_b: str
    address_b: str
    heartbeat_interval: float = 1.0
    max_missed: int = 5

    @classmethod
    def between(
        cls,
        local: str,
        local_address: str,
        remote: str,
        remote_address: str,
        heartbeat_interval: float = 1.0,
        max_missed: int = 5,
    ) -> CommPath:
        if local <= remote:
            return cls(local, local_address, remote, remote_address, heartbeat_interval, max_missed)
        return cls(remote, remote_address, local, local_address, heartbeat_interval, max_missed)

    @property
    def id(self) -> str:
        return f"{self.server_a}~{self.address_a}~{self.server_b}~{self.address_b}"

    def joins(self, one: str, other: str) -> bool:
        return {one, other} == {self.server_a, self.server_b}

    def end(self, server: str) -> tuple[str, str, str]:
        """(local address, remote server, remote address) seen from ``server``."""
        if server == self.server_a:
            return self.address_a, self.server_b, self.address_b
        return self.address_b, self.server_a, self.address_a


@dataclass(frozen=True)
class Resource:
    """A protected resource: a tag, the kit that manages it, its properties, and its
    instances (server -> priority; 1 is the most preferred)."""

    tag: str
    kit: str
    properties: JsonObject = field(default_factory=dict)
    server_properties: Mapping[str, JsonObject] = field(default_factory=dict)
    instances: Mapping[str, int] = field(default_factory=dict)
    #: policies set on the resource (local_recovery, failover, check intervals...)
    policies: JsonObject = field(default_factory=dict)

    def properties_on(self, server: str) -> dict[str, object]:
        """Cluster-wide properties overlaid with this server's own."""
        merged = dict(self.properties)
        merged.update(self.server_properties.get(server, {}))
        return merged

    @property
    def servers_by_priority(self) -> list[str]:
        return sorted(self.instances, key=lambda server: self.instances[server])


@dataclass(frozen=True)
class Dependency:
    """``parent`` needs ``child`` in service first."""

    parent: str
    child: str


@dataclass(frozen=True)
class Ownership:
    """Who holds a resource in service now. ``epoch`` is the fencing token: it grows with
    every change of owner (the store revision that created the owner key)."""

    tag: str
    server: str
    epoch: int


@dataclass(frozen=True)
class Observed:
    """What the agent of ``server`` last reported for ``tag``."""

    tag: str
    server: str
    state: InstanceState
    reason: str = ""
    since: float = 0.0
    #: the revision of the intent this report answers (to tell a stale failure from a new one)
    intent_revision: int = 0


@dataclass(frozen=True)
class EligibilityReport:
    """What the agent of ``server`` last found about whether it may take ``tag`` over (its
    kit's ``eligible`` answer): the engine never chooses a server whose answer is no. Only
    kits with their own rules (a mirror) report; no report means eligible."""

    tag: str
    server: str
    eligible: bool
    reason: str = ""
    since: float = 0.0


@dataclass(frozen=True)
class Intent:
    """Where an operator or the engine wants a resource in service; None: nowhere.

    During a failover, ``origin`` is the server it fails over from and ``tried`` every
    server that could not restore it in this failover (cascading skips them)."""

    tag: str
    server: str | None
    revision: int = 0
    reason: str = ""
    origin: str | None = None
    tried: tuple[str, ...] = ()


@dataclass(frozen=True)
class Confirmation:
    """A failover waiting for an operator (the seed's "confirm failover")."""

    hierarchy: str
    target: str
    origin: str
    since: float
    decision: bool | None = None  # True: proceed, False: block, None: not answered yet


@dataclass(frozen=True)
class PathObservation:
    """One end's view of a comm path."""

    path_id: str
    server: str
    state: PathState
    last_heartbeat: float = 0.0


@dataclass(frozen=True)
class Hierarchy:
    """A resource hierarchy: a connected component of resources linked by dependencies.

    It is named after its first root (a resource nothing depends on), in tag order.
    """

    tags: frozenset[str]
    roots: tuple[str, ...]

    @cached_property
    def name(self) -> str:
        return self.roots[0] if self.roots else min(self.tags)


#: what a ``Cluster`` derives (its cached properties), and the fields each is derived from:
#: ``Cluster.evolve`` carries it to a copy whose fields are those very objects
_DERIVED: dict[str, tuple[str, ...]] = {
    "edges": ("dependencies",),
    "_children": ("dependencies",),
    "_parents": ("dependencies",),
    "hierarchies": ("resources", "dependencies"),
    "_hierarchy_of": ("resources", "dependencies"),
    "_hierarchy_policies": ("resources",),
    "_hierarchy_servers": ("resources",),
    "_intent_revisions": ("intents",),
    "_owners_of": ("owners",),
    "_observed_by_server": ("observed",),
    "_observed_by_tag": ("observed",),
}


@dataclass(frozen=True)
class Cluster:
    """One consistent view of the whole cluster, read at store ``revision``."""

    revision: int = 0
    servers: Mapping[str, Server] = field(default_factory=dict)
    comm_paths: tuple[CommPath, ...] = ()
    resources: Mapping[str, Resource] = field(default_factory=dict)
    dependencies: frozenset[Dependency] = frozenset()
    intents: Mapping[str, Intent] = field(default_factory=dict)
    owners: Mapping[str, Ownership] = field(default_factory=dict)
    observed: Mapping[tuple[str, str], Observed] = field(default_factory=dict)  # (server, tag)
    path_observations: tuple[PathObservation, ...] = ()
    #: mod_revision of the configuration key, bumped by every configuration change; a
    #: change validated against this view is applied only if it is still current
    config_revision: int = 0
    server_policies: Mapping[str, ServerPolicy] = field(default_factory=dict)
    #: servers stopped on purpose: orderly stop (hold) or maintenance
    stopped: Mapping[str, StopMode] = field(default_factory=dict)
    #: hierarchy name -> operator's answer to a pending failover confirmation (None: none yet)
    confirmations: Mapping[str, Confirmation] = field(default_factory=dict)
    #: (server, tag) -> that server's kit's answer: may it take the resource over now?
    eligibility: Mapping[tuple[str, str], EligibilityReport] = field(default_factory=dict)

    def evolve(self, **changes: Any) -> Cluster:
        """A copy with ``changes`` (as ``dataclasses.replace``). What this view derived
        (hierarchies, indexes, parsed policies...) is carried over wherever the copy has
        the very same objects it was derived from, so a new view that shares most of its
        mappings with this one (another heartbeat, another state) does not derive it
        again. Mappings are never changed in place: a changed one is a new object."""
        copy = replace(self, **changes)
        for name, sources in _DERIVED.items():
            if name in self.__dict__ and all(
                getattr(copy, source) is getattr(self, source) for source in sources
            ):
                copy.__dict__[name] = self.__dict__[name]
        return copy

    @cached_property
    def edges(self) -> list[graph.Edge]:
        return sorted((d.parent, d.child) for d in self.dependencies)

    @cached_property
    def _children(self) -> dict[str, tuple[str, ...]]:
        """tag -> its children, sorted (only tags that have some)."""
        found: dict[str, list[str]] = {}
        for parent, child in self.edges:
            found.setdefault(parent, []).append(child)
        return {tag: tuple(children) for tag, children in found.items()}

    @cached_property
    def _parents(self) -> dict[str, tuple[str, ...]]:
        """tag -> its parents, sorted (only tags that have some)."""
        found: dict[str, list[str]] = {}
        for parent, child in self.edges:
            found.setdefault(child, []).append(parent)
        return {tag: tuple(sorted(parents)) for tag, parents in found.items()}

    def children(self, tag: str) -> list[str]:
        return list(self._children.get(tag, ()))

    def parents(self, tag: str) -> list[str]:
        return list(self._parents.get(tag, ()))

    @cached_property
    def hierarchies(self) -> tuple[Hierarchy, ...]:
        """Every hierarchy, ordered by name."""
        result = []
        for component in graph.components(self.resources, self.edges):
            roots = tuple(sorted(tag for tag in component if tag not in self._parents))
            result.append(Hierarchy(component, roots))
        return tuple(sorted(result, key=lambda h: h.name))

    @cached_property
    def _hierarchy_of(self) -> dict[str, Hierarchy]:
        return {tag: hierarchy for hierarchy in self.hierarchies for tag in hierarchy.tags}

    def hierarchy(self, tag: str) -> Hierarchy:
        """The hierarchy ``tag`` belongs to. KeyError when the tag is unknown."""
        return self._hierarchy_of[tag]

    @cached_property
    def _hierarchy_servers(self) -> dict[frozenset[str], frozenset[str]]:
        """Hierarchy tags -> the servers all of them are extended to, filled as asked."""
        return {}

    def hierarchy_servers(self, hierarchy: Hierarchy) -> set[str]:
        """Servers every resource of the hierarchy is extended to."""
        known = self._hierarchy_servers.get(hierarchy.tags)
        if known is None:
            sets = [set(self.resources[tag].instances) for tag in hierarchy.tags]
            known = frozenset(set.intersection(*sets) if sets else ())
            self._hierarchy_servers[hierarchy.tags] = known
        return set(known)

    def comm_paths_between(self, one: str, other: str) -> list[CommPath]:
        return [path for path in self.comm_paths if path.joins(one, other)]

    def intended_server(self, hierarchy: Hierarchy) -> str | None:
        """Where the hierarchy is wanted in service (its root's intent), or None."""
        intent = self.intents.get(hierarchy.name)
        return intent.server if intent else None

    @cached_property
    def _intent_revisions(self) -> dict[frozenset[str], int]:
        """Hierarchy tags -> their newest intent revision, filled as asked."""
        return {}

    def intent_revision(self, hierarchy: Hierarchy) -> int:
        """The newest intent revision among the hierarchy's resources."""
        known = self._intent_revisions.get(hierarchy.tags)
        if known is None:
            revisions = [self.intents[t].revision for t in hierarchy.tags if t in self.intents]
            known = self._intent_revisions[hierarchy.tags] = max(revisions, default=0)
        return known

    @cached_property
    def _owners_of(self) -> dict[frozenset[str], frozenset[str]]:
        """Hierarchy tags -> the servers owning some of them, filled as asked."""
        return {}

    def owner_of(self, hierarchy: Hierarchy) -> set[str]:
        """Servers that own at least one resource of the hierarchy (normally 0 or 1)."""
        known = self._owners_of.get(hierarchy.tags)
        if known is None:
            known = frozenset(self.owners[t].server for t in hierarchy.tags if t in self.owners)
            self._owners_of[hierarchy.tags] = known
        return set(known)

    @cached_property
    def _observed_by_server(self) -> dict[str, dict[str, Observed]]:
        found: dict[str, dict[str, Observed]] = {}
        for (server, tag), observed in self.observed.items():
            found.setdefault(server, {})[tag] = observed
        return found

    def observed_on(self, server: str) -> Mapping[str, Observed]:
        """What the agent of ``server`` reported, by tag."""
        return self._observed_by_server.get(server, {})

    @cached_property
    def _observed_by_tag(self) -> dict[str, dict[str, Observed]]:
        found: dict[str, dict[str, Observed]] = {}
        for (server, tag), observed in self.observed.items():
            found.setdefault(tag, {})[server] = observed
        return found

    def observed_of(self, tag: str) -> Mapping[str, Observed]:
        """What the agents reported for ``tag``, by server."""
        return self._observed_by_tag.get(tag, {})

    def server_policy(self, server: str) -> ServerPolicy:
        return self.server_policies.get(server, ServerPolicy())

    def resource_policy(self, tag: str) -> ResourcePolicy:
        values = {
            k: v for k, v in self.resources[tag].policies.items() if k in RESOURCE_POLICY_NAMES
        }
        policy: ResourcePolicy = parse_policy(ResourcePolicy, values, tag)
        return policy

    @cached_property
    def _hierarchy_policies(self) -> dict[str, HierarchyPolicy]:
        """Hierarchy name -> its parsed policy, filled as they are asked for."""
        return {}

    def hierarchy_policy(self, hierarchy: Hierarchy) -> HierarchyPolicy:
        known = self._hierarchy_policies.get(hierarchy.name)
        if known is not None:
            return known
        root = self.resources[hierarchy.name]
        values = {k: v for k, v in root.policies.items() if k in HIERARCHY_POLICY_NAMES}
        policy: HierarchyPolicy = parse_policy(HierarchyPolicy, values, hierarchy.name)
        self._hierarchy_policies[hierarchy.name] = policy
        return policy

    def ineligible(self, server: str, tags: frozenset[str]) -> str | None:
        """Why the kits on ``server`` say it may not take these resources over now ("mirror
        target not in sync"), or None when none says no (no report: eligible)."""
        refusals = []
        for tag in sorted(tags):
            report = self.eligibility.get((server, tag))
            if report is not None and not report.eligible:
                refusals.append(f"{tag}: {report.reason}" if report.reason else tag)
        if not refusals:
            return None
        return f"{server} is not eligible ({'; '.join(refusals)})"

    def intent(self, hierarchy: Hierarchy) -> Intent | None:
        return self.intents.get(hierarchy.name)

    def state_of(self, server: str, tag: str) -> Observed:
        """The instance state of ``tag`` on ``server`` as the cluster sees it now."""
        observed = self.observed.get((server, tag))
        known = self.servers.get(server)
        stopped = self.stopped.get(server)
        if known is not None and not known.alive and stopped and observed:
            # stopped on purpose: what it reported last is still true
            if stopped is StopMode.MAINTENANCE and observed.state.in_service:
                why = "maintenance: the agent is stopped, the resource left running"
                return replace(observed, state=InstanceState.ISU, reason=why)
            if not observed.state.in_service:
                note = f"agent stopped: {stopped}"
                reason = f"{observed.reason} ({note})" if observed.reason else note
                return replace(observed, reason=reason)
        if known is None or not known.alive:
            reason = "the agent of this server is not running" if known else "unknown server"
            last = f" (last reported {observed.state})" if observed else ""
            return Observed(tag, server, InstanceState.UNKNOWN, reason + last)
        if observed is None:
            return Observed(tag, server, InstanceState.OSU, "not reported yet")
        return observed
