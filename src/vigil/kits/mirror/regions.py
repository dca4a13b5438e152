"""Dirty-region maps and the activity log: which parts of a mirrored volume may differ.

The volume is cut into regions of ``region_size`` bytes. A ``RegionMap`` holds one byte
per region (1: marked) in memory and, when it has a file, on disk in the same layout, so
marking a region persistently is one ``pwrite`` of one byte (runs of regions are written
together) and one ``fdatasync`` for a whole batch.

The source keeps a map per target that is not receiving its writes (paused, broken off,
disconnected: every write marks it), and both roles keep an ``ActivityLog``: before a
write is issued (source) or applied (target), its regions are marked on disk, and they are
cleared only once every write before an earlier rotation point is known to be on every
live target. After a crash, the log names every region that may differ between this disk
and its peers (writes in flight), so a resync after any failover copies only those, and
whatever was written while a peer was away (its map), never the whole volume.
"""

from __future__ import annotations

import base64
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ActivityLog", "RegionMap", "region_count"]


def region_count(size: int, region_size: int) -> int:
    """How many regions a volume of ``size`` bytes has (the last may be short)."""
    return max(1, -(-size // region_size))


def _runs(regions: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted regions as (first, count) runs."""
    runs: list[tuple[int, int]] = []
    for region in sorted(set(regions)):
        if runs and runs[-1][0] + runs[-1][1] == region:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((region, 1))
    return runs


class RegionMap:
    """Marked regions of a volume of ``count`` regions, in memory and (with ``path``) in a
    file of one byte per region. Not thread-safe: its owner serializes access."""

    def __init__(self, count: int, path: Path | None = None) -> None:
        self.count = count
        self.path = path
        self.bits = bytearray(count)
        self._fd: int | None = None

    @classmethod
    def load(cls, count: int, path: Path) -> RegionMap:
        """The map kept in ``path`` (empty when the file is missing or of another size:
        a map of another geometry says nothing about this one)."""
        made = cls(count, path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return made
        if len(data) == count:
            made.bits[:] = data
        return made

    # --- in memory ------------------------------------------------------------------------

    def mark(self, first: int, last: int) -> list[int]:
        """Mark regions ``first``..``last``; the ones that were not marked yet."""
        bits, new = self.bits, []
        for region in range(first, last + 1):
            if not bits[region]:
                bits[region] = 1
                new.append(region)
        return new

    def mark_all(self, regions: Iterable[int]) -> None:
        for region in regions:
            self.bits[region] = 1

    def update(self, other: RegionMap) -> None:
        """Mark every region ``other`` marks (the union, in place)."""
        self.bits[:] = (int.from_bytes(self.bits) | int.from_bytes(other.bits)).to_bytes(self.count)

    def clear(self) -> None:
        self.bits[:] = bytes(self.count)

    def __contains__(self, region: int) -> bool:
        return bool(self.bits[region])

    def marked(self) -> int:
        """How many regions are marked."""
        return self.count - self.bits.count(0)

    def regions(self) -> list[int]:
        """The marked regions, ascending."""
        found, bits, at = [], self.bits, self.bits.find(1)
        while at >= 0:
            found.append(at)
            at = bits.find(1, at + 1)
        return found

    def copy(self, path: Path | None = None) -> RegionMap:
        made = RegionMap(self.count, path)
        made.bits[:] = self.bits
        return made

    # --- on the wire ----------------------------------------------------------------------

    def encode(self) -> str:
        """The map as text for a handshake message (zlib, base64)."""
        return base64.b64encode(zlib.compress(bytes(self.bits), 1)).decode()

    @classmethod
    def decode(cls, count: int, text: str | None) -> RegionMap:
        """A map sent by ``encode``; ``ValueError`` when it is not one of ``count`` regions."""
        made = cls(count)
        if text:
            data = zlib.decompress(base64.b64decode(text))
            if len(data) != count:
                raise ValueError(f"a region map of {len(data)} regions, not {count}")
            made.bits[:] = data
        return made

    # --- on disk --------------------------------------------------------------------------

    def _file(self) -> int:
        if self._fd is None:
            if self.path is None:
                raise ValueError("this region map has no file")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if os.fstat(self._fd).st_size != self.count:
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, bytes(self.bits), 0)
        return self._fd

    def persist(self, regions: Iterable[int] | None = None, *, sync: bool = True) -> None:
        """Write ``regions`` (all when None) as they are in memory, then ``fdatasync``
        unless ``sync`` is false (clearing a region late is always safe)."""
        fd = self._file()
        if regions is None:
            os.pwrite(fd, bytes(self.bits), 0)
        else:
            for first, count in _runs(regions):
                os.pwrite(fd, self.bits[first : first + count], first)
        if sync:
            os.fdatasync(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ActivityLog:
    """Regions with writes in flight or recent (see the module docstring), kept on disk.

    ``touch`` before a write goes out (the caller persists what it returns before issuing
    it); ``rotate`` when everything up to the last rotation point is known to be on every
    live peer: regions not touched since are cleared."""

    def __init__(self, disk_map: RegionMap) -> None:
        self.map = disk_map
        self.hot: set[int] = set()
        #: the sequence number of the last rotation (writes after it may be in flight)
        self.rotation_seq = 0

    def touch(self, first: int, last: int) -> list[int]:
        """Note a write to regions ``first``..``last``; the regions that must be marked on
        disk (``persist``) before the write is issued."""
        self.hot.update(range(first, last + 1))
        return self.map.mark(first, last)

    def persist(self, regions: list[int]) -> None:
        if regions:
            self.map.persist(regions)

    def rotate(self, stable_seq: int, current_seq: int) -> bool:
        """Clear the regions not touched since the last rotation, when every write up to
        that rotation (``rotation_seq``) is stable (on every live peer: ``stable_seq``).
        Returns whether it rotated."""
        if stable_seq < self.rotation_seq:
            return False
        cold = [r for r in self.map.regions() if r not in self.hot]
        for region in cold:
            self.map.bits[region] = 0
        if cold:
            self.map.persist(cold, sync=False)
        self.hot = set()
        self.rotation_seq = current_seq
        return True
