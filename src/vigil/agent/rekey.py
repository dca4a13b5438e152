"""Re-sealing every secret in the store with the cluster key's first key (``vigil secrets
rotate``).

Every stored value that holds a sealed secret (a kit's secret property in a resource's
properties or per-server properties, or anything else sealed with ``SEALED_PREFIX``) is
found by walking its JSON, so no kit needs to say where its secrets are; each sealed string
is opened with any key of the file and sealed again with the first.

Transaction-safe: the new values are written with a compare on each key's revision and on
the configuration key (bumped in the same transaction, as any configuration change does),
so a change made meanwhile is never overwritten: that batch is read again and retried, and
a configuration change validated before the rotation is refused (``Conflict``) rather
than written back over it. All keys go in one transaction when they fit; a store with more
than ``BATCH`` such keys is done in batches of ``BATCH`` (etcd refuses more than 128
operations per transaction), each of them atomic; between two batches every value still
opens, since every key stays in the key files until ``retire-keys``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from vigil.agent.secrets import SEALED_PREFIX, SecretBox
from vigil.agent.storeio import event_operation
from vigil.errors import Conflict
from vigil.model.records import PREFIX, ConfigRecord, key
from vigil.store.base import Compare, KeyValue, Operation, Put, Store

__all__ = ["Resealed", "reseal_store"]

#: keys per transaction (with the configuration key and the event: etcd allows 128)
BATCH = 100
#: times a batch is read again after a change made meanwhile
RETRIES = 5
CONFIG_KEY = key("config")
#: the prefixes whose values may hold sealed secrets
PREFIXES = (PREFIX, "/vigil-sessions/")


@dataclass
class Resealed:
    """What a rotation did."""

    values: int = 0
    keys: list[str] = field(default_factory=list)
    transactions: int = 0
    revision: int = 0


def _reseal_json(data: Any, box: SecretBox) -> tuple[Any, int]:
    """``data`` with every sealed string sealed again; how many there were."""
    if isinstance(data, str):
        return (box.reseal(data), 1) if data.startswith(SEALED_PREFIX) else (data, 0)
    if isinstance(data, dict):
        count, out = 0, {}
        for name, value in data.items():
            out[name], found = _reseal_json(value, box)
            count += found
        return out, count
    if isinstance(data, list):
        count, items = 0, []
        for value in data:
            item, found = _reseal_json(value, box)
            items.append(item)
            count += found
        return items, count
    return data, 0


def _resealed_item(item: KeyValue, box: SecretBox) -> tuple[Put, int] | None:
    if SEALED_PREFIX.encode() not in item.value:
        return None
    data, count = _reseal_json(json.loads(item.value), box)
    if not count:
        return None
    return Put(item.key, json.dumps(data, separators=(",", ":")).encode(), item.lease), count


async def _sealed_items(store: Store) -> list[KeyValue]:
    found: list[KeyValue] = []
    for prefix in PREFIXES:
        snapshot = await store.get_prefix(prefix)
        found += [i for i in snapshot.items if SEALED_PREFIX.encode() in i.value]
    return found


async def _batch(
    store: Store, box: SecretBox, keys: list[str], server: str, user: str, last: bool
) -> tuple[int, int]:
    """Re-seal the values of ``keys`` in one transaction, reading them again after a change
    made meanwhile; (values re-sealed, revision)."""
    for _ in range(RETRIES):
        items = [i for i in [await store.get(k) for k in keys] if i is not None]
        config = await store.get(CONFIG_KEY)
        compares = [Compare.unchanged(config, CONFIG_KEY)]
        ops: list[Operation] = []
        count = 0
        for item in items:
            resealed = _resealed_item(item, box)
            if resealed is not None:
                compares.append(Compare.unchanged(item))
                ops.append(resealed[0])
                count += resealed[1]
        summary = f"secrets re-sealed with key {box.fingerprints()[0]} (by {user})"
        ops.append(Put(CONFIG_KEY, ConfigRecord(changed_at=time.time(), summary=summary).dump()))
        if last:
            ops.append(event_operation(server, "secrets-rotated", summary))
        result = await store.txn(compares, ops)
        if result.succeeded:
            return count, result.revision
    raise Conflict(
        "the stored secrets kept changing while they were being re-sealed; nothing more was "
        "changed (what was re-sealed opens with the new key): run `vigil secrets rotate` again"
    )


async def reseal_store(store: Store, box: SecretBox, server: str, user: str) -> Resealed:
    """Re-seal every sealed value in the store with ``box``'s first key. ``ConfigError``
    when a value does not open with any key of the file (nothing written in its batch),
    ``Conflict`` when the store kept changing."""
    done = Resealed()
    found = [i.key for i in await _sealed_items(store)]
    batches = [found[i : i + BATCH] for i in range(0, len(found), BATCH)] or [[]]
    for number, keys in enumerate(batches, 1):
        count, revision = await _batch(store, box, keys, server, user, number == len(batches))
        done.values += count
        done.keys += keys
        done.transactions += 1
        done.revision = revision
    return done
