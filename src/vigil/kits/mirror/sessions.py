"""One connected target, seen from the source: delivery, acknowledgements, resync.

A session delivers frames in the source's order either **directly** (the source's write
path sends them itself: a Mirroring target in sync mode, whose acknowledgement every
write waits for anyway) or through a **queue** drained by the session's sender thread
(async mode, and any target being resynchronized, so a slow one never slows the writes
of the others). Queued data is copied; a queue past its limit is the caller's business
(the target is paused, or dropped and resynchronized later).

Threads per session: a reader (acknowledgements and pings from the target), a sender
(the queue, and a ping whenever the link has been quiet for ``PING_INTERVAL``), and while
a plan is carried out, a resync worker: region by region, each read from the source's
disk and queued under the source's order lock (so a write to that region is either in
the block read or queued after it), then the control message that makes the target
Mirroring; once the target acknowledges it, the source counts on it.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vigil.kits.mirror.regions import RegionMap
from vigil.kits.mirror.wire import Kind, Link, LinkClosed, compress

if TYPE_CHECKING:
    from vigil.kits.mirror.source import Source

__all__ = ["HB_TIMEOUT", "PING_INTERVAL", "Progress", "Session"]

log = logging.getLogger("vigil.mirror")

#: seconds between pings on a quiet link
PING_INTERVAL = 0.5
#: seconds without a word from the other end after which it counts as lost
HB_TIMEOUT = 2.0
_Parts = list[bytes | memoryview]


@dataclass
class Progress:
    """A resync under way. A region counts as done once the target acknowledged it (sent
    is not done: a resync queues ahead of a slow link, and its percent and ETA must say
    what the target has)."""

    kind: str  # partial or full
    total: int  # regions
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    bytes: int = 0
    #: (sequence number, bytes) of each region sent and not yet acknowledged, in order;
    #: appended by the resync worker, taken by the acknowledgement reader
    unacked: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)

    def sent(self, seq: int, length: int) -> None:
        self.unacked.append((seq, length))

    def acknowledged(self, seq: int) -> None:
        """The target has every frame up to ``seq``."""
        while self.unacked and self.unacked[0][0] <= seq:
            _, length = self.unacked.popleft()
            self.done += 1
            self.bytes += length

    def view(self) -> dict[str, float | int | str]:
        elapsed = max(time.monotonic() - self.started, 1e-3)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else -1.0
        return {
            "kind": self.kind,
            "regions": self.total,
            "done": self.done,
            "percent": round(100.0 * self.done / max(self.total, 1), 1),
            "mb_per_s": round(self.bytes / elapsed / 1e6, 1),
            "eta_s": round(eta, 1),
        }


class Bucket:
    """A token bucket: ``take`` sleeps so that no more than ``rate`` bytes/s go out."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.allowance = rate / 10
        self.at = time.monotonic()

    def take(self, amount: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self.allowance = min(self.rate / 10, self.allowance + (now - self.at) * self.rate)
        self.at = now
        self.allowance -= amount
        if self.allowance < 0:
            time.sleep(-self.allowance / self.rate)


class Session:
    """A target connected to the source (see the module docstring)."""

    def __init__(self, source: Source, server: str, link: Link, queue_limit: int) -> None:
        self.source = source
        self.server = server
        self.link = link
        self.acked = 0
        self.last_heard = time.monotonic()
        self.last_sent = time.monotonic()
        #: receives the writes (Mirroring or being resynchronized); an idle session (a
        #: paused or broken-off target) only keeps the link alive
        self.live = False
        self.direct = False
        #: becomes direct once its queue is drained (set when it becomes Mirroring)
        self.want_direct = False
        self.queue_limit = queue_limit
        self.queue: collections.deque[tuple[_Parts, int]] = collections.deque()
        self.queue_bytes = 0
        self.changed = threading.Condition()
        self.send_lock = threading.Lock()
        self.abandoned = threading.Event()
        self.bucket = Bucket(source.config.bandwidth)
        self.progress: Progress | None = None
        #: the sequence number whose acknowledgement makes the target Mirroring
        self.promote_at = 0
        self.threads: list[threading.Thread] = []

    # --- delivery -------------------------------------------------------------------------

    def deliver(self, parts: _Parts, size: int, *, force: bool = False) -> bool:
        """Send ``parts`` (``size`` bytes of data) in order; False when the queue is past
        its limit (nothing queued: the caller decides what that means) unless ``force``."""
        if self.abandoned.is_set():
            return True  # going away: its map records what it misses
        if self.direct:
            self._send(parts, size)
            return True
        if not force and self.queue_bytes + size > self.queue_limit and self.queue:
            return False
        copied: _Parts = [bytes(p) for p in parts]
        with self.changed:
            self.queue.append((copied, size))
            self.queue_bytes += size
            self.changed.notify_all()
        return True

    def _send(self, parts: _Parts, size: int) -> None:
        with self.send_lock:
            self._send_locked(parts, size)

    def _send_locked(self, parts: _Parts, size: int) -> None:
        self.bucket.take(size)
        try:
            self.link.send(parts, self.abandoned)
        except LinkClosed as exc:
            if not self.abandoned.is_set():
                threading.Thread(
                    target=self.source.lost, args=(self, f"the link broke: {exc}"), daemon=True
                ).start()
            self.abandoned.set()
        self.last_sent = time.monotonic()

    def drained(self) -> bool:
        return not self.queue

    def wait_room(self, size: int, share: float = 1.0) -> None:
        """Wait until ``size`` more bytes fit in ``share`` of the queue (or the session
        ends)."""
        with self.changed:
            while self.queue and self.queue_bytes + size > self.queue_limit * share:
                if self.abandoned.is_set():
                    return
                self.changed.wait(0.5)

    # --- threads --------------------------------------------------------------------------

    def start(self, plan: RegionMap | None, kind: str) -> None:
        """Start the reader and sender, and the resync worker for ``plan``."""
        jobs = [(self._read, "acks"), (self._drain, "sender")]
        if plan is not None:
            self.progress = Progress(kind, plan.marked())
            jobs.append((lambda: self._resync(plan), "resync"))
        for job, name in jobs:
            thread = threading.Thread(target=job, name=f"{name} {self.server}", daemon=True)
            self.threads.append(thread)
            thread.start()

    def abandon(self) -> None:
        """End the session: its threads stop, the link is closed."""
        self.abandoned.set()
        with self.changed:
            self.changed.notify_all()
        self.link.close()

    def _read(self) -> None:
        while not self.abandoned.is_set():
            try:
                frame = self.link.read()
            except TimeoutError:
                continue
            except (LinkClosed, ValueError) as exc:
                if not self.abandoned.is_set():
                    self.source.lost(self, f"the link broke: {exc}")
                return
            self.last_heard = time.monotonic()
            if frame.kind == Kind.ACK and frame.seq > self.acked:
                self.acked = frame.seq
                progress = self.progress  # set to None by promote, from this thread too
                if progress is not None:
                    progress.acknowledged(frame.seq)
                self.source.acknowledged(self)

    def _drain(self) -> None:
        """Send what is queued, in order, and a ping when the link has been quiet. An item
        is taken off the queue only under ``send_lock``, so a session that becomes direct
        (once drained) never overtakes it."""
        while not self.abandoned.is_set():
            with self.changed:
                if not self.queue:
                    self.changed.wait(PING_INTERVAL / 2)
            with self.send_lock:
                with self.changed:
                    item = self.queue.popleft() if self.queue else None
                if item is not None:
                    self._send_locked(*item)
                    with self.changed:
                        self.queue_bytes -= item[1]
                        self.changed.notify_all()
                elif time.monotonic() - self.last_sent >= PING_INTERVAL:
                    self._send_locked(Link.frame(Kind.PING), 0)

    def _resync(self, plan: RegionMap) -> None:
        """Copy every region of ``plan``, then make the target Mirroring."""
        source, progress = self.source, self.progress
        assert progress is not None
        size, region_size = source.size, source.config.region_size
        compressing = source.config.compression
        for region in plan.regions():
            if self.abandoned.is_set():
                return
            offset = region * region_size
            length = min(region_size, size - offset)
            # a resync fills half the queue at most: live writes keep the other half
            self.wait_room(length, share=0.5)
            self.bucket.take(0)
            with source.order_lock:
                if source.writer is not None:  # a write to this region lands first
                    source.writer.wait_range(offset, length)
                data = os.pread(source.disk, length, offset)
                payload, flags = compress(data) if compressing else (data, 0)
                seq = source.next_seq()
                progress.sent(seq, length)  # before it can be acknowledged
                frame = Link.frame(Kind.RESYNC, seq, offset, payload, flags)
                self.deliver(frame, len(payload), force=True)
        if not self.abandoned.is_set():
            source.resynced(self)
