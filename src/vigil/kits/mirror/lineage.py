"""Generations of a mirror's data, and what a connecting target needs (pure rules).

Every disk of a mirror carries a **lineage**: the generation ids of its data, newest
first. A source starts a new generation each time it starts, and each time it goes on
without a target that shared its generation (paused, broken off, dropped after it was
lost); Mirroring targets follow it (they are told in the stream). Two disks whose newest
generations are equal hold the same data but for the regions named by the maps; a disk
whose newest generation appears further down the other's lineage is behind it; two
disks that each have generations the other lacks were both written after they diverged:
**split brain**, which is never resolved without an operator.

For each target the source keeps a **base**: a generation the target may hold such that
every region that differs since is in the source's map for that target (and in its
activity log). When a target connects, ``plan`` compares what it says (``Hello``) with
the source's records (``TargetRecord``) and answers with a ``Plan``: nothing to copy,
the regions to copy (a partial resync: the source's map and activity log, the target's
unfinished resync, its own activity log and, for a former source, the regions it wrote
that this source may lack), everything (a fresh disk, or no record since its
generation), or a refusal (split brain, paused, broken, unrelated data, wrong size).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import StrEnum

from vigil.kits.mirror.regions import RegionMap

__all__ = [
    "MAX_LINEAGE",
    "Hello",
    "Plan",
    "PlanKind",
    "TargetRecord",
    "common_ancestor",
    "new_generation",
    "plan",
    "started",
]

#: generations kept per disk (older ones are forgotten: a disk that far behind is fully
#: resynchronized)
MAX_LINEAGE = 32


def new_generation() -> str:
    """A fresh generation id."""
    return secrets.token_hex(8)


def started(lineage: list[str]) -> list[str]:
    """``lineage`` with a new generation on top."""
    return [new_generation(), *lineage][:MAX_LINEAGE]


def common_ancestor(one: list[str], other: list[str]) -> str | None:
    """The newest generation both lineages hold, or None."""
    theirs = set(other)
    return next((g for g in one if g in theirs), None)


class PlanKind(StrEnum):
    NONE = "none"  # in sync: nothing to copy
    PARTIAL = "partial"
    FULL = "full"
    PAUSED = "paused"  # the source keeps it paused: nothing flows
    BROKEN = "broken"  # broken off by an operator, or unrelated data
    SPLIT_BRAIN = "split-brain"
    REFUSED = "refused"  # cannot be a target (too small, another geometry)


@dataclass(frozen=True)
class Hello:
    """What a target says about its disk when it connects."""

    server: str
    lineage: list[str]
    #: False while a resync into the disk is unfinished (``remaining`` names what is left)
    consistent: bool
    size: int
    region_size: int
    remaining: RegionMap
    activity: RegionMap
    #: a former source's regions written that this source may lack (its own maps)
    own: RegionMap


@dataclass(frozen=True)
class TargetRecord:
    """What the source keeps about one target."""

    #: Mirroring, Paused, Broken, Resync Pending... (as last decided by the source)
    state: str
    #: see the module docstring; None: no base (a full resync is needed)
    base: str | None
    #: regions written while the target did not receive them
    dirty: RegionMap
    #: the reason an operator gave (pause, break), for the refusal's message
    reason: str = ""


@dataclass(frozen=True)
class Plan:
    kind: PlanKind
    reason: str
    regions: RegionMap | None = None
    #: split brain: the newest common generation, and how many regions each side wrote
    ancestor: str | None = None
    source_regions: int = 0
    target_regions: int = 0
    notes: list[str] = field(default_factory=list)


def _union(count: int, *maps: RegionMap) -> RegionMap:
    total = RegionMap(count)
    for one in maps:
        total.update(one)
    return total


def plan(
    source_lineage: list[str],
    size: int,
    region_size: int,
    record: TargetRecord,
    activity: RegionMap,
    hello: Hello,
) -> Plan:
    """What the source does with a connecting target (see the module docstring).
    ``activity`` is the source's activity log; ``size`` its disk's size."""
    count = record.dirty.count
    if hello.region_size != region_size:
        return Plan(
            PlanKind.REFUSED, f"its regions are {hello.region_size} bytes, not {region_size}"
        )
    if hello.size < size:
        return Plan(
            PlanKind.REFUSED,
            f"its disk holds {hello.size} bytes, less than the source's {size}: give it a "
            "disk at least as large",
        )
    if record.state == "Paused":
        return Plan(PlanKind.PAUSED, record.reason or "paused by an operator")
    if record.state == "Broken":
        return Plan(PlanKind.BROKEN, record.reason or "broken off by an operator")
    if not hello.lineage:
        return Plan(PlanKind.FULL, "initial synchronization (its disk holds no mirror data yet)")
    head = hello.lineage[0]
    if record.base is not None and head == record.base:
        regions = _union(count, record.dirty, activity, hello.remaining, hello.activity, hello.own)
        if regions.marked() == 0 and hello.consistent:
            return Plan(PlanKind.NONE, "in sync", regions)
        return Plan(
            PlanKind.PARTIAL,
            f"{regions.marked()} region(s) may differ since generation {head}",
            regions,
        )
    if head in source_lineage:
        return Plan(
            PlanKind.FULL,
            f"its data is of generation {head}, and this source keeps no record of what "
            "changed since then",
        )
    ancestor = common_ancestor(source_lineage, hello.lineage)
    if ancestor is None:
        return Plan(
            PlanKind.BROKEN,
            "its data shares no generation with the source's (another volume, or data from "
            "before a full resync): resynchronize it fully (vigil mirror resync)",
        )
    mine = _union(count, record.dirty, activity) if record.base == ancestor else None
    return Plan(
        PlanKind.SPLIT_BRAIN,
        f"split brain: both sides were written since generation {ancestor} (source: "
        f"{_regions(mine)}, this target: {hello.own.marked()} region(s)); an operator must "
        "choose the data to keep: vigil mirror resolve",
        regions=_union(count, mine, hello.own, hello.remaining) if mine is not None else None,
        ancestor=ancestor,
        source_regions=mine.marked() if mine is not None else -1,
        target_regions=hello.own.marked(),
    )


def _regions(found: RegionMap | None) -> str:
    return f"{found.marked()} region(s)" if found is not None else "unknown regions"
