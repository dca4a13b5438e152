"""The source's mirror process: the replicated device, its writes, and their completion.

The device is a file on a FUSE mount (``fuse.Fuse``) the kit puts a loop device on. One
thread reads the kernel's requests in batches; for a batch of writes it marks their
regions in the activity log (on disk, before anything is issued), marks them in the map
of every target that does not receive them, writes them to the local disk, and hands them
to every live target's session in one order (``order_lock``). A write is answered:

* sync mode: once every **required** target (the Mirroring ones) acknowledged it; a
  flush (fsync) once the local disk is flushed and every required target acknowledged
  the flush, which it does after its own ``fdatasync``;
* async mode: at once; a flush once the local disk is flushed.

A required target that goes silent or whose link breaks is **held**: writes wait for it
(it may be about to take over, as a source that died would) up to ``target_timeout``; it
is then dropped (Resync Pending): the source starts a new generation, marks what it may
lack, and goes on. The target has counted itself out of date before that. Targets
connect to the source (``accept``); what happens to each is decided by ``lineage.plan``.
Housekeeping, operator commands and status are in ``source_tasks``.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vigil.kits.mirror import source_tasks
from vigil.kits.mirror.config import DaemonConfig
from vigil.kits.mirror.fuse import OP_FSYNC, OP_READ, OP_WRITE, Fuse, FuseGone, Request
from vigil.kits.mirror.lineage import TargetRecord, started
from vigil.kits.mirror.meta import MirrorMeta, MirrorPaths, ResyncRecord, TargetInfo, TargetState
from vigil.kits.mirror.regions import ActivityLog, RegionMap, region_count
from vigil.kits.mirror.sessions import Session
from vigil.kits.mirror.wire import Kind, Link, compress
from vigil.kits.mirror.writer import DiskWriter

__all__ = ["Record", "Source"]

log = logging.getLogger("vigil.mirror")

#: writes at least this large (and aligned) go to the disk with O_DIRECT (no copy into the
#: page cache); smaller ones are buffered (a copy is cheaper than waiting for the device)
_DIRECT_MIN = 64 * 1024


@dataclass
class Record:
    """What the source keeps about one target while it runs (persisted in its meta)."""

    server: str
    state: str
    reason: str
    base: str | None
    dirty: RegionMap
    split_brain: bool = False
    #: regions marked since the map was last written to disk
    unsaved: set[int] = field(default_factory=set)
    since: float = field(default_factory=time.time)

    def planned(self) -> TargetRecord:
        state = TargetState.PENDING if self.split_brain else self.state
        return TargetRecord(state, self.base, self.dirty, self.reason)

    def set(self, state: str, reason: str) -> None:
        if state != self.state:
            self.since = time.time()
        self.state, self.reason = state, reason


@dataclass
class _Pending:
    seq: int
    unique: int
    size: int  # written bytes; -1 for a flush
    ticket: int  # the disk writer's ticket of the write (of the last write, for a flush)


class Source:
    """The source side of one mirror on this server (see the module docstring)."""

    def __init__(self, config: DaemonConfig, paths: MirrorPaths) -> None:
        self.config = config
        self.paths = paths
        self.size = config.size
        self.sync = config.mode == "sync"
        self.count = region_count(config.size, config.region_size)
        self.order_lock = threading.RLock()
        self.state_lock = threading.Lock()
        self.seq = 0
        self.pending: collections.deque[_Pending] = collections.deque()
        self.required: set[str] = set()
        self.holding: dict[str, tuple[float, str]] = {}
        self.sessions: dict[str, Session] = {}
        self.records: dict[str, Record] = {}
        self.tracked: list[Record] = []
        self.local_flushed = 0
        self.flush_wanted = threading.Condition()
        self.flush_asked = (0, 0)  # (frame number, the writer's ticket then)
        self.stopping = threading.Event()
        self.meta: MirrorMeta | None = None
        self.disk = -1
        self._direct = -1
        self.writer: DiskWriter | None = None
        self.activity = ActivityLog(RegionMap(self.count))
        self.fuse = Fuse(paths.fuse_dir, config.size, f"vigil-mirror:{config.tag}")

    # --- start ----------------------------------------------------------------------------

    def open(self) -> None:
        """Open the disk (exclusively), start a new generation, and set up each target's
        record from what this server kept. ``RuntimeError`` when this disk may not be a
        source (its data is not complete and no operator forced it)."""
        meta = self.paths.load()
        if meta is None:
            raise RuntimeError(f"no mirror metadata in {self.paths.root}: extend or create it")
        if not meta.consistent and meta.forced is None:
            raise RuntimeError(
                "this disk's data is incomplete (a resync into it did not finish): it may not "
                "be the source unless an operator forces it (vigil mirror force)"
            )
        self.disk = os.open(self.config.disk, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
        self._direct = os.open(self.config.disk, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
        self.writer = DiskWriter(self.disk, self._direct, _DIRECT_MIN)
        self.writer.on_done(lambda done: self.complete())
        self.activity = ActivityLog(RegionMap.load(self.count, self.paths.activity))
        previous = meta.lineage[0] if meta.lineage else None
        waiting = self._records(meta, previous)
        if meta.forced is not None:
            log.warning("starting as the source by an operator's force (%s)", meta.forced.by)
        meta.lineage = started(meta.lineage)
        meta.role, meta.forced, meta.split_brain = "source", None, None
        meta.last_source = True
        meta.consistent, meta.peers_in_sync = True, []
        self.meta = meta
        now = time.monotonic()
        for server in waiting:
            # it may still count itself in sync: no write is answered without it until it
            # connects or target_timeout has passed
            self.required.add(server)
            self.holding[server] = (now, "not connected since this source started")
        self._retrack()
        self.save()
        log.info(
            "source of %s on %s: generation %s (after %s), waiting for %s",
            self.config.tag,
            self.config.server,
            meta.lineage[0],
            previous,
            ", ".join(sorted(waiting)) or "no target",
        )

    def _records(self, meta: MirrorMeta, previous: str | None) -> set[str]:
        """Each target's record; the targets that may still count themselves in sync."""
        servers = {p.server for p in self.config.peers} | set(meta.targets)
        leftover = self.activity.map  # writes in flight when the last process ended
        waiting = set()
        for server in sorted(servers - {self.config.server}):
            info = meta.targets.get(server) or TargetInfo()
            dirty = RegionMap.load(self.count, self.paths.dirty(server))
            # a base this disk recorded as a source holds while it is in this disk's
            # lineage (a resync into this disk from another source forgets it); otherwise
            # a target shares this disk's last generation if it shared it as a target
            base: str | None = None
            if info.base is not None and info.base in meta.lineage:
                base = info.base
            elif meta.role != "source":
                base = previous
            if (meta.role == "source" and info.state == TargetState.MIRRORING) or (
                meta.role != "source" and server in meta.peers_in_sync
            ):
                waiting.add(server)
            dirty.update(leftover)
            state = info.state if info.state in (TargetState.PAUSED, TargetState.BROKEN) else None
            record = Record(
                server,
                state or TargetState.PENDING,
                info.reason if state else "not connected yet",
                base,
                dirty,
            )
            if state == TargetState.BROKEN:
                record.dirty.clear()
            record.dirty.persist()
            self.records[server] = record
        return waiting

    def save(self) -> None:
        """Persist the metadata with every target's record."""
        assert self.meta is not None
        self.meta.targets = {
            server: TargetInfo(state=r.state, reason=r.reason, base=r.base)
            for server, r in self.records.items()
        }
        self.paths.save(self.meta)

    def _retrack(self) -> None:
        """The targets whose maps each write marks: not receiving writes, not broken off."""
        self.tracked = [
            r
            for server, r in self.records.items()
            if server not in self.sessions
            or not self.sessions[server].live
            or server in self.holding
        ]
        self.tracked = [r for r in self.tracked if r.state != TargetState.BROKEN]

    @property
    def lineage(self) -> list[str]:
        assert self.meta is not None
        return self.meta.lineage

    def next_seq(self) -> int:
        """The next frame number (callers hold ``order_lock``)."""
        self.seq += 1
        return self.seq

    # --- the write path -------------------------------------------------------------------

    def serve(self) -> None:
        """Serve the device until it is unmounted or ``stopping`` is set."""
        while not self.stopping.is_set():
            if self.writer is not None and self.writer.error is not None:
                # nothing after a failed write is answered (``complete``): end the source
                raise OSError(f"writing the disk {self.config.disk} failed: {self.writer.error}")
            try:
                batch = self.fuse.read_batch(0.25)
            except FuseGone:
                log.info("the replicated device was unmounted")
                return
            if batch:
                self.handle(batch)

    def handle(self, batch: list[Request]) -> None:
        """One batch of requests, in the order the kernel sent them."""
        parts: list[bytes | memoryview] = []
        entries, nbytes = [], 0
        with self.order_lock:
            self._mark(batch)
            for request in batch:
                if request.opcode == OP_WRITE:
                    assert request.data is not None and self.writer is not None
                    ticket = self.writer.submit(
                        request.offset, request.data, self._release(request)
                    )
                    payload, flags = (
                        compress(request.data) if self.config.compression else (request.data, 0)
                    )
                    seq = self.next_seq()
                    parts += Link.frame(Kind.WRITE, seq, request.offset, payload, flags)
                    entries.append(_Pending(seq, request.unique, request.size, ticket))
                    nbytes += len(payload)
                elif request.opcode == OP_READ:
                    size = max(0, min(request.size, self.size - request.offset))
                    self.fuse.reply(request.unique, os.pread(self.disk, size, request.offset))
                elif request.opcode == OP_FSYNC:
                    seq = self.next_seq()
                    parts += Link.frame(Kind.FLUSH, seq)
                    assert self.writer is not None
                    entries.append(_Pending(seq, request.unique, -1, self.writer.issued))
                    with self.flush_wanted:
                        self.flush_asked = (seq, self.writer.issued)
                        self.flush_wanted.notify()
            with self.state_lock:
                self.pending.extend(entries)
            if parts:
                self._deliver(parts, nbytes)
        self.complete()

    def _mark(self, batch: list[Request]) -> None:
        """Regions of the batch's writes: in the activity log (durably, first) and in the
        map of every target that does not receive them."""
        size, new = self.config.region_size, []
        for request in batch:
            if request.opcode != OP_WRITE or not request.size:
                continue
            first, last = request.offset // size, (request.offset + request.size - 1) // size
            new += self.activity.touch(first, last)
            for record in self.tracked:
                record.unsaved.update(record.dirty.mark(first, last))
        self.activity.persist(new)

    def _release(self, request: Request) -> Callable[[int], None]:
        """What frees a write's buffer once the write is on the local disk (its frames
        were sent or copied by then: ``handle`` delivers before it reads again)."""
        return lambda ticket: self.fuse.release(request)

    def _deliver(self, parts: list[bytes | memoryview], nbytes: int) -> None:
        """Hand frames to every live session, in order (callers hold ``order_lock``)."""
        for session in list(self.sessions.values()):
            if session.live and not session.deliver(parts, nbytes):
                self.overflow(session)
            elif session.want_direct:
                with session.send_lock:
                    if session.drained():
                        session.direct, session.want_direct = True, False

    def flusher(self) -> None:
        """Thread: flush the local disk whenever a flush was asked for, once every write
        before it is written."""
        assert self.writer is not None
        while not self.stopping.is_set():
            with self.flush_wanted:
                while self.flush_asked[0] <= self.local_flushed and not self.stopping.is_set():
                    self.flush_wanted.wait(0.5)
                seq, ticket = self.flush_asked
            if seq > self.local_flushed:
                self.writer.wait_upto(ticket)
                os.fdatasync(self.disk)
                self.local_flushed = seq
                self.complete()

    # --- completion -----------------------------------------------------------------------

    def complete(self) -> None:
        """Answer every pending request whose conditions hold, in order."""
        done = []
        with self.state_lock:
            floor = self.seq
            for server in self.required:
                session = self.sessions.get(server)
                floor = min(floor, session.acked if session and session.live else 0)
            written = self.writer.done if self.writer is not None else 0
            if self.writer is not None and self.writer.error is not None:
                # read after ``done``: a write the local disk refused counts as done but
                # is never acknowledged (``serve`` then ends the source)
                return
            while self.pending and self.pending[0].seq <= floor:
                head = self.pending[0]
                if head.size < 0 and self.local_flushed < head.seq:
                    break
                if head.ticket > written:
                    break
                done.append(self.pending.popleft())
        for entry in done:
            if entry.size >= 0:
                self.fuse.reply_write(entry.unique, entry.size)
            else:
                self.fuse.reply(entry.unique)

    def acknowledged(self, session: Session) -> None:
        """A session's target acknowledged more (from its reader thread)."""
        if session.promote_at and session.acked >= session.promote_at:
            self.promote(session)
        self.complete()

    # --- targets come and go (callbacks of sessions; see also source_tasks) ----------------

    def resynced(self, session: Session) -> None:
        """A session's resync worker queued every region: tell the target it is in sync."""
        with self.order_lock:
            record = self.records[session.server]
            body = {"state": TargetState.MIRRORING, "lineage": self.lineage}
            seq = self.next_seq()
            session.deliver(Link.message(Kind.CONTROL, body, seq), 0, force=True)
            session.promote_at = seq
            record.dirty.clear()
            record.dirty.persist()
            record.unsaved.clear()

    def promote(self, session: Session) -> None:
        """The target is Mirroring: writes wait for it from now on (sync mode)."""
        with self.order_lock:
            if session.promote_at == 0 or self.sessions.get(session.server) is not session:
                return
            record = self.records[session.server]
            progress, session.promote_at = session.progress, 0
            record.set(TargetState.MIRRORING, "in sync")
            record.base = self.lineage[0]
            if self.sync:
                self.required.add(session.server)
                session.want_direct = True
            self.holding.pop(session.server, None)
            session.progress = None
            if progress is not None:
                self._record_resync(
                    session.server, progress.kind, progress.total, progress.bytes, progress.started
                )
            self._retrack()
            self.save()
            self.announce_peers()
        log.info("%s is Mirroring", session.server)

    def _record_resync(self, server: str, kind: str, regions: int, size: int, began: float) -> None:
        assert self.meta is not None
        seconds = time.monotonic() - began
        self.meta.record_resync(
            ResyncRecord(
                target=server,
                kind=kind,
                regions=regions,
                bytes=size,
                seconds=round(seconds, 3),
                at=time.time(),
            )
        )
        log.info(
            "%s resync of %s: %d region(s), %d bytes in %.2f s",
            kind,
            server,
            regions,
            size,
            seconds,
        )

    def announce_peers(self) -> None:
        """Tell every live target which targets are Mirroring (a new source waits for
        those that may still count themselves in sync). Callers hold ``order_lock``."""
        mirroring = sorted(s for s, r in self.records.items() if r.state == TargetState.MIRRORING)
        body = {"peers_in_sync": mirroring}
        for session in list(self.sessions.values()):
            if session.live:
                session.deliver(Link.message(Kind.CONTROL, body, self.next_seq()), 0, force=True)

    def bump(self, reason: str) -> None:
        """Start a new generation (going on without a target that shared this one);
        durable before any write is answered without it. Callers hold ``order_lock``."""
        assert self.meta is not None
        self.meta.lineage = started(self.meta.lineage)
        self.save()
        log.info("new generation %s: %s", self.lineage[0], reason)
        body = {"lineage": self.lineage}
        for server, session in list(self.sessions.items()):
            if session.live and self.records[server].state == TargetState.MIRRORING:
                session.deliver(Link.message(Kind.CONTROL, body, self.next_seq()), 0, force=True)

    def lost(self, session: Session, why: str) -> None:
        """A session's link broke (from any thread)."""
        source_tasks.unreachable(self, session.server, why, session)

    def overflow(self, session: Session) -> None:
        """A queued session is past its limit (callers hold ``order_lock``)."""
        source_tasks.overflow(self, session)
