"""The mirror kit's properties: the local disks, the filesystem, the replication link.

``disk`` and ``address`` are **per server** (each server has its own local disk, and its
own address on the replication network); everything else is cluster-wide.
``mount_point``, ``filesystem_uuid`` and ``port`` are **unique** in the cluster.
``secret`` (the replication link's shared key) and ``size`` are recorded by the kit at
create; ``secret`` is sealed in the store and never shown.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Any

from pydantic import Field, ValidationError, field_validator

from vigil.kits.base import KitProperties
from vigil.kits.volume.properties import FsckPolicy, VolumeProperties, canonical_path

__all__ = ["MirrorMode", "MirrorProperties"]

_PER_SERVER: dict[str, Any] = {"per_server": True}
_UNIQUE: dict[str, Any] = {"unique": True}
_SECRET: dict[str, Any] = {"secret": True}
_MAX_TIMEOUT = 86400.0


class MirrorMode(StrEnum):
    """How a write is acknowledged to the filesystem on the source."""

    #: once every Mirroring target has it (a flush: once it is durable everywhere)
    SYNC = "sync"
    #: once the source has it; targets follow through a bounded queue
    ASYNC = "async"


class MirrorProperties(KitProperties):
    """A filesystem on a volume replicated between the servers' own disks (the seed's
    DataKeeper mirror): mounted on the source only, every write sent to each target."""

    disk: str = Field(
        description=(
            "This server's local block device that holds its copy of the volume (in the "
            "lab: its own loop device). Per server. Its content on a target is overwritten "
            "by the initial synchronization."
        ),
        json_schema_extra=_PER_SERVER,
    )
    address: str = Field(
        description=(
            "This server's address on the replication network (the source listens there, "
            "targets connect from there). Per server; proposed on extend."
        ),
        json_schema_extra=_PER_SERVER,
    )
    port: int = Field(
        ge=1024,
        le=65535,
        description="TCP port of the replication link (unique in the cluster), e.g. 7790.",
        json_schema_extra=_UNIQUE,
    )
    mount_point: str = Field(
        description="Where the filesystem is mounted on the source (unique in the cluster).",
        json_schema_extra=_UNIQUE,
    )
    filesystem_uuid: str | None = Field(
        None,
        description=(
            "UUID of the filesystem on the source's disk, as blkid shows it (unique in the "
            "cluster); required at create (the message gives it)."
        ),
        json_schema_extra=_UNIQUE,
    )
    filesystem_type: str = Field("ext4", description="Filesystem type (mount -t).")
    mount_options: str = Field("", description="Comma-separated mount options.")
    fsck: FsckPolicy = Field(
        FsckPolicy.AUTO, description="When restore checks the filesystem: never, auto, always."
    )
    mode: MirrorMode = Field(
        MirrorMode.SYNC,
        description=(
            "sync: a write is acknowledged once every Mirroring target has it, a flush once "
            "it is durable everywhere; async: once the source has it, targets follow."
        ),
    )
    async_queue_mb: int = Field(
        64,
        ge=1,
        le=65536,
        description=(
            "async: the most data (MiB) queued for one target; past it the target is "
            "Paused (its writes are tracked) and resynchronized when it catches up."
        ),
    )
    bandwidth_mbps: float = Field(
        0.0,
        ge=0,
        description="Most MB/s sent to one target (0: no limit); applies to resyncs too.",
    )
    compression: bool = Field(
        False,
        description="Compress data on the link (zlib level 1) when that makes it smaller.",
    )
    target_timeout: float = Field(
        10.0,
        ge=3.0,
        le=600.0,
        description=(
            "Seconds the source holds writes for a Mirroring target it lost before going "
            "on without it; the target counts itself out of date sooner (3 s), so it is "
            "never chosen after the source went on without it. Longer than the agents' "
            "lease TTL plus the time to notice a dead server."
        ),
    )
    region_kb: int = Field(
        1024,
        description=(
            "Granularity (KiB, a power of two, 64-16384) of the dirty-region maps: a "
            "resync copies whole regions."
        ),
    )
    stop_holders: bool = Field(
        False,
        description="On remove, stop the processes holding files on the filesystem.",
    )
    stop_holders_grace: float = Field(5.0, ge=0, le=300)
    full_threshold: int = Field(90, ge=1, le=100)
    restore_timeout: float = Field(
        300.0,
        gt=0,
        le=_MAX_TIMEOUT,
        description=(
            "Seconds restore may take: starting the mirror, waiting up to target_timeout "
            "for targets that may still be in sync, fsck, mount."
        ),
    )
    remove_timeout: float = Field(60.0, gt=0, le=_MAX_TIMEOUT)
    secret: str | None = Field(
        None,
        description="The link's shared key (made at create; never shown).",
        json_schema_extra=_SECRET,
    )
    size: int | None = Field(
        None, description="Size of the source's disk at create, in bytes (recorded)."
    )

    @field_validator("disk")
    @classmethod
    def _disk(cls, value: str) -> str:
        return canonical_path(value, "disk")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None

    @field_validator("region_kb")
    @classmethod
    def _region(cls, value: int) -> int:
        if value < 64 or value > 16384 or value & (value - 1):
            raise ValueError("region_kb must be a power of two from 64 to 16384")
        return value

    @field_validator("mount_point", "filesystem_uuid", "filesystem_type", "mount_options")
    @classmethod
    def _as_volume(cls, value: Any, info: Any) -> Any:
        """The same rules as the volume kit's fields of the same name."""
        try:
            VolumeProperties.model_validate(
                {"device": "/dev/null", "mount_point": "/srv/x", info.field_name: value}
            )
        except ValidationError as exc:
            message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise ValueError(message) from None
        if info.field_name == "filesystem_uuid" and isinstance(value, str):
            return value.strip() or None
        return value.strip() if isinstance(value, str) else value

    @property
    def region_size(self) -> int:
        """The region size in bytes."""
        return self.region_kb * 1024

    def volume(self, device: str) -> VolumeProperties:
        """The volume kit's view of the filesystem on ``device`` (the loop device onto
        the mirror), for mounting, unmounting and checking it the volume kit's way."""
        return VolumeProperties(
            device=device,
            mount_point=self.mount_point,
            filesystem_uuid=self.filesystem_uuid,
            filesystem_type=self.filesystem_type,
            mount_options=self.mount_options,
            fsck=self.fsck,
            full_threshold=self.full_threshold,
            stop_holders=self.stop_holders,
            stop_holders_grace=self.stop_holders_grace,
            multi_mount_protection=False,
            restore_timeout=self.restore_timeout,
            remove_timeout=self.remove_timeout,
        )
