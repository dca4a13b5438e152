"""The embedded coordination store: one SQLite file in WAL mode, shared by the agent
processes of one host.

Design:

* Each ``EmbeddedStore`` owns one connection, used only by its own single worker thread, so
  the asyncio loop never blocks on SQLite (file I/O, lock waits).
* Write transactions start with ``BEGIN IMMEDIATE``: they take the database write lock up
  front (waiting at most the rest of the request timeout), so no other process can slip a
  write between a transaction's compares and its operations. Reads run in a deferred
  transaction: WAL gives each one a consistent snapshot without blocking writers.
* Tables: ``meta`` (the global revision, the compaction point, the boot id), ``kv`` (the
  keys), ``events`` (the change history that watches poll) and ``leases`` (each with an
  expiry deadline on CLOCK_MONOTONIC, which is system-wide on Linux, so every process of the
  host reads the same clock; it restarts at boot, so a new boot id expires every lease).
* Expired leases are swept (their keys deleted at one revision) at the start of every write
  transaction, and by reads and watch polls when one is due, so a lease expires even if
  nobody writes.

Timeouts: every call is bounded by ``request_timeout`` (queueing, lock wait, execution) and
raises ``StoreUnavailable`` naming the database file when it is exceeded. Retries are the
caller's.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import TypeVar, cast

from vigil.errors import Compacted, LeaseLost, StoreError, StoreUnavailable
from vigil.store.base import (
    Compare,
    EventType,
    KeyValue,
    Lease,
    Operation,
    Put,
    Snapshot,
    Store,
    StoreCapabilities,
    StoreStats,
    TxnResult,
    WatchBatch,
    WatchEvent,
)

T = TypeVar("T")
Conn = sqlite3.Connection

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL,"
    " create_revision INTEGER NOT NULL, mod_revision INTEGER NOT NULL,"
    " lease INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease)",
    # AUTOINCREMENT: a lease id is never reused, so a stale holder cannot renew a new lease.
    "CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " ttl REAL NOT NULL, deadline REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS leases_by_deadline ON leases (deadline)",
    "CREATE TABLE IF NOT EXISTS events (revision INTEGER NOT NULL, key TEXT NOT NULL,"
    " type TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (revision, key)) WITHOUT ROWID",
    "INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compact_revision', 0), ('boot_id', '')",
)
_KV_COLUMNS = "key, value, create_revision, mod_revision, lease"
_UPSERT = (
    f"INSERT INTO kv ({_KV_COLUMNS}) VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE"
    " SET value = excluded.value, mod_revision = excluded.mod_revision, lease = excluded.lease"
)
_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
#: revisions read per watch poll, so that a far-behind watcher reads history in bounded bites
_WATCH_BATCH = 1000


class EmbeddedStore(Store):
    """A store client on one SQLite database file. Create it with ``await EmbeddedStore.open``.

    Several instances, in one process or several, may share one file. ``history_limit`` is
    the number of newest revisions whose events each writer keeps for watches (older ones
    are compacted); ``poll_interval`` is how often an idle watch looks for new events.
    Every call raises ``StoreUnavailable`` (naming the file) when it does not complete within
    ``request_timeout``, and ``StoreError`` once the client is closed; retries are the caller's.
    """

    capabilities = StoreCapabilities(min_lease_ttl=1, networked=False, single_host=True)

    def __init__(
        self, path: str, *, request_timeout: float, history_limit: int, poll_interval: float
    ) -> None:
        if request_timeout <= 0 or history_limit < 1 or poll_interval <= 0:
            raise ValueError("request_timeout, history_limit and poll_interval must be positive")
        self.path = path
        self.stats = StoreStats()
        self._timeout = request_timeout
        self._history_limit = history_limit
        self._poll_interval = poll_interval
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-store")
        self._conn: Conn | None = None  # opened, and only ever used, by the worker thread
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        request_timeout: float = 2.0,
        history_limit: int = 10_000,
        poll_interval: float = 0.025,
    ) -> EmbeddedStore:
        """Open ``path``, creating its directory, the file and the schema when missing.

        Idempotent (opening an existing store changes nothing, except after a reboot, when
        every lease is expired). Raises ``StoreUnavailable`` naming the file when it cannot
        be created, opened or locked within ``request_timeout``.
        """
        store = cls(
            path,
            request_timeout=request_timeout,
            history_limit=history_limit,
            poll_interval=poll_interval,
        )
        try:
            await store._call(lambda conn: None)  # the first call connects and sets up
        except BaseException:
            await store.close()
            raise
        return store

    # --- the contract ---------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        """The current value of ``key`` or None; the newest committed state (linearizable)."""
        return await self._reading(lambda conn: _get_key(conn, key))

    async def get_prefix(self, prefix: str) -> Snapshot:
        """Keys under ``prefix``, sorted, and the store revision, in one read transaction."""
        return await self._reading(lambda conn: _snapshot(conn, prefix))

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Operation],
        failure: Sequence[Operation] = (),
    ) -> TxnResult:
        """Compare-and-set in one ``BEGIN IMMEDIATE`` transaction; see ``Store.txn``."""
        return await self._writing(lambda conn: self._apply(conn, compares, success, failure))

    async def grant_lease(self, ttl: float) -> Lease:
        """Create a lease. Asks of zero or less are raised to ``min_lease_ttl``; fractional
        TTLs are honoured (whole seconds is the contract; sub-second leases are for tests)."""
        if not math.isfinite(ttl):
            raise ValueError(f"lease TTL must be finite, not {ttl!r}")
        granted = ttl if ttl > 0 else self.capabilities.min_lease_ttl

        def grant(conn: Conn) -> int:
            deadline = time.monotonic() + granted
            cursor = conn.execute(
                "INSERT INTO leases (ttl, deadline) VALUES (?, ?)", (granted, deadline)
            )
            return cast(int, cursor.lastrowid)

        lease_id = await self._writing(grant)
        return Lease(lease_id, _contract_ttl(granted))

    async def keep_alive(self, lease_id: int) -> int:
        """Renew ``lease_id`` to its full TTL from now. Raises ``LeaseLost`` if it is gone."""

        def renew(conn: Conn) -> float:
            row = conn.execute("SELECT ttl FROM leases WHERE id = ?", (lease_id,)).fetchone()
            if row is None:
                raise LeaseLost(
                    f"lease {lease_id} has expired or was revoked (store {self.path});"
                    " its keys are gone: grant a new lease and re-create them"
                )
            ttl = float(row[0])
            conn.execute(
                "UPDATE leases SET deadline = ? WHERE id = ?", (time.monotonic() + ttl, lease_id)
            )
            return ttl

        return _contract_ttl(await self._writing(renew))

    async def revoke_lease(self, lease_id: int) -> None:
        """Delete the lease and its keys at one revision. Idempotent."""

        def revoke(conn: Conn) -> None:
            if conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone():
                self._drop_leases(conn, [lease_id])

        await self._writing(revoke)

    async def watch_batches(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[WatchBatch, None]:
        """Changes under ``prefix`` from ``start_revision`` on, in batches of whole
        revisions; see ``Store.watch_batches``.

        Polls the ``events`` table: SQLite has no change notification that crosses
        processes, and a poll every few tens of milliseconds is cheap (one indexed range
        read). Each poll is one call bounded by the request timeout, reads a range of whole
        revisions (at most ``_WATCH_BATCH``) in one read transaction, and yields what it
        found under the prefix as one batch.
        """
        next_revision = start_revision
        while True:
            poll = partial(self._poll, prefix=prefix, start=next_revision)
            events, next_revision, caught_up = await self._reading(poll)
            if events:
                yield tuple(events)
            if caught_up:
                await asyncio.sleep(self._poll_interval)

    async def close(self) -> None:
        """Close the connection once calls already queued have run. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        finally:
            self._executor.shutdown(wait=False)

    # --- plumbing: event loop side ----------------------------------------------------

    async def _reading(self, body: Callable[[Conn], T]) -> T:
        return await self._call(lambda conn: self._read(conn, body))

    async def _writing(self, body: Callable[[Conn], T]) -> T:
        return await self._call(lambda conn: self._write(conn, body))

    async def _call(self, job: Callable[[Conn], T]) -> T:
        """Run ``job`` on the worker thread, bounded by the request timeout."""
        if self._closed:
            raise StoreError("store is closed")
        deadline = time.monotonic() + self._timeout
        self.stats.requests += 1
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._run, job, deadline
        )
        # On timeout (or when the caller is cancelled) the future is cancelled: a job still
        # queued never runs; one already running finishes on its own (its outcome is unknown
        # to the caller). Not ``asyncio.wait_for`` nor ``asyncio.timeout``: on Python 3.11,
        # when the job completes just as the time runs out or the caller is cancelled, the
        # first swallows the cancellation (a cancelled watch task could run for ever) and
        # the second can leave it pending for the caller's next await. ``asyncio.wait``
        # cancels nobody: the caller's task sees exactly its own cancellations.
        try:
            done, _ = await asyncio.wait((future,), timeout=self._timeout)
        finally:
            if not future.done():
                future.cancel()
        try:
            if not done:
                raise self._unavailable(f"no answer within {self._timeout:g} s")
            return future.result()
        except StoreUnavailable:
            self.stats.errors += 1
            raise

    def _unavailable(self, reason: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"embedded store {self.path}: {reason}; check that the file and its directory are"
            " writable and that no process holds the database lock for long, then retry"
        )

    # --- plumbing: worker thread side -------------------------------------------------

    def _run(self, job: Callable[[Conn], T], deadline: float) -> T:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._unavailable("the request waited too long behind others")
        try:
            return job(self._connection(busy_ms=max(1, int(remaining * 1000))))
        except (sqlite3.Error, OSError) as exc:
            if self._conn is not None and self._conn.in_transaction:
                _rollback(self._conn)
            raise self._unavailable(str(exc) or type(exc).__name__) from exc

    def _connection(self, busy_ms: int) -> Conn:
        """The connection, opened (and the schema set up) on first use."""
        if self._conn is not None:
            # The busy timeout bounds how long SQLite waits for another process's lock.
            self._conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
            return self._conn
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=busy_ms / 1000, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode never corrupts the file; a power cut may lose the last
            # commits, but it also stops every process (and lease holder) of this host.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            self._expire_after_reboot(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            with suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _expire_after_reboot(self, conn: Conn) -> None:
        """Lease deadlines are on the monotonic clock, which restarts at boot: drop them all."""
        try:
            boot_id = _BOOT_ID_FILE.read_text().strip()
        except OSError:
            return
        row = conn.execute("SELECT value FROM meta WHERE name = 'boot_id'").fetchone()
        if row[0] != boot_id:
            self._drop_leases(conn, [r[0] for r in conn.execute("SELECT id FROM leases")])
            conn.execute("UPDATE meta SET value = ? WHERE name = 'boot_id'", (boot_id,))

    def _write(self, conn: Conn, body: Callable[[Conn], T]) -> T:
        """Run ``body`` in a write transaction, after sweeping expired leases."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._sweep(conn)
            result = body(conn)
        except LeaseLost:
            # Bodies raise LeaseLost before changing anything: keep the sweep.
            conn.execute("COMMIT")
            raise
        except BaseException:
            _rollback(conn)
            raise
        conn.execute("COMMIT")
        return result

    def _read(self, conn: Conn, body: Callable[[Conn], T]) -> T:
        """Run ``body`` in one read transaction (one snapshot), sweeping first if one is due."""
        due = "SELECT 1 FROM leases WHERE deadline <= ? LIMIT 1"
        if conn.execute(due, (time.monotonic(),)).fetchone():
            self._write(conn, lambda c: None)
        conn.execute("BEGIN")
        try:
            result = body(conn)
        except BaseException:
            _rollback(conn)
            raise
        conn.execute("COMMIT")
        return result

    def _sweep(self, conn: Conn) -> None:
        expired = "SELECT id FROM leases WHERE deadline <= ?"
        lease_ids = [row[0] for row in conn.execute(expired, (time.monotonic(),))]
        if lease_ids:
            self._drop_leases(conn, lease_ids)

    def _drop_leases(self, conn: Conn, lease_ids: list[int]) -> None:
        """Delete leases and all their keys at one new revision (none if no key was bound)."""
        deleted: dict[str, bytes | None] = {}
        for lease_id in lease_ids:
            for (key,) in conn.execute("SELECT key FROM kv WHERE lease = ?", (lease_id,)):
                deleted[key] = None
            conn.execute("DELETE FROM kv WHERE lease = ?", (lease_id,))
            conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
        if deleted:
            self._record(conn, _revision(conn) + 1, deleted)

    def _apply(
        self,
        conn: Conn,
        compares: Sequence[Compare],
        success: Sequence[Operation],
        failure: Sequence[Operation],
    ) -> TxnResult:
        current = _revision(conn)
        holds = all(_mod_revision(conn, c.key) == c.mod_revision for c in compares)
        operations = success if holds else failure
        for op in operations:
            known = "SELECT 1 FROM leases WHERE id = ?"
            if isinstance(op, Put) and op.lease and not conn.execute(known, (op.lease,)).fetchone():
                raise LeaseLost(
                    f"lease {op.lease} has expired or was revoked (store {self.path});"
                    f" nothing was written (first key: {op.key!r})"
                )
        revision = current + 1
        existed: dict[str, bool] = {}  # did the key exist before this transaction?
        changes: dict[str, bytes | None] = {}  # final state per key, None for deleted
        for op in operations:
            if isinstance(op, Put):
                existed.setdefault(op.key, _mod_revision(conn, op.key) != 0)
                conn.execute(_UPSERT, (op.key, op.value, revision, revision, op.lease))
                changes[op.key] = op.value
                continue
            where, args = ("key = ?", (op.key,)) if not op.prefix else _prefix_clause(op.key)
            for (key,) in conn.execute(f"DELETE FROM kv WHERE {where} RETURNING key", args):
                existed.setdefault(key, True)
                changes[key] = None
        # A key created and deleted again within the transaction changed nothing.
        changes = {k: v for k, v in changes.items() if v is not None or existed[k]}
        if not changes:
            return TxnResult(holds, current)
        self._record(conn, revision, changes)
        return TxnResult(holds, revision)

    def _record(self, conn: Conn, revision: int, changes: dict[str, bytes | None]) -> None:
        """Set the store revision, log the events, and compact history beyond the limit."""
        conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
        conn.executemany(
            "INSERT INTO events (revision, key, type, value) VALUES (?, ?, ?, ?)",
            [
                (revision, key, EventType.DELETE if value is None else EventType.PUT, value or b"")
                for key, value in sorted(changes.items())
            ],
        )
        floor = revision - self._history_limit + 1
        if floor > _meta_int(conn, "compact_revision"):
            conn.execute("DELETE FROM events WHERE revision < ?", (floor,))
            conn.execute("UPDATE meta SET value = ? WHERE name = 'compact_revision'", (floor,))

    def _poll(self, conn: Conn, prefix: str, start: int) -> tuple[list[WatchEvent], int, bool]:
        """Events under ``prefix`` from ``start``: (events, next start, caught up?)."""
        current, compacted = _revision(conn), _meta_int(conn, "compact_revision")
        if start < compacted:
            raise Compacted(
                f"embedded store {self.path}: a watch of {prefix!r} asked for revision {start},"
                f" but history before {compacted} was compacted; re-read with get_prefix and"
                " watch from its revision + 1",
                compacted,
            )
        upper = min(current, start + _WATCH_BATCH - 1)
        if upper < start:
            return [], start, True
        where, args = _prefix_clause(prefix)
        rows = conn.execute(
            "SELECT revision, key, type, value FROM events WHERE revision BETWEEN ? AND ?"
            f" AND {where} ORDER BY revision, key",
            (start, upper, *args),
        )
        events = [WatchEvent(EventType(kind), key, value, rev) for rev, key, kind, value in rows]
        return events, upper + 1, upper == current


# --- SQL helpers (worker thread) -----------------------------------------------------


def _meta_int(conn: Conn, name: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return int(row[0])


def _revision(conn: Conn) -> int:
    return _meta_int(conn, "revision")


def _mod_revision(conn: Conn, key: str) -> int:
    row = conn.execute("SELECT mod_revision FROM kv WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def _to_key_value(row: tuple[str, bytes, int, int, int]) -> KeyValue:
    key, value, create_revision, mod_revision, lease = row
    return KeyValue(key, bytes(value), create_revision, mod_revision, lease)


def _get_key(conn: Conn, key: str) -> KeyValue | None:
    row = conn.execute(f"SELECT {_KV_COLUMNS} FROM kv WHERE key = ?", (key,)).fetchone()
    return _to_key_value(row) if row else None


def _snapshot(conn: Conn, prefix: str) -> Snapshot:
    revision = _revision(conn)  # the first read fixes the WAL snapshot for the transaction
    where, args = _prefix_clause(prefix)
    rows = conn.execute(f"SELECT {_KV_COLUMNS} FROM kv WHERE {where} ORDER BY key", args)
    return Snapshot(revision, tuple(_to_key_value(row) for row in rows))


def _prefix_clause(prefix: str) -> tuple[str, tuple[str, ...]]:
    """A ``WHERE`` clause on ``key`` selecting every key that starts with ``prefix``.

    A key range rather than ``LIKE``/``GLOB`` so that the primary key index is used and no
    character needs escaping. SQLite compares TEXT as UTF-8 bytes, which orders exactly like
    Python compares code points.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000  # surrogates cannot be stored in UTF-8 keys: skip them
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "key >= ? AND key < ?", (prefix, "".join(chars))
        chars.pop()
    return "key >= ?", (prefix,)


def _rollback(conn: Conn) -> None:
    with suppress(sqlite3.Error):
        conn.execute("ROLLBACK")


def _contract_ttl(ttl: float) -> int:
    """A TTL as the contract's ``int``: whole seconds exactly; a sub-second test TTL unrounded
    (rounding up would make its holder renew too late; rounding down could make it 0)."""
    return int(ttl) if float(ttl).is_integer() else cast(int, ttl)
