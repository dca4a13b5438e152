"""The mirror kit's pre-create and pre-extend checks, each problem a message naming what
to fix. Read-only: they look at the disk, the mount table, the filesystem's superblock and
the replication address and port, and never mount or write anything."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from vigil.errors import KitError
from vigil.kits.base import KitContext
from vigil.kits.mirror.properties import MirrorProperties
from vigil.kits.process import Logger
from vigil.kits.volume import mounts as mt
from vigil.kits.volume.probe import probe_filesystem
from vigil.kits.volume.validation import mount_point_problems

__all__ = ["MIN_SIZE", "disk_problems", "disk_size", "link_problems", "source_problems"]

#: the smallest disk a mirror takes
MIN_SIZE = 16 * 2**20


def disk_size(disk: str) -> int:
    """The size of a block device in bytes (``OSError`` when it cannot be opened)."""
    fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def disk_problems(disk: str, server: str) -> list[str]:
    """The disk exists, is a block device that is not the system's, and nothing uses it
    (not mounted here, not held open exclusively: mounted elsewhere on this host, or a
    mirror process of another mirror)."""
    try:
        number = mt.block_device_number(disk)
    except FileNotFoundError:
        return [f"disk {disk} does not exist on {server}"]
    except ValueError:
        return [f"{disk} on {server} is not a block device (attach an image with losetup)"]
    except OSError as exc:
        return [f"cannot examine disk {disk} on {server}: {exc.strerror}"]
    if number == os.stat("/").st_dev or number in mt.system_devices():
        return [f"{disk} on {server} holds the system's filesystem (/): give a disk of its own"]
    mounted = mt.mounts_of_device(mt.read_mounts(), number)
    if mounted:
        return [
            f"disk {disk} is mounted at {mounted[0].mount_point} on {server}: the mirror mounts "
            "its filesystem itself (through the replicated device); unmount it"
        ]
    try:
        busy = mt.device_busy(disk)
    except OSError as exc:
        return [f"cannot open disk {disk} on {server}: {exc.strerror}"]
    if busy:
        return [
            f"disk {disk} is in use on {server} (mounted in another mount namespace, or held "
            "by another mirror or program): a mirror needs a disk of its own"
        ]
    try:
        size = disk_size(disk)
    except OSError as exc:
        return [f"cannot read the size of disk {disk} on {server}: {exc.strerror}"]
    if size < MIN_SIZE:
        return [f"disk {disk} on {server} holds {size} bytes, less than {MIN_SIZE} (16 MiB)"]
    return []


async def source_problems(
    ctx: KitContext[MirrorProperties], p: MirrorProperties, log: Logger
) -> list[str]:
    """On the primary: the disk, its filesystem (of the right type, with its UUID given),
    the mount point, the replication address and port, FUSE and loop devices."""
    problems = disk_problems(p.disk, ctx.server) + _kernel_problems(ctx.server)
    if not problems:
        try:
            fs = await probe_filesystem(p.disk, log)
        except KitError as exc:
            fs, problems = None, [f"{exc} (on {ctx.server})"]
        if fs is None and not problems:
            problems.append(
                f"no filesystem on disk {p.disk} on {ctx.server}: create one first, e.g. "
                f"mkfs.{p.filesystem_type} {p.disk}"
            )
        elif fs is not None and fs.type != p.filesystem_type:
            problems.append(f"{p.disk} holds a {fs.type} filesystem, not {p.filesystem_type}")
        elif fs is not None and p.filesystem_uuid is None:
            problems.append(
                f"filesystem_uuid is not set: the filesystem on {p.disk} has UUID {fs.uuid}; "
                f"set filesystem_uuid={fs.uuid}"
            )
        elif fs is not None and fs.uuid.lower() != (p.filesystem_uuid or "").lower():
            problems.append(
                f"{p.disk} on {ctx.server} holds filesystem {fs.uuid}, not {p.filesystem_uuid}"
            )
    problems += mount_point_problems(p.volume(p.disk), ctx.server, None)
    return problems + link_problems(ctx, p)


def _kernel_problems(server: str) -> list[str]:
    problems = []
    if not Path("/dev/fuse").exists():
        problems.append(f"/dev/fuse is missing on {server}: the kernel needs FUSE (modprobe fuse)")
    if not Path("/dev/loop-control").exists():
        problems.append(f"/dev/loop-control is missing on {server}: the kernel needs loop devices")
    return problems


def link_problems(ctx: KitContext[MirrorProperties], p: MirrorProperties) -> list[str]:
    """The address is this server's, and the port is free on it."""
    if ctx.addresses and p.address not in ctx.addresses:
        return [
            f"address {p.address} is not one of {ctx.server}'s addresses "
            f"({', '.join(ctx.addresses)}): give its address on the replication network"
        ]
    family = socket.AF_INET6 if ":" in p.address else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((p.address, p.port))
        except OSError as exc:
            return [f"cannot listen on {p.address} port {p.port} on {ctx.server}: {exc.strerror}"]
    return []


async def target_problems(
    ctx: KitContext[MirrorProperties], p: MirrorProperties, log: Logger, uuid: str | None
) -> list[str]:
    """On a target: the disk (at least as large as the source's), no filesystem of
    another volume on it (the initial synchronization overwrites it), the link."""
    problems = disk_problems(p.disk, ctx.server) + _kernel_problems(ctx.server)
    if not problems and p.size is not None:
        with contextlib.suppress(OSError):
            size = disk_size(p.disk)
            if size < p.size:
                problems.append(
                    f"disk {p.disk} on {ctx.server} holds {size} bytes, less than the source's "
                    f"{p.size}: give a disk at least as large"
                )
    if not problems:
        try:
            fs = await probe_filesystem(p.disk, log)
        except KitError:
            fs = None
        if fs is not None and fs.uuid and uuid and fs.uuid.lower() != uuid.lower():
            problems.append(
                f"disk {p.disk} on {ctx.server} holds a {fs.type} filesystem ({fs.uuid}) that "
                "is not this mirror's: the initial synchronization would overwrite it; wipe it "
                f"first (wipefs -a {p.disk}) if that is what you want"
            )
    return problems + link_problems(ctx, p)
