"""Writing to a disk from a few threads at once.

A single thread writing a mirror's disk one ``pwrite`` after another waits for the
device each time; the source (which must not stop reading the kernel's requests) and the
target (which must not stop reading the link) hand their writes to a ``DiskWriter``
instead. Each write gets a **ticket** (1, 2, 3... in the order written); ``done`` is the
highest ticket up to which every write has completed, so "everything written before X"
is one comparison. Writes that overlap one in flight wait for it: the disk always ends
with the last write's data, as if they had been written one by one.

Large aligned writes go with ``O_DIRECT`` (no copy into the page cache, no writeback
later); small ones are buffered when the caller says so (``direct_min``).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

__all__ = ["DiskWriter"]

_ALIGN = 4096
Done = Callable[[int], None]


class DiskWriter:
    """A pool of ``threads`` writing to ``fd`` (buffered) or ``direct`` (O_DIRECT)."""

    def __init__(self, fd: int, direct: int, direct_min: int, threads: int = 4) -> None:
        self.fd = fd
        self.direct = direct
        self.direct_min = direct_min
        self.done = 0
        self.issued = 0
        self.error: OSError | None = None
        self._cond = threading.Condition()
        self._inflight: dict[int, tuple[int, int]] = {}
        self._finished: set[int] = set()
        self._queue: queue.SimpleQueue[tuple[int, int, memoryview | bytes, Done | None] | None]
        self._queue = queue.SimpleQueue()
        self._listeners: list[Done] = []
        self._threads = [
            threading.Thread(target=self._work, name=f"disk writer {n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def on_done(self, listener: Done) -> None:
        """Call ``listener(done)`` (from a writer thread) whenever ``done`` advances."""
        self._listeners.append(listener)

    def submit(self, offset: int, data: memoryview | bytes, after: Done | None = None) -> int:
        """Write ``data`` at ``offset`` (``after(ticket)`` once written); its ticket. Waits
        while a write in flight overlaps it. One thread submits."""
        end = offset + len(data)
        with self._cond:
            while any(offset < e and s < end for s, e in self._inflight.values()):
                self._cond.wait()
            self.issued += 1
            ticket = self.issued
            self._inflight[ticket] = (offset, end)
        self._queue.put((ticket, offset, data, after))
        return ticket

    def wait_range(self, offset: int, length: int) -> None:
        """Wait until no write in flight overlaps ``offset``..``offset + length``."""
        end = offset + length
        with self._cond:
            while any(offset < e and s < end for s, e in self._inflight.values()):
                self._cond.wait()

    def wait_upto(self, ticket: int) -> None:
        """Wait until every write up to ``ticket`` has completed."""
        with self._cond:
            while self.done < ticket:
                self._cond.wait()

    def wait_all(self) -> None:
        """Wait until every write submitted so far has completed."""
        with self._cond:
            while self._inflight:
                self._cond.wait()

    def close(self) -> None:
        """Finish what was submitted, then stop the threads."""
        self.wait_all()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(10)

    def _write(self, offset: int, data: memoryview | bytes) -> None:
        size = len(data)
        fd = self.direct if size >= self.direct_min and not (offset | size) % _ALIGN else self.fd
        try:
            written = os.pwrite(fd, data, offset)
        except OSError:
            if fd != self.direct:
                raise
            written = os.pwrite(self.fd, data, offset)  # O_DIRECT refused this buffer
        while written < size:  # a block device writes everything; be safe anyway
            written += os.pwrite(self.fd, data[written:], offset + written)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            ticket, offset, data, after = item
            try:
                self._write(offset, data)
            except OSError as exc:
                self.error = exc  # the owner checks it: a disk that fails ends the mirror
            if after is not None:
                after(ticket)
            with self._cond:
                del self._inflight[ticket]
                self._finished.add(ticket)
                advanced = False
                while self.done + 1 in self._finished:
                    self._finished.discard(self.done + 1)
                    self.done += 1
                    advanced = True
                self._cond.notify_all()
                done = self.done
            if advanced:
                for listener in self._listeners:
                    listener(done)
