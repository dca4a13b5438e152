"""The volume kit's pre-create and pre-extend checks: each problem a message naming the
thing to fix. Read-only: they look at devices, the mount table and the filesystem's
superblock, and never mount anything.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from vigil.errors import KitError
from vigil.kits.process import Logger
from vigil.kits.volume import mounts as mt
from vigil.kits.volume.probe import devices_with_uuid, ext_state, probe_filesystem
from vigil.kits.volume.properties import FsckPolicy, VolumeProperties

__all__ = [
    "Findings",
    "device_findings",
    "mount_point_problems",
    "propose_device",
    "setup_problems",
]

_SHOWN_ENTRIES = 3


@dataclass
class Findings:
    """What the device checks found: problems, and the device's number when it is one."""

    problems: list[str] = field(default_factory=list)
    device_number: int | None = None
    #: a problem that another device holding the filesystem could cure (missing device,
    #: another filesystem on it, busy): ``can_extend`` then looks for one by UUID
    curable: bool = False


def _device_node(device: str, server: str, found: Findings) -> None:
    try:
        number = mt.block_device_number(device)
    except FileNotFoundError:
        found.problems.append(f"device {device} does not exist on {server}")
        found.curable = True
        return
    except ValueError:
        found.problems.append(
            f"{device} on {server} is not a block device (attach an image file to a loop "
            "device first: losetup --find --show FILE)"
        )
        return
    except OSError as exc:
        found.problems.append(f"cannot examine device {device} on {server}: {exc.strerror}")
        return
    system = mt.system_devices()
    root = os.stat("/").st_dev
    if number == root:
        found.problems.append(
            f"{device} on {server} is the system device: it holds the filesystem mounted at "
            "/ (the system drive), which vigil cannot protect; use a device of a shared disk"
        )
    elif number in system:
        found.problems.append(
            f"{device} on {server} is a system device: the filesystem mounted at / "
            f"({mt.show_device(root)}) lives on it, and vigil cannot protect that; use a "
            "device of a shared disk"
        )
    else:
        found.device_number = number


def _device_use(p: VolumeProperties, server: str, found: Findings) -> None:
    number = found.device_number
    if number is None:
        return
    mounts = mt.read_mounts()
    elsewhere = [m for m in mt.mounts_of_device(mounts, number) if m.mount_point != p.mount_point]
    if elsewhere:
        found.problems.append(
            f"{p.device} is mounted at {elsewhere[0].mount_point} on {server}: a protected "
            "volume is mounted only by vigil; unmount it there first"
        )
        return
    if mt.mounts_of_device(mounts, number):
        return  # mounted at the mount point already: creating a resource for it is fine
    try:
        busy = mt.device_busy(p.device)
    except OSError as exc:
        found.problems.append(f"cannot open {p.device} on {server}: {exc.strerror}")
        return
    if busy:
        where = "; ".join(
            f"mounted at {point} in the mount namespace of pid {pid}"
            for pid, point in mt.namespaces_mounting(number)
        )
        found.problems.append(
            f"{p.device} is in use on {server} outside this server's mount namespace "
            f"({where or 'by device-mapper, md, swap or a lazily unmounted filesystem'})"
        )
        found.curable = True


async def _filesystem(p: VolumeProperties, server: str, log: Logger, found: Findings) -> None:
    if found.device_number is None:
        return
    try:
        fs = await probe_filesystem(p.device, log)
    except KitError as exc:
        found.problems.append(f"{exc} (on {server})")
        return
    if fs is None:
        found.problems.append(
            f"no filesystem recognised on {p.device} on {server}: create one, e.g. "
            f"mkfs.ext4 -O mmp {p.device}"
        )
        found.curable = True
        return
    if fs.type != p.filesystem_type:
        found.problems.append(
            f"{p.device} on {server} holds a {fs.type} filesystem, not {p.filesystem_type} "
            "(filesystem_type)"
        )
    if not fs.uuid:
        found.problems.append(
            f"the filesystem on {p.device} has no UUID: give it one (e.g. tune2fs -U random)"
        )
    elif p.filesystem_uuid is None:
        found.problems.append(
            f"filesystem_uuid is not set: the {fs.type} filesystem on {p.device} has UUID "
            f"{fs.uuid}; set filesystem_uuid={fs.uuid} (vigil recognises the volume by it "
            "on every server)"
        )
    elif fs.uuid.lower() != p.filesystem_uuid.lower():
        found.problems.append(
            f"{p.device} on {server} holds the filesystem {fs.uuid}, not {p.filesystem_uuid} "
            "(filesystem_uuid): is it the right device on this server?"
        )
        found.curable = True
    if fs.type == "ext4" and p.multi_mount_protection:
        try:
            state = await ext_state(p.device, log)
        except KitError as exc:
            found.problems.append(f"{exc} (on {server})")
            return
        if not state.has_mmp:
            found.problems.append(
                f"the ext4 filesystem on {p.device} has no multi-mount protection: enable it "
                f"while it is mounted nowhere (tune2fs -O mmp {p.device}), or set "
                "multi_mount_protection=false"
            )


async def device_findings(p: VolumeProperties, server: str, log: Logger) -> Findings:
    """Problems with ``p.device`` on this server: exists, is a block device, is not the
    system device, is not mounted elsewhere or held, holds the volume's filesystem."""
    found = Findings()
    _device_node(p.device, server, found)
    _device_use(p, server, found)
    await _filesystem(p, server, log, found)
    return found


def mount_point_problems(p: VolumeProperties, server: str, device_number: int | None) -> list[str]:
    """The mount point is a real directory (or can be created), not mounted on (except
    by this very volume), and empty."""
    point = p.mount_point
    try:
        st = os.lstat(point)
    except FileNotFoundError:
        return _creatable(point, server)
    except OSError as exc:
        return [f"cannot examine mount point {point} on {server}: {exc.strerror}"]
    if stat.S_ISLNK(st.st_mode):
        return [
            f"mount point {point} on {server} is a symbolic link (to {os.readlink(point)}): "
            "give the real directory"
        ]
    if not stat.S_ISDIR(st.st_mode):
        return [f"mount point {point} on {server} exists and is not a directory"]
    real = os.path.realpath(point)
    if real != point:
        return [f"mount point {point} on {server} lies under a symbolic link: give {real}"]
    mounted = mt.visible_mount(mt.read_mounts(), point)
    if mounted is not None:
        if mounted.device == device_number and mounted.root == "/":
            return []
        return [
            f"mount point {point} is in use on {server}: {mounted.source} ({mounted.fstype}) "
            "is mounted there"
        ]
    try:
        entries = sorted(os.listdir(point))
    except OSError as exc:
        return [f"cannot read mount point {point} on {server}: {exc.strerror}"]
    if entries:
        shown = ", ".join(entries[:_SHOWN_ENTRIES]) + (
            ", ..." if len(entries) > _SHOWN_ENTRIES else ""
        )
        return [
            f"mount point {point} on {server} is not empty ({len(entries)} entries: {shown}): "
            "they would be hidden while the volume is mounted; move them away or choose an "
            "empty directory"
        ]
    return []


def _creatable(point: str, server: str) -> list[str]:
    parent = Path(point).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return [f"mount point {point} cannot be created on {server}: {parent} is not a directory"]
    return []


def setup_problems(p: VolumeProperties, server: str) -> list[str]:
    """The kernel knows the filesystem type; the check tools the fsck policy needs exist."""
    problems = []
    try:
        with open("/proc/filesystems", encoding="utf-8") as known:
            types = {line.split()[-1] for line in known if line.strip()}
    except OSError:
        types = {p.filesystem_type}
    if p.filesystem_type not in types:
        problems.append(
            f"the kernel on {server} does not support {p.filesystem_type} filesystems (not in "
            "/proc/filesystems; load its module)"
        )
    if p.fsck is not FsckPolicy.NEVER:
        tool = "e2fsck" if p.is_ext else f"fsck.{p.filesystem_type}"
        if (p.is_ext or p.fsck is FsckPolicy.ALWAYS) and shutil.which(tool) is None:
            problems.append(f"fsck={p.fsck} needs {tool}, which is not installed on {server}")
    return problems


async def propose_device(p: VolumeProperties, server: str, log: Logger) -> tuple[str | None, str]:
    """Another device of this server holding the volume's filesystem and free to mount:
    (its path, "") or (None, why there is none to propose)."""
    if p.filesystem_uuid is None:
        return None, ""
    candidates = [d for d in await devices_with_uuid(p.filesystem_uuid, log) if d != p.device]
    free = []
    for candidate in candidates:
        try:
            if not mt.device_busy(candidate):
                free.append(candidate)
        except OSError:
            continue
    if len(free) == 1:
        return free[0], ""
    if free:
        return None, (
            f"several devices on {server} hold filesystem {p.filesystem_uuid} "
            f"({', '.join(free)}): give device for {server}"
        )
    return None, f"no other device on {server} holds filesystem {p.filesystem_uuid}"
