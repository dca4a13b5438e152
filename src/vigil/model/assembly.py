"""Putting a ``Cluster`` together from parsed store keys, once or again and again.

``ClusterBuilder`` holds the parsed entry of every key (``records.parse_item``) and makes a
``Cluster`` of them on demand. It is fed either a whole snapshot (``load``) or one change
at a time (``put``/``delete``, as a watch reports them), and does as little as it can each
time:

* a key is parsed once per value: a ``put`` (or a ``load``) of a key at the mod revision
  already held is not parsed again, so reloading a snapshot parses only what changed;
* ``build`` makes new mappings only for the kinds of keys that changed since the last
  build, and hands the unchanged ones (the very same objects) to the new ``Cluster``;
* when neither resources nor dependencies changed, what the last ``Cluster`` derived from
  them (hierarchies, dependency indexes) is carried over (``Cluster.evolve``).

So a new view after a heartbeat costs about as much as the number of servers, not of
resources. Pure: no I/O, no clock. Not thread-safe (one owner feeds and builds).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any, cast

from vigil.model.cluster import Cluster, CommPath, Dependency, PathObservation, Resource, Server
from vigil.model.records import KINDS, PREFIX, AliveRecord, ServerRecord, parse_item

#: Cluster fields that are plain copies of one kind's entries
_COPIED = {
    "resources": "resources",
    "intent": "intents",
    "owner": "owners",
    "state": "observed",
    "serverpolicy": "server_policies",
    "stopped": "stopped",
    "confirm": "confirmations",
    "eligible": "eligibility",
}


class ClusterBuilder:
    """Parsed store keys, and the ``Cluster`` they make (see the module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[Hashable, Any]] = {kind: {} for kind in KINDS}
        #: store key -> (create revision, mod revision, (kind, name) or None if malformed)
        self._keys: dict[str, tuple[int, int, tuple[str, Hashable] | None]] = {}
        self._dirty: set[str] = set(KINDS)
        self._fields: dict[str, Any] = {}
        self._last: Cluster | None = None

    def __len__(self) -> int:
        """How many keys of known kinds are held (malformed ones included)."""
        return len(self._keys)

    def put(
        self, key: str, value: bytes, mod_revision: int, create_revision: int | None = None
    ) -> None:
        """``key`` now holds ``value``, written at ``mod_revision``. ``create_revision``
        when known (a snapshot); from a watch, None: the revision that created the key held,
        else this one (a watch reports every change, so a key not held is a new key)."""
        known = self._keys.get(key)
        if known is not None and known[1] == mod_revision:
            return  # this very value is parsed already
        if create_revision is None:
            create_revision = known[0] if known is not None else mod_revision
        item = parse_item(key, value, create_revision, mod_revision)
        if item is None and known is None and not _known_kind(key):
            return  # not part of a Cluster: nothing to remember
        if known is not None and known[2] is not None:
            self._drop(known[2])
        where = None
        if item is not None:
            self._entries[item.kind][item.name] = item.entry
            self._dirty.add(item.kind)
            where = (item.kind, item.name)
        self._keys[key] = (create_revision, mod_revision, where)

    def delete(self, key: str) -> None:
        """``key`` was deleted (idempotent)."""
        known = self._keys.pop(key, None)
        if known is not None and known[2] is not None:
            self._drop(known[2])

    def load(self, items: Iterable[tuple[str, bytes, int, int]]) -> None:
        """Hold exactly a snapshot's ``(key, value, create_revision, mod_revision)`` items:
        keys not in it are deleted; keys held at the same mod revision are not parsed."""
        present = set()
        for key, value, create_revision, mod_revision in items:
            present.add(key)
            self.put(key, value, mod_revision, create_revision)
        for key in [k for k in self._keys if k not in present]:
            self.delete(key)

    def build(self, revision: int) -> Cluster:
        """The ``Cluster`` of what is held, as read at store ``revision``."""
        dirty, fields, entries = self._dirty, self._fields, self._entries
        if dirty & {"servers", "alive"}:
            fields["servers"] = _servers(entries["servers"], entries["alive"])
        if "commpaths" in dirty:
            paths = cast(Mapping[str, CommPath], entries["commpaths"])
            fields["comm_paths"] = tuple(sorted(paths.values(), key=lambda p: p.id))
        if "paths" in dirty:
            seen = cast(Mapping[str, PathObservation], entries["paths"])
            fields["path_observations"] = tuple(seen[name] for name in sorted(seen))
        for kind, field in _COPIED.items():
            if kind in dirty:
                fields[field] = dict(entries[kind])
        if dirty & {"deps", "resources"}:
            resources = cast(Mapping[str, Resource], fields["resources"])
            deps = cast(Mapping[str, Dependency], entries["deps"])
            fields["dependencies"] = frozenset(
                d for d in deps.values() if d.parent in resources and d.child in resources
            )
        if "config" in dirty:
            fields["config_revision"] = cast(int, entries["config"].get("", 0))
        self._dirty = set()
        if self._last is None:
            cluster = Cluster(revision=revision, **fields)
        else:
            cluster = self._last.evolve(revision=revision, **fields)
        self._last = cluster
        return cluster

    def _drop(self, where: tuple[str, Hashable]) -> None:
        kind, name = where
        del self._entries[kind][name]
        self._dirty.add(kind)


def _known_kind(key: str) -> bool:
    """Whether ``key`` is of a kind a Cluster is made of (a malformed value of such a key
    is remembered, so it is not parsed again)."""
    if not key.startswith(PREFIX):
        return False
    return key[len(PREFIX) :].partition("/")[0] in KINDS


def _servers(records: Mapping[Hashable, Any], alive: Mapping[Hashable, Any]) -> dict[str, Server]:
    servers = cast(Mapping[str, ServerRecord], records)
    beats = cast(Mapping[str, tuple[AliveRecord, int]], alive)
    result = {}
    for name, record in servers.items():
        beat = beats.get(name)
        result[name] = Server(
            name=name,
            api_url=record.api_url,
            addresses=tuple(record.addresses),
            alive=beat is not None,
            maintenance=beat[0].maintenance if beat else False,
            heartbeat=beat[1] if beat else 0,
            ttl=beat[0].ttl if beat else 0.0,
            failsafe=beat[0].failsafe if beat else 0.0,
            members=beat[0].members if beat else (),
        )
    return result


__all__ = ["ClusterBuilder"]
