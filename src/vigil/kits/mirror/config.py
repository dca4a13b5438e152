"""What the kit tells a mirror process (``source.json`` / ``target.json`` in the mirror's
state directory, readable by root only: it holds the link's secret)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

__all__ = ["DaemonConfig", "Peer"]


class Peer(BaseModel):
    """Where another server of the mirror listens when it is the source."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    server: str
    address: str
    port: int


class DaemonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: str  # source or target
    tag: str
    server: str
    disk: str
    size: int
    region_size: int
    mode: str  # sync or async
    secret: str
    #: bytes per second per target (0: no limit)
    bandwidth: float = 0.0
    compression: bool = False
    #: async: the most bytes queued for one target (also bounds a resync's queue)
    queue_limit: int = 64 * 2**20
    target_timeout: float = 10.0
    #: where this server listens as the source
    address: str = ""
    port: int = 0
    #: every other server of the mirror (a target looks for its source among them)
    peers: list[Peer] = []
    #: the state directory of the mirror on this server (``MirrorPaths.root``)
    root: str

    def write(self, path: Path) -> bool:
        """Write the configuration (0600) unless the file holds it already; True when
        it changed."""
        text = self.model_dump_json()
        try:
            if path.read_text() == text:
                return False
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        tmp.replace(path)
        return True

    @classmethod
    def read(cls, path: Path) -> DaemonConfig:
        return cls.model_validate(json.loads(path.read_text()))
