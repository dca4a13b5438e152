"""Small helpers that build ``Cluster`` views for the model and engine unit tests.

No mocks: every helper returns the real frozen dataclasses of ``vigil.model.cluster``.
``apply`` plays a ``Change`` onto a cluster the way the API writes it to the store, so a test
can chain operations (create, then extend, then depend...) and check the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest

from vigil.engine.changes import Change
from vigil.errors import ValidationError
from vigil.model.cluster import (
    Cluster,
    CommPath,
    Confirmation,
    Dependency,
    Intent,
    Observed,
    Ownership,
    Resource,
    Server,
)
from vigil.model.policies import ServerPolicy, StopMode, parse_policy
from vigil.model.states import InstanceState

ResourceSpec = Resource | Mapping[str, int]


def address(server_index: int, network: int = 0) -> str:
    """The address the builders give server number ``server_index`` on ``network``."""
    return f"10.{network}.0.{server_index + 1}"


def make_cluster(
    *,
    servers: Iterable[str] = ("n1", "n2"),
    dead: Iterable[str] = (),
    resources: Mapping[str, ResourceSpec] | None = None,
    deps: Iterable[tuple[str, str]] = (),
    intents: Mapping[str, str | None] | None = None,
    owners: Mapping[str, str] | None = None,
    observed: Mapping[tuple[str, str], InstanceState | str] | None = None,
    paths: Iterable[tuple[str, str]] | None = None,
    intent_revision: int = 5,
    revision: int = 100,
    server_policies: Mapping[str, ServerPolicy | Mapping[str, object]] | None = None,
    stopped: Mapping[str, StopMode | str] | None = None,
    confirmations: Iterable[Confirmation] = (),
) -> Cluster:
    """A cluster view.

    ``servers`` are alive unless listed in ``dead``; server number i has the addresses
    ``10.0.0.<i+1>`` and ``10.1.0.<i+1>``. ``resources`` maps a tag to a ``Resource`` or to its
    instances (server -> priority; kit ``app``). ``paths`` lists server pairs joined by a comm
    path on network 0 (default: every pair). ``intents`` get ``intent_revision``; owners get
    epoch ``revision``. ``server_policies`` maps a server to its ``ServerPolicy`` or to the
    values of one (parsed as the store's are); ``stopped`` lists servers stopped on purpose
    (hold or maintenance); ``confirmations`` are pending failover confirmations.
    """
    names = list(servers)
    dead_set = set(dead)
    server_models = {
        name: Server(
            name=name,
            api_url=f"http://{address(i)}:7700",
            addresses=(address(i, 0), address(i, 1)),
            alive=name not in dead_set,
        )
        for i, name in enumerate(names)
    }
    if paths is None:
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    else:
        pairs = list(paths)
    comm_paths = tuple(
        CommPath.between(a, address(names.index(a)), b, address(names.index(b))) for a, b in pairs
    )
    resource_models = {
        tag: spec if isinstance(spec, Resource) else Resource(tag, "app", instances=dict(spec))
        for tag, spec in (resources or {}).items()
    }
    return Cluster(
        revision=revision,
        servers=server_models,
        comm_paths=comm_paths,
        resources=resource_models,
        dependencies=frozenset(Dependency(p, c) for p, c in deps),
        intents={
            tag: Intent(tag, server, intent_revision) for tag, server in (intents or {}).items()
        },
        owners={tag: Ownership(tag, server, revision) for tag, server in (owners or {}).items()},
        observed={
            (server, tag): Observed(tag, server, InstanceState(state))
            for (server, tag), state in (observed or {}).items()
        },
        config_revision=revision,
        server_policies={
            server: policy
            if isinstance(policy, ServerPolicy)
            else parse_policy(ServerPolicy, policy, server)
            for server, policy in (server_policies or {}).items()
        },
        stopped={server: StopMode(mode) for server, mode in (stopped or {}).items()},
        confirmations={c.hierarchy: c for c in confirmations},
    )


def three_level(**kwargs: Any) -> Cluster:
    """app -> ip, app -> vol, vol -> disk, on n1 (priority 1) and n2 (priority 10)."""
    instances = {"n1": 1, "n2": 10}
    defaults: dict[str, Any] = {
        "resources": {tag: instances for tag in ("app", "ip", "vol", "disk")},
        "deps": [("app", "ip"), ("app", "vol"), ("vol", "disk")],
    }
    defaults.update(kwargs)
    return make_cluster(**defaults)


def apply(cluster: Cluster, change: Change) -> Cluster:
    """``cluster`` after ``change`` was written, at the next revision."""
    revision = cluster.revision + 1
    resources = {t: r for t, r in cluster.resources.items() if t not in change.deleted_resources}
    resources.update(change.resources)
    deps = (cluster.dependencies - change.deleted_dependencies) | change.dependencies
    intents = {t: i for t, i in cluster.intents.items() if t not in change.deleted_resources}
    for tag, server in change.intents.items():
        intents[tag] = Intent(tag, server, revision, change.intent_reason)
    paths = tuple(p for p in cluster.comm_paths if p.id not in change.deleted_comm_paths)
    return replace(
        cluster,
        revision=revision,
        resources=resources,
        dependencies=frozenset(deps),
        intents=intents,
        comm_paths=paths + change.comm_paths,
        config_revision=revision,
    )


@contextmanager
def refused(
    error: type[ValidationError], match: str
) -> Iterator[pytest.ExceptionInfo[ValidationError]]:
    """Expect exactly ``error`` (not a subclass) with a message matching ``match``; the
    yielded ``ExceptionInfo`` holds the error once the block is left."""
    with pytest.raises(error, match=match) as excinfo:
        yield excinfo
    assert type(excinfo.value) is error, f"{type(excinfo.value).__name__}: {excinfo.value}"


def app_resource(tag: str, instances: Mapping[str, int], **policies: object) -> Resource:
    """An ``app`` resource with ``instances`` and resource or hierarchy ``policies``
    (``switchback="automatic"``, ``n_plus_one=True``, ``recovery_limit=2``...)."""
    return Resource(tag, "app", instances=dict(instances), policies=dict(policies))


def with_intent(
    cluster: Cluster,
    tag: str,
    server: str | None,
    *,
    origin: str | None = None,
    tried: Iterable[str] = (),
    revision: int = 5,
    reason: str = "",
) -> Cluster:
    """``cluster`` with the whole hierarchy of ``tag`` wanted on ``server``, as a failover
    writes it (``origin``: the server failed over from; ``tried``: servers already tried)."""
    members = cluster.hierarchy(tag).tags
    intents = dict(cluster.intents)
    for member in members:
        intents[member] = Intent(member, server, revision, reason, origin, tuple(tried))
    return replace(cluster, intents=intents)


def with_observed(
    cluster: Cluster,
    server: str,
    tag: str,
    state: InstanceState | str,
    *,
    reason: str = "",
    intent_revision: int = 0,
) -> Cluster:
    """``cluster`` with what the agent of ``server`` last reported for ``tag``."""
    observed = dict(cluster.observed)
    observed[(server, tag)] = Observed(
        tag, server, InstanceState(state), reason, intent_revision=intent_revision
    )
    return replace(cluster, observed=observed)
