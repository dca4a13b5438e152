"""A shared disk for the lab: one sparse image, one loop device per server onto it.

As several hosts see one LUN, each lab server gets its own loop device attached to the
same image file (LAB-NOTES, "Namespaces as servers"). The image holds an ext4 filesystem,
with multi-mount protection (``mkfs.ext4 -O mmp``) unless told otherwise: the
filesystem's own guard against a second mount. Mount it only inside the owning server's
mount namespace (the volume kit does).

``Lab.add_shared_disk`` puts the image under the lab's root (``ROOT/disks/diskN.img``)
and records it in ``lab.json``; ``Lab.down`` detaches every loop device backed by a file
under the root (``vigil.lab.teardown``) and removes the image with the root, also after
a crash. The building blocks (``make_filesystem``, ``attach``, ``attached``, ``detach``)
also serve images outside any lab (``tests/shared_disk.py``).

Needs root, ``losetup``, ``mkfs.ext4`` (e2fsprogs) and ``blkid``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vigil.errors import LabError
from vigil.lab.files import LabState, SharedDiskState, save_state
from vigil.lab.naming import LabNames, server_number

#: seconds one ``losetup``/``mkfs``/``blkid`` may take
COMMAND_TIMEOUT = 120
#: ext4 multi-mount protection's update interval (s): short, so a mount after a crash
#: waits little (the lab's disks are local files, not a slow SAN)
MMP_UPDATE_INTERVAL = 1


@dataclass(frozen=True)
class SharedDiskInfo:
    """A shared disk: its image, its filesystem's UUID and each server's loop device."""

    image: Path
    uuid: str
    size_mb: int
    mmp: bool
    devices: dict[str, str] = field(default_factory=dict)

    def device(self, server: str) -> str:
        """The loop device ``server`` sees the disk as; ``LabError`` if it has none."""
        try:
            return self.devices[server]
        except KeyError:
            raise LabError(f"shared disk {self.image} has no device for {server}") from None


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; ``check``: ``LabError`` with its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def make_filesystem(
    image: Path, size_mb: int, *, mmp: bool = True, mmp_update_interval: int = MMP_UPDATE_INTERVAL
) -> str:
    """Create the sparse ``image`` of ``size_mb`` MiB with an ext4 filesystem on it
    (multi-mount protection with ``mmp``); returns the filesystem's UUID."""
    image.parent.mkdir(parents=True, exist_ok=True)
    with image.open("wb") as handle:
        handle.truncate(size_mb * 2**20)
    options = ["-O", "mmp", "-E", f"mmp_update_interval={mmp_update_interval}"] if mmp else []
    run("mkfs.ext4", "-q", "-F", *options, str(image))
    return run("blkid", "-p", "-s", "UUID", "-o", "value", str(image)).stdout.strip()


def attach(image: Path) -> str:
    """Attach a new loop device to ``image``; returns its path."""
    return run("losetup", "--find", "--show", str(image)).stdout.strip()


def attached(image: Path) -> list[str]:
    """Loop devices attached to ``image`` right now (``losetup -j``)."""
    shown = run("losetup", "-j", str(image), check=False).stdout
    return [line.split(":")[0] for line in shown.splitlines() if line.strip()]


def detach(image: Path, devices: Iterable[str] = ()) -> list[str]:
    """Detach ``devices`` and every other loop device of ``image``; returns the ones
    still attached afterwards."""
    for device in set(devices) | set(attached(image)):
        run("losetup", "-d", device, check=False)
    return attached(image)


def create(image: Path, servers: Iterable[str], size_mb: int, mmp: bool) -> SharedDiskInfo:
    """Make the image and its filesystem and attach one loop device per server; on
    failure, what was attached is detached again."""
    if image.exists():
        raise LabError(f"shared disk image {image} exists already")
    if size_mb < 8:
        raise LabError(f"a shared disk needs at least 8 MiB for ext4, not {size_mb}")
    uuid = make_filesystem(image, size_mb, mmp=mmp)
    devices: dict[str, str] = {}
    try:
        for server in servers:
            devices[server] = attach(image)
    except BaseException:
        detach(image, devices.values())
        raise
    return SharedDiskInfo(image=image, uuid=uuid, size_mb=size_mb, mmp=mmp, devices=devices)


def record_of(disk: SharedDiskInfo) -> SharedDiskState:
    """What ``lab.json`` keeps of a shared disk."""
    return SharedDiskState(
        image=str(disk.image),
        size_mb=disk.size_mb,
        uuid=disk.uuid,
        mmp=disk.mmp,
        devices=dict(disk.devices),
    )


def info_of(record: SharedDiskState) -> SharedDiskInfo:
    """The ``SharedDiskInfo`` of a disk recorded in ``lab.json``."""
    return SharedDiskInfo(
        image=Path(record.image),
        uuid=record.uuid,
        size_mb=record.size_mb,
        mmp=record.mmp,
        devices=dict(record.devices),
    )


def add(names: LabNames, state: LabState, size_mb: int, mmp: bool) -> SharedDiskInfo:
    """``Lab.add_shared_disk``: a new disk ``ROOT/disks/diskN.img`` with one loop device
    per server of ``state``, recorded in ``lab.json``."""
    image = names.root / "disks" / f"disk{len(state.shared_disks) + 1}.img"
    made = create(image, sorted(state.servers, key=server_number), size_mb, mmp)
    state.shared_disks.append(record_of(made))
    save_state(names.state_file, state)
    return made
