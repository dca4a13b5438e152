"""The mount table, devices and filesystem usage, as this thread's mount namespace sees them.

Everything here reads the kernel's view directly (``/proc``, ``/sys``, ``stat``); nothing
starts a process. The mount table is read from ``/proc/thread-self/mountinfo``: mount
namespaces can differ per thread (a test may run a kit on a thread that entered a private
namespace), and ``/proc/self`` would show the main thread's.

Device numbers are plain ``int`` values as ``os.stat`` gives them (``st_rdev`` of a device
node, ``st_dev`` of a file); ``os.major``/``os.minor`` split them.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = [
    "MountEntry",
    "Usage",
    "block_device_number",
    "containing_mount",
    "device_busy",
    "mounts_of_device",
    "namespaces_mounting",
    "parse_mountinfo",
    "read_mounts",
    "show_device",
    "system_devices",
    "usage",
    "visible_mount",
]

MOUNTINFO = "/proc/thread-self/mountinfo"


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/<pid>/mountinfo``."""

    mount_id: int
    parent_id: int
    device: int  # os.makedev(major, minor) of the mounted filesystem
    root: str  # the directory of the filesystem mounted here ("/" unless a bind mount)
    mount_point: str
    options: tuple[str, ...]  # per-mount options (rw/ro, nodev...)
    fstype: str
    source: str
    super_options: tuple[str, ...]  # per-filesystem options (rw/ro, errors=...)

    @property
    def read_only(self) -> bool:
        """Mounted read-only, by this mount or by the filesystem (ext4 after an error)."""
        return "ro" in self.options or "ro" in self.super_options


def _unescape(field: str) -> str:
    r"""Undo mountinfo's octal escapes (``\040`` for a space, ``\134`` for ``\``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The entries of a mountinfo text, in the kernel's order; malformed lines skipped."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        try:
            separator = fields.index("-", 6)
            major, minor = fields[2].split(":")
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    device=os.makedev(int(major), int(minor)),
                    root=_unescape(fields[3]),
                    mount_point=_unescape(fields[4]),
                    options=tuple(fields[5].split(",")),
                    fstype=fields[separator + 1],
                    source=_unescape(fields[separator + 2]),
                    super_options=tuple(fields[separator + 3].split(","))
                    if len(fields) > separator + 3
                    else (),
                )
            )
        except (ValueError, IndexError):
            continue
    return entries


def read_mounts(mountinfo: str = MOUNTINFO) -> list[MountEntry]:
    """The mount table of this thread's mount namespace (or of another ``mountinfo``)."""
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as handle:
        return parse_mountinfo(handle.read())


def visible_mount(mounts: Sequence[MountEntry], mount_point: str) -> MountEntry | None:
    """The mount one sees at exactly ``mount_point`` (the top one when several are
    stacked there), or None when nothing is mounted there."""
    here = [m for m in mounts if m.mount_point == mount_point]
    covered = {m.parent_id for m in here}
    top = [m for m in here if m.mount_id not in covered]
    return top[-1] if top else (here[-1] if here else None)


def containing_mount(mounts: Sequence[MountEntry], path: str) -> MountEntry | None:
    """The mount that holds ``path`` (an absolute, resolved path): the visible mount with
    the longest mount point that is ``path`` or one of its parents."""
    target = PurePosixPath(path)
    best: MountEntry | None = None
    for point in sorted({m.mount_point for m in mounts}, key=len):
        if target.is_relative_to(point):
            best = visible_mount(mounts, point) or best
    return best


def mounts_of_device(mounts: Iterable[MountEntry], device: int) -> list[MountEntry]:
    """Every mount of the filesystem with device number ``device``."""
    return [m for m in mounts if m.device == device]


def show_device(device: int) -> str:
    """``major:minor`` for messages."""
    return f"{os.major(device)}:{os.minor(device)}"


def block_device_number(path: str) -> int:
    """``st_rdev`` of the block device at ``path`` (symlinks followed).

    Raises ``OSError`` (``FileNotFoundError``: nothing there) when it cannot be examined,
    ``ValueError`` when it is not a block device."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        raise ValueError(f"{path} is not a block device")
    return st.st_rdev


def _sys_block(device: int) -> Path | None:
    link = Path(f"/sys/dev/block/{show_device(device)}")
    try:
        return link.resolve(strict=True)
    except OSError:
        return None


def _lower_devices(device: int, seen: set[int]) -> None:
    """Add ``device``, the whole disk of a partition, and what it is built on
    (``slaves``: device-mapper, md), recursively."""
    if device in seen:
        return
    seen.add(device)
    node = _sys_block(device)
    if node is None:
        return
    parents = []
    if (node / "partition").exists():
        parents.append(node.parent)
    slaves = node / "slaves"
    if slaves.is_dir():
        parents += [slave.resolve() for slave in slaves.iterdir()]
    for parent in parents:
        try:
            major, minor = (parent / "dev").read_text().strip().split(":")
        except (OSError, ValueError):
            continue
        _lower_devices(os.makedev(int(major), int(minor)), seen)


def system_devices(root: str = "/") -> set[int]:
    """The device of the filesystem holding ``/`` and, when sysfs tells, the disks it
    lives on (the whole disk of a root partition, the disks under a device-mapper or md
    root): none of them may become a volume (the seed's "system drive")."""
    devices: set[int] = set()
    _lower_devices(os.stat(root).st_dev, devices)
    return devices


def device_busy(path: str) -> bool:
    """True when another exclusive user holds the block device: a mounted filesystem (in
    any mount namespace of this host), device-mapper, md, swap. Opening with ``O_EXCL``
    is the kernel's own test (as ``mkfs`` does)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return True
        raise
    os.close(fd)
    return False


def namespaces_mounting(device: int) -> list[tuple[int, str]]:
    """(a pid, the mount point) for each mount namespace of this host in which the
    filesystem ``device`` is mounted, one pid per namespace: for error messages."""
    found: dict[int, tuple[int, str]] = {}
    seen: set[int] = set()
    for task in _tasks():
        try:
            namespace = os.stat(f"{task}/ns/mnt").st_ino
            if namespace in seen:
                continue
            seen.add(namespace)
            mounts = read_mounts(f"{task}/mountinfo")
        except OSError:
            continue
        mine = mounts_of_device(mounts, device)
        if mine:
            found[namespace] = (int(task.rsplit("/", 1)[1]), mine[0].mount_point)
    return sorted(found.values())


def _tasks() -> Iterator[str]:
    """``/proc/<pid>/task/<tid>`` of every thread (a thread may have a mount namespace of
    its own)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            threads = os.listdir(f"/proc/{entry.name}/task")
        except OSError:
            continue
        for tid in threads:
            yield f"/proc/{entry.name}/task/{tid}"


@dataclass(frozen=True)
class Usage:
    """How full a mounted filesystem is (as ``df`` computes it)."""

    blocks_percent: float
    inodes_percent: float
    size_bytes: int
    available_bytes: int

    def over(self, threshold: float) -> str:
        """A warning when space or inodes in use exceed ``threshold`` percent, else ""."""
        parts = []
        if self.blocks_percent > threshold:
            free_mib = self.available_bytes / 2**20
            parts.append(f"{self.blocks_percent:.0f}% of its space ({free_mib:.0f} MiB free)")
        if self.inodes_percent > threshold:
            parts.append(f"{self.inodes_percent:.0f}% of its inodes")
        if not parts:
            return ""
        return f"volume is nearly full: {' and '.join(parts)} in use (threshold {threshold:g}%)"


def usage(path: str) -> Usage:
    """Space and inode usage of the filesystem holding ``path`` (``statvfs``)."""
    st = os.statvfs(path)
    used = st.f_blocks - st.f_bfree
    usable = used + st.f_bavail
    inodes_used = st.f_files - st.f_ffree
    return Usage(
        blocks_percent=100.0 * used / usable if usable else 0.0,
        inodes_percent=100.0 * inodes_used / st.f_files if st.f_files else 0.0,
        size_bytes=st.f_blocks * st.f_frsize,
        available_bytes=st.f_bavail * st.f_frsize,
    )
