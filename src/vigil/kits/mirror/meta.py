"""What a server keeps about its copy of a mirror, and where (its state directory).

``MirrorMeta`` (``meta.json``) is the disk's identity and history: its lineage (see
``lineage``), whether a resync into it is unfinished, its role, its state as a target,
what it keeps about each target as a source, a split brain found, an operator's forced
eligibility, and the last resyncs. It is written atomically and made durable (write,
fsync, rename, fsync of the directory) at every change of meaning.

At most one mirror process (source or target) runs per mirror and server: each holds
``active.lock`` (``flock``) for its whole life. The kit changes ``meta.json`` itself only
while it can take that lock; otherwise it asks the running process (``control``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_RESYNCS",
    "SOCKET_DIR",
    "Forced",
    "MirrorMeta",
    "MirrorPaths",
    "ResyncRecord",
    "SplitBrain",
    "TargetInfo",
    "TargetState",
    "write_json",
]

#: where control sockets live (a path under a state directory can exceed the 108 bytes a
#: socket path may have)
SOCKET_DIR = Path("/run/vigil-mirror")
MAX_RESYNCS = 50


class TargetState:
    """The states of a target (DataKeeper's names)."""

    MIRRORING = "Mirroring"
    RESYNCING = "Resynchronizing"
    PAUSED = "Paused"
    BROKEN = "Broken"
    PENDING = "Resync Pending"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TargetInfo(_Model):
    """What a source keeps about one target."""

    state: str = TargetState.PENDING
    reason: str = ""
    base: str | None = None


class SplitBrain(_Model):
    source: str
    ancestor: str
    source_regions: int
    target_regions: int
    at: float


class Forced(_Model):
    """An operator made this server eligible although its data may be behind."""

    by: str
    at: float
    reason: str = ""


class ResyncRecord(_Model):
    target: str
    kind: str  # partial or full
    regions: int
    bytes: int
    seconds: float
    at: float


class MirrorMeta(_Model):
    schema_version: int = 1
    tag: str
    size: int
    region_size: int
    lineage: list[str] = Field(default_factory=list)
    consistent: bool = True
    role: str = "none"  # source, target or none
    state: str = TargetState.PENDING
    reason: str = ""
    #: wall-clock time the target lost its source (None: connected, or never was)
    contact_lost_at: float | None = None
    #: the targets the last source said were Mirroring (a new source waits for them)
    peers_in_sync: list[str] = Field(default_factory=list)
    #: this disk was the source, and no other source has been seen since: while no other
    #: server has the mirror in service, it holds the newest data
    last_source: bool = False
    split_brain: SplitBrain | None = None
    forced: Forced | None = None
    targets: dict[str, TargetInfo] = Field(default_factory=dict)
    resyncs: list[ResyncRecord] = Field(default_factory=list)

    def record_resync(self, record: ResyncRecord) -> None:
        self.resyncs = [*self.resyncs, record][-MAX_RESYNCS:]


def write_json(path: Path, data: object) -> None:
    """Write ``data`` as JSON to ``path`` atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(data, out)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class MirrorPaths:
    """The files of one mirror on one server, under ``root`` (``<state_dir>/mirror``)."""

    root: Path

    @classmethod
    def of(cls, state_dir: Path) -> MirrorPaths:
        return cls(state_dir / "mirror")

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def activity(self) -> Path:
        return self.root / "activity.map"

    @property
    def remaining(self) -> Path:
        return self.root / "remaining.map"

    def dirty(self, server: str) -> Path:
        return self.root / f"dirty-{server}.map"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    def config(self, role: str) -> Path:
        return self.root / f"{role}.json"

    @property
    def log(self) -> Path:
        return self.root / "mirror.log"

    @property
    def lock(self) -> Path:
        return self.root / "active.lock"

    @property
    def fuse_dir(self) -> Path:
        """The FUSE mount point (source): it holds one file, ``device``."""
        return self.root / "dev"

    @property
    def device_file(self) -> Path:
        return self.fuse_dir / "device"

    @property
    def socket(self) -> Path:
        digest = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:20]
        return SOCKET_DIR / f"{digest}.sock"

    def load(self) -> MirrorMeta | None:
        """The metadata, or None when there is none (never created or extended here)."""
        try:
            return MirrorMeta.model_validate_json(self.meta.read_bytes())
        except FileNotFoundError:
            return None

    def save(self, meta: MirrorMeta) -> None:
        write_json(self.meta, meta.model_dump(mode="json"))

    def read_status(self) -> dict[str, object] | None:
        """What the running mirror process last wrote (None: nothing readable)."""
        try:
            loaded = json.loads(self.status.read_text())
        except (OSError, ValueError):
            return None
        return loaded if isinstance(loaded, dict) else None

    @contextlib.contextmanager
    def locked(self) -> Iterator[bool]:
        """Try the process lock without waiting: True inside when no mirror process runs
        here (and none can start until the block ends)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)


def status_age(status: dict[str, object]) -> float:
    """Seconds since the status was written."""
    written = status.get("time")
    return time.time() - float(written) if isinstance(written, int | float) else 1e9
