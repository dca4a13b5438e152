"""The audit log: every operation asked of an agent's API, and every refused one.

Who asked (the token's name or the person logged in to the web UI, and the role), from
which address (the caller's own, also when an agent forwarded the request to another),
what (method, path and a summary of the body without any value of a property), and the
outcome (done, refused, not authorised, failed, unavailable, with the HTTP status and the
refusal's message). It is kept apart from the cluster event log (what the cluster did),
under ``AUDIT_PREFIX`` (``/vigil-audit/``) in the store, outside what agents watch, so
every agent shows the whole cluster's audit (``vigil audit``, ``GET /v1/audit``); each
entry is also one line of the agent's log (logger ``vigil.audit``), so the journal has it
when the store does not answer.

Writing never delays the request: entries are written by a task after the answer, and an
entry the store refuses is still in the log. The log keeps the newest ``MAX_ENTRIES``
entries; each agent trims it now and then (``TRIM_EVERY`` writes).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from vigil.errors import StoreError
from vigil.store.base import Delete, Store

__all__ = ["AUDIT_PREFIX", "AuditEntry", "AuditLog", "LoggedEntry"]

log = logging.getLogger("vigil.audit")

AUDIT_PREFIX = "/vigil-audit/"
MAX_ENTRIES = 20_000
TRIM_EVERY = 500
#: deletes per transaction when trimming (etcd: 128 operations at most)
TRIM_BATCH = 100
_sequence = itertools.count()


class AuditEntry(BaseModel):
    """One audited request, as stored (JSON, with a schema version)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    schema_version: int = 1
    at: float
    #: the agent that answered
    server: str
    who: str
    role: str
    address: str
    #: the agent that passed the request on ("" when the caller asked this agent)
    forwarded_by: str = ""
    method: str
    path: str
    what: str
    #: done, refused, not authorised, failed, unavailable
    outcome: str
    status: int
    detail: str = ""

    def line(self) -> str:
        """The entry as one log line."""
        via = f" via {self.forwarded_by}" if self.forwarded_by else ""
        detail = f": {self.detail}" if self.detail else ""
        return (
            f"{self.who} ({self.role}) from {self.address}{via}: {self.what} -> "
            f"{self.outcome} ({self.status}){detail}"
        )


@dataclass(frozen=True)
class LoggedEntry:
    """An entry with its id (the key's last part: later entries sort after)."""

    id: str
    entry: AuditEntry


def outcome_of(status: int) -> str:
    """The outcome an HTTP status means for the audit log."""
    if status < 400:
        return "done"
    if status in (401, 403):
        return "not authorised"
    if status == 503:
        return "unavailable"
    return "refused" if status < 500 else "failed"


class AuditLog:
    """Writes audit entries to the store in the background, and reads them back."""

    def __init__(self, store: Store, server: str) -> None:
        self.store = store
        self.server = server
        self._tasks: set[asyncio.Task[None]] = set()
        self._written = 0

    def record(self, entry: AuditEntry) -> None:
        """Log ``entry`` now and write it to the store in the background."""
        level = logging.INFO if entry.outcome == "done" else logging.WARNING
        log.log(level, "%s", entry.line())
        task = asyncio.get_running_loop().create_task(self._write(entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, entry: AuditEntry) -> None:
        name = f"{time.time_ns():020d}-{self.server}-{next(_sequence)}"
        try:
            await self.store.put(AUDIT_PREFIX + name, entry.model_dump_json().encode())
        except StoreError as exc:
            log.warning("could not store the audit entry above: %s", exc)
            return
        self._written += 1
        if self._written % TRIM_EVERY == 0:
            await self.trim()

    async def trim(self, keep: int = MAX_ENTRIES) -> int:
        """Delete all but the newest ``keep`` entries; how many it deleted."""
        try:
            snapshot = await self.store.get_prefix(AUDIT_PREFIX)
            old = [item.key for item in snapshot.items[: max(0, len(snapshot.items) - keep)]]
            for start in range(0, len(old), TRIM_BATCH):
                await self.store.txn((), [Delete(k) for k in old[start : start + TRIM_BATCH]])
        except StoreError as exc:
            log.warning("could not trim the audit log: %s", exc)
            return 0
        return len(old)

    async def flush(self) -> None:
        """Wait for the entries being written (tests, an orderly stop)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def entries(self, limit: int, after: str = "") -> list[LoggedEntry]:
        """The newest ``limit`` entries (after the entry id ``after``), oldest first."""
        snapshot = await self.store.get_prefix(AUDIT_PREFIX)
        found = []
        for item in snapshot.items:
            entry_id = item.key[len(AUDIT_PREFIX) :]
            if entry_id <= after:
                continue
            try:
                found.append(LoggedEntry(entry_id, AuditEntry.model_validate_json(item.value)))
            except ValueError:
                continue  # written by a later version: skipped, not an error
        return found[-limit:] if limit > 0 else []
