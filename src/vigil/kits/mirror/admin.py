"""An operator's decisions about one server's copy, made on its files: forcing it
eligible (the seed's chapter 7: the source failed while this target was not in sync, and
an operator chooses to go on with what it has), and discarding what it wrote since a
split brain (the other side's data is kept).

They run inside the receiver when one runs on the server (``Receiver.command``), or
directly on the files when no mirror process runs (the kit holds ``MirrorPaths.locked``).
"""

from __future__ import annotations

import time

from vigil.kits.mirror.meta import Forced, MirrorMeta, MirrorPaths, TargetState
from vigil.kits.mirror.regions import RegionMap, region_count

__all__ = ["discard", "force", "own_regions"]


def own_regions(paths: MirrorPaths, meta: MirrorMeta) -> RegionMap:
    """The regions this disk may hold that no other copy has: its activity log, and what
    it recorded for its targets when it was the source."""
    count = region_count(meta.size, meta.region_size)
    own = RegionMap.load(count, paths.activity)
    for server in meta.targets:
        own.update(RegionMap.load(count, paths.dirty(server)))
    return own


def force(paths: MirrorPaths, meta: MirrorMeta, by: str, reason: str) -> str:
    """Make this server eligible whatever its state (recorded: who, when, why)."""
    meta.forced = Forced(by=by, at=time.time(), reason=reason)
    paths.save(meta)
    where = f"state {meta.state}" + (", incomplete resync" if not meta.consistent else "")
    return f"forced eligible by {by} ({where}): the data it lacks, if any, is lost"


def discard(
    paths: MirrorPaths, meta: MirrorMeta, by: str, ancestor: str, winner: str, full: bool = False
) -> str:
    """Give up what this disk holds since it diverged from ``winner``'s at generation
    ``ancestor`` (a split brain): back to that generation, with every region it wrote
    since marked for the next resync from ``winner``. With ``full`` (a copy that received
    the other side's writes since then, which no map of its own names), everything is
    copied again."""
    if full:
        meta.lineage = []
    elif ancestor in meta.lineage:
        meta.lineage = meta.lineage[meta.lineage.index(ancestor) :]
    else:
        meta.lineage = []  # nothing in common that this disk knows of: a full resync
    count = region_count(meta.size, meta.region_size)
    remaining = RegionMap.load(count, paths.remaining)
    own = own_regions(paths, meta)
    remaining.update(own)
    remaining.persist()
    for server in meta.targets:
        paths.dirty(server).unlink(missing_ok=True)
    meta.targets, meta.split_brain, meta.forced = {}, None, None
    meta.consistent, meta.role = False, "target"
    meta.state = TargetState.PENDING
    meta.reason = f"its changes since the split brain were discarded by {by}"
    paths.save(meta)
    return (
        f"discarded {own.marked()} region(s) written here since generation {ancestor}; they "
        f"are copied from {winner} at the next resync"
    )
