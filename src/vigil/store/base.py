"""The coordination store contract.

Every backend (embedded SQLite, etcd) guarantees exactly what is written here, and the
contract test suite (``tests/contract/test_store.py``) checks it against each of them.
The rest of vigil uses only this module's types; it never knows which backend it runs on.

Model (the etcd v3 data model, so that etcd implements it natively):

* A flat, ordered key space of ``str`` keys and ``bytes`` values.
* One **revision** counter for the whole store. Every transaction that changes anything
  increments it by exactly one; every key carries the revision that created it
  (``create_revision``) and that last changed it (``mod_revision``).
* A **transaction** compares revisions of keys, then applies one list of operations if all
  comparisons hold and another list otherwise, atomically: no reader ever sees half of it.
* A **lease** has a TTL in whole seconds. Keys put with a lease are deleted, in one
  revision, when the lease expires or is revoked. Its holder keeps it alive.
* A **watch** reports every change under a prefix, in revision order, starting from a given
  revision; no change is skipped or reported twice. It delivers them in **batches of whole
  revisions**: the changes one transaction made under the prefix always arrive together, so
  a reader that applies whole batches never sees half a transaction.

Timeouts: every call is bounded by the backend's ``request_timeout`` and raises
``StoreUnavailable`` when it is exceeded. The caller owns any retry.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class KeyValue:
    """One key as stored, with its revisions and lease (0 when bound to none)."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class Snapshot:
    """Keys read at one revision: every value in ``items`` existed together at ``revision``."""

    revision: int
    items: tuple[KeyValue, ...]

    def get(self, key: str) -> KeyValue | None:
        """The entry for ``key`` in this snapshot, or None."""
        for item in self.items:
            if item.key == key:
                return item
        return None


@dataclass(frozen=True)
class Compare:
    """A transaction guard on one key's ``mod_revision``.

    ``mod_revision == 0`` means "the key does not exist". Build them with the class methods.
    """

    key: str
    mod_revision: int

    @classmethod
    def absent(cls, key: str) -> Compare:
        """Holds when ``key`` does not exist."""
        return cls(key, 0)

    @classmethod
    def unchanged(cls, item: KeyValue | None, key: str | None = None) -> Compare:
        """Holds when the key is exactly as read (absent if ``item`` is None)."""
        if item is None:
            if key is None:
                raise ValueError("Compare.unchanged(None) needs the key")
            return cls(key, 0)
        return cls(item.key, item.mod_revision)


@dataclass(frozen=True)
class Put:
    """Set ``key`` to ``value``, bound to ``lease`` (0 for none)."""

    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    """Delete ``key``; with ``prefix=True``, every key that starts with it."""

    key: str
    prefix: bool = False


Operation = Put | Delete


@dataclass(frozen=True)
class TxnResult:
    """Outcome of a transaction: which branch ran, and the store revision after it."""

    succeeded: bool
    revision: int


class EventType(StrEnum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class WatchEvent:
    """One change seen by a watch. For DELETE, ``value`` is empty and ``mod_revision`` is the
    revision of the deletion."""

    type: EventType
    key: str
    value: bytes
    mod_revision: int


#: what ``Store.watch_batches`` yields: the changes of one or more whole revisions
WatchBatch = tuple[WatchEvent, ...]


@dataclass(frozen=True)
class Lease:
    """A granted lease: its id and the TTL the store actually granted (may exceed the ask)."""

    id: int
    ttl: int


@dataclass(frozen=True)
class StoreCapabilities:
    """What a backend can do, so callers never test backends by class name."""

    #: smallest lease TTL (seconds) the backend grants; asks below it are raised to it
    min_lease_ttl: int = 1
    #: the store is reached over the network (and can be cut off from one server)
    networked: bool = False
    #: shared by processes on one host only
    single_host: bool = True


@dataclass
class StoreStats:
    """Counters a backend keeps for metrics and tests."""

    requests: int = 0
    errors: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Store(abc.ABC):
    """A coordination store client. Open on construction via ``connect``; close once.

    Lifecycle: a closed store raises ``StoreError`` on every call. ``close`` is idempotent.
    Errors: ``StoreUnavailable`` (retryable), ``LeaseLost``, ``Compacted``; a lost
    compare is not an error for ``txn`` (it returns ``succeeded=False``).
    """

    capabilities: StoreCapabilities = StoreCapabilities()

    # --- primitives every backend implements -------------------------------------------

    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None:
        """The current value of ``key`` or None. Linearizable read."""

    @abc.abstractmethod
    async def get_prefix(self, prefix: str) -> Snapshot:
        """Every key starting with ``prefix``, sorted by key, read atomically at one revision.

        ``Snapshot.revision`` is the store revision of the read (not the newest key's), so a
        watch started at ``revision + 1`` misses nothing that happened after the read.
        """

    @abc.abstractmethod
    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Operation],
        failure: Sequence[Operation] = (),
    ) -> TxnResult:
        """Atomic compare-and-set: if every compare holds apply ``success``, else ``failure``.

        Atomic and isolated: all operations of the branch apply at one new revision (or none
        when the branch is empty or changes nothing, in which case the revision is unchanged).
        A ``Put`` bound to a lease that no longer exists raises ``LeaseLost`` and applies
        nothing. Not retried by the backend (the caller re-reads and decides).
        """

    @abc.abstractmethod
    async def grant_lease(self, ttl: float) -> Lease:
        """Create a lease of at least ``ttl`` seconds (raised to ``capabilities.min_lease_ttl``;
        a backend that grants whole seconds rounds up)."""

    @abc.abstractmethod
    async def keep_alive(self, lease_id: int) -> int:
        """Renew a lease to its full TTL; returns the TTL granted.

        Time-critical: the holder's safety depends on it. Raises ``LeaseLost`` when the lease
        has already expired or was revoked, ``StoreUnavailable`` when the store did not answer
        within the request timeout (the lease may still be alive: the holder counts its own
        remaining time from its last successful renewal).
        """

    @abc.abstractmethod
    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease now, deleting its keys. Idempotent (unknown lease: no error)."""

    @abc.abstractmethod
    def watch_batches(self, prefix: str, start_revision: int) -> AsyncGenerator[WatchBatch, None]:
        """Every change under ``prefix`` with revision >= ``start_revision``, in order, forever,
        in batches of whole revisions.

        Each batch is non-empty, sorted by (revision, key), and holds *every* change under
        ``prefix`` of each revision it contains: a transaction is never split between two
        batches (a batch may hold several revisions). No change is skipped or reported
        twice. So a reader that applies one batch at a time always holds the state of the
        prefix at some revision (the last of the batch), never half a transaction.

        Raises ``Compacted`` when ``start_revision`` is older than the history the store
        keeps (the caller re-reads with ``get_prefix`` and watches from there), and
        ``StoreUnavailable`` when the connection is lost (the caller resumes from the
        revision after the last batch it got). Close the generator, or cancel the iterating
        task, to stop.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Does not revoke leases (they expire by themselves)."""

    # --- conveniences built on the primitives ---------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """``watch_batches`` one change at a time (same order, errors and guarantees, but
        the reader cannot tell where a transaction ends)."""
        batches = self.watch_batches(prefix, start_revision)
        try:
            async for batch in batches:
                for event in batch:
                    yield event
        finally:
            await batches.aclose()

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Unconditionally set a key; returns the new store revision."""
        return (await self.txn((), (Put(key, value, lease),))).revision

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Unconditionally delete a key (or a prefix); returns the store revision after it."""
        return (await self.txn((), (Delete(key, prefix),))).revision

    async def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        """Create ``key`` only if it does not exist; True when created."""
        result = await self.txn((Compare.absent(key),), (Put(key, value, lease),))
        return result.succeeded

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
