"""The volume kit's properties: which filesystem, where it is mounted, how it is guarded.

``device`` is **per server** (each server may see the shared disk under another name: in
the lab, each server has its own loop device onto the same image); everything else is
cluster-wide. ``mount_point`` and ``filesystem_uuid`` are **unique** in the cluster: the
agent refuses a second volume resource for the same mount point or the same filesystem.

Paths must be written in their canonical form (absolute, no trailing ``/``, no ``.`` or
``..``, no ``//``): the agent compares unique values as written, so ``/srv/mail/`` must not
slip past an existing ``/srv/mail``.
"""

from __future__ import annotations

import posixpath
import re
from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator

from vigil.kits.base import KitProperties

__all__ = ["FORBIDDEN_MOUNT_OPTIONS", "FsckPolicy", "VolumeProperties"]

_PER_SERVER: dict[str, Any] = {"per_server": True}
_UNIQUE: dict[str, Any] = {"unique": True}
_FSTYPE = re.compile(r"[a-z0-9][a-z0-9_.]{0,31}")
_UUID = re.compile(r"[0-9A-Fa-f][0-9A-Fa-f-]{2,62}[0-9A-Fa-f]")
_OPTION = re.compile(r"[^,\s]+")
_MAX_TIMEOUT = 86400.0

#: mount options that would make the mount something else than "this filesystem, here"
FORBIDDEN_MOUNT_OPTIONS = frozenset({"bind", "rbind", "move", "remount", "loop"})

#: directories that must never be mounted over (the system's own)
_SYSTEM_DIRECTORIES = frozenset(
    [
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
    ]
)
#: trees of kernel filesystems: nothing of a volume belongs below them
_KERNEL_TREES = ("/dev/", "/proc/", "/sys/")


class FsckPolicy(StrEnum):
    """When ``restore`` checks the filesystem before mounting it."""

    NEVER = "never"
    #: when the filesystem says it needs it (errors recorded, not cleanly unmounted
    #: without a journal, maximum mount count or check interval reached); ext2/3/4 only
    AUTO = "auto"
    #: before every mount (a forced full check for ext2/3/4)
    ALWAYS = "always"


def canonical_path(value: str, what: str) -> str:
    """``value`` if it is an absolute path in canonical form, else ``ValueError``."""
    if "\0" in value or "\n" in value:
        raise ValueError(f"{what} must not contain NUL or newline characters")
    if not value.startswith("/"):
        raise ValueError(f"{what} must be an absolute path, not {value!r}")
    canonical = posixpath.normpath(value)
    if canonical.startswith("//"):
        canonical = "/" + canonical.lstrip("/")
    if canonical != value:
        raise ValueError(f"write {what} {value!r} as {canonical!r}")
    return value


class VolumeProperties(KitProperties):
    """A filesystem on a shared block device, mounted at one mount point on one server
    at a time."""

    device: str = Field(
        description=(
            "The block device holding the filesystem on this server: a stable path "
            "(/dev/disk/by-uuid/..., /dev/mapper/..., /dev/loopN in the lab). Per server; "
            "proposed on extend from filesystem_uuid when the primary's path does not hold "
            "the filesystem on the target."
        ),
        json_schema_extra=_PER_SERVER,
    )
    mount_point: str = Field(
        description=(
            "Absolute directory the filesystem is mounted on (unique in the cluster); "
            "created by restore when missing. It must be empty and not mounted on."
        ),
        json_schema_extra=_UNIQUE,
    )
    filesystem_uuid: str | None = Field(
        None,
        description=(
            "UUID of the filesystem, as `blkid` shows it (unique in the cluster). Required "
            "at create (the error message gives the device's UUID): vigil recognises the "
            "volume by it on every server, refuses to mount a device holding another "
            "filesystem, and the agent refuses a second resource for the same filesystem."
        ),
        json_schema_extra=_UNIQUE,
    )
    filesystem_type: str = Field(
        "ext4",
        description="Filesystem type, as `mount -t` and `blkid` name it.",
    )
    mount_options: str = Field(
        "",
        description="Comma-separated mount options (as `mount -o`), e.g. noatime,nodev.",
    )
    fsck: FsckPolicy = Field(
        FsckPolicy.AUTO,
        description=(
            "When restore checks the filesystem before mounting: never; auto (when the "
            "filesystem says it needs it; ext2/3/4); always."
        ),
    )
    full_threshold: int = Field(
        90,
        ge=1,
        le=100,
        description=(
            "Percentage of space (or inodes) in use above which the volume stays in "
            "service with a warning."
        ),
    )
    stop_holders: bool = Field(
        False,
        description=(
            "On remove, stop the processes holding files on the volume (SIGTERM, then "
            "SIGKILL after stop_holders_grace seconds) before unmounting. Off: remove fails "
            "and names them."
        ),
    )
    stop_holders_grace: float = Field(
        5.0, ge=0, le=300, description="Seconds between SIGTERM and SIGKILL of holders."
    )
    multi_mount_protection: bool = Field(
        True,
        description=(
            "ext4: require multi-mount protection (mkfs.ext4 -O mmp / tune2fs -O mmp), the "
            "filesystem's own refusal of a mount while another server has it mounted."
        ),
    )
    restore_timeout: float = Field(
        300.0,
        gt=0,
        le=_MAX_TIMEOUT,
        description=(
            "Seconds restore may take: fsck, plus ext4 multi-mount protection's wait "
            "(about 2 x 21 s with the default interval after a server crashed)."
        ),
    )
    remove_timeout: float = Field(
        60.0, gt=0, le=_MAX_TIMEOUT, description="Seconds remove may take."
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return canonical_path(value, "device")

    @field_validator("mount_point")
    @classmethod
    def _mount_point(cls, value: str) -> str:
        canonical_path(value, "mount_point")
        if value in _SYSTEM_DIRECTORIES:
            raise ValueError(f"{value} is a system directory: choose a directory of its own")
        if value.startswith(_KERNEL_TREES):
            raise ValueError(f"{value} is inside a kernel filesystem (/dev, /proc, /sys)")
        return value

    @field_validator("filesystem_uuid")
    @classmethod
    def _uuid(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not _UUID.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a filesystem UUID as blkid shows it "
                "(e.g. 8e5c0e4c-0097-441e-b056-9f6beddd1722)"
            )
        return value

    @field_validator("filesystem_type")
    @classmethod
    def _fstype(cls, value: str) -> str:
        if not _FSTYPE.fullmatch(value):
            raise ValueError(f"{value!r} is not a filesystem type name like ext4 or xfs")
        return value

    @field_validator("mount_options")
    @classmethod
    def _options(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return ""
        options = value.split(",")
        for option in options:
            if not _OPTION.fullmatch(option):
                raise ValueError(
                    f"{value!r}: options are separated by single commas, without spaces"
                )
            if option in FORBIDDEN_MOUNT_OPTIONS:
                raise ValueError(f"mount option {option!r} cannot be used for a volume")
        return value

    @property
    def options(self) -> tuple[str, ...]:
        """The mount options, one per item."""
        return tuple(self.mount_options.split(",")) if self.mount_options else ()

    @property
    def read_only(self) -> bool:
        """True when the administrator asked for a read-only mount."""
        return "ro" in self.options

    @property
    def is_ext(self) -> bool:
        """ext2, ext3 or ext4: e2fsck, dumpe2fs and multi-mount protection apply."""
        return self.filesystem_type in ("ext2", "ext3", "ext4")
