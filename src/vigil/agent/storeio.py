"""Reading the cluster from the store and writing changes to it, in one transaction each.

The one place that turns an engine ``Change`` into store operations and writes events,
shared by the agent loop and the API. An agent keeps its view of the cluster in a
``vigil.agent.cache.ClusterCache``; ``read_cluster`` is for one-off readers.
"""

from __future__ import annotations

import itertools
import time

from vigil.engine.changes import Change
from vigil.errors import Conflict
from vigil.model.cluster import Cluster
from vigil.model.records import (
    PREFIX,
    CommPathRecord,
    ConfigRecord,
    DependencyRecord,
    EventRecord,
    IntentRecord,
    ResourceRecord,
    ServerPolicyRecord,
    cluster_from_snapshot,
    event_key,
    key,
)
from vigil.store.base import Compare, Delete, Operation, Put, Store

CONFIG_KEY = key("config")
_event_sequence = itertools.count()


async def read_cluster(store: Store) -> Cluster:
    """The whole cluster, read atomically at one revision (the event log is elsewhere)."""
    snapshot = await store.get_prefix(PREFIX)
    return cluster_from_snapshot(
        snapshot.revision,
        [(kv.key, kv.value, kv.create_revision, kv.mod_revision) for kv in snapshot.items],
    )


def change_operations(change: Change, requested_by: str, now: float) -> list[Operation]:
    """Store operations for ``change`` (without the configuration guard)."""
    ops: list[Operation] = []
    for tag, resource in sorted(change.resources.items()):
        ops.append(Put(key("resources", tag), ResourceRecord.of(resource).dump()))
    for tag in sorted(change.deleted_resources):
        ops.append(Delete(key("resources", tag)))
        ops.append(Delete(key("intent", tag)))
    for dep in sorted(change.dependencies, key=lambda d: (d.parent, d.child)):
        ops.append(Put(key("deps", dep.parent, dep.child), DependencyRecord(created_at=now).dump()))
    for dep in sorted(change.deleted_dependencies, key=lambda d: (d.parent, d.child)):
        ops.append(Delete(key("deps", dep.parent, dep.child)))
    for tag, server in sorted(change.intents.items()):
        record = IntentRecord(
            server=server, reason=change.intent_reason, requested_by=requested_by, at=now
        )
        ops.append(Put(key("intent", tag), record.dump()))
    for path in change.comm_paths:
        record_path = CommPathRecord(
            server_a=path.server_a,
            address_a=path.address_a,
            server_b=path.server_b,
            address_b=path.address_b,
            heartbeat_interval=path.heartbeat_interval,
            max_missed=path.max_missed,
        )
        ops.append(Put(key("commpaths", path.id), record_path.dump()))
    for path_id in change.deleted_comm_paths:
        ops.append(Delete(key("commpaths", path_id)))
    for server, policy in sorted(change.server_policies.items()):
        ops.append(Put(key("serverpolicy", server), ServerPolicyRecord(policy=dict(policy)).dump()))
    return ops


async def apply_change(
    store: Store, cluster: Cluster, change: Change, requested_by: str, event: Put | None = None
) -> int:
    """Write ``change`` and the ``event`` that records it (``event_operation``) in one
    transaction, only if the configuration is still the one it was validated against:
    both or neither. Raises ``Conflict`` when another change came first (nothing written).
    Returns the store revision of the change.

    The transaction holds the change's operations, the configuration key and the event:
    etcd refuses a transaction of more than ``--max-txn-ops`` operations (128 by default),
    so a change of more than 126 operations fails there as a whole (nothing written)."""
    now = time.time()
    guard = Compare(CONFIG_KEY, cluster.config_revision)
    ops = change_operations(change, requested_by, now)
    ops.append(Put(CONFIG_KEY, ConfigRecord(changed_at=now, summary=change.summary).dump()))
    if event is not None:
        ops.append(event)
    result = await store.txn((guard,), ops)
    if not result.succeeded:
        raise Conflict(
            "the cluster configuration changed while this request was being checked; "
            "nothing was changed: look at 'vigil status' and try again"
        )
    return result.revision


def event_operation(
    server: str,
    kind: str,
    message: str,
    *,
    hierarchy: str | None = None,
    tag: str | None = None,
) -> Put:
    """A cluster event log entry (under ``EVENTS_PREFIX``), to write in the transaction of
    the change it records; keys sort by time."""
    now = time.time()
    record = EventRecord(
        at=now, server=server, kind=kind, message=message, hierarchy=hierarchy, tag=tag
    )
    name = f"{time.time_ns():020d}-{server}-{next(_event_sequence)}"
    return Put(event_key(name), record.dump())
