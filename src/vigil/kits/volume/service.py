"""Bringing a volume in and out of service on this server: fsck, mount, unmount, and the
forced unmount the fencing escalates to. Used by ``VolumeKit``; every function raises
``KitError`` with a message naming the volume, the server and what to do.

All of it happens in the mount namespace of the calling thread (the agent's: in the lab,
its server's). ``mount``, ``umount`` and the checkers run through
``vigil.kits.process.run_command``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

from vigil.errors import KitError, Severity
from vigil.kits.process import CommandResult, Logger, run_command
from vigil.kits.volume import mounts as mt
from vigil.kits.volume.holders import describe_holders, find_holders, stop_holders
from vigil.kits.volume.probe import (
    MMP_SEQ_CLEAN,
    MMP_SEQ_FSCK,
    ExtState,
    ext_state,
    probe_filesystem,
)
from vigil.kits.volume.properties import FsckPolicy, VolumeProperties

__all__ = ["Volume", "force_unmount", "mount", "unmount"]

_ENV = {"LC_ALL": "C"}
#: read-only probes (blkid, dumpe2fs) log their output only when this logger allows INFO
PROBE_LOG = logging.getLogger("vigil.kit.volume.probes")
PROBE_LOG.setLevel(logging.WARNING)
#: fsck exit codes that leave a usable filesystem (0 clean, 1 and 2 errors corrected)
_FSCK_OK = (0, 1, 2)
#: seconds ``force_unmount`` waits for the kernel to release the device
RELEASE_WAIT = 3.0


@dataclass(frozen=True)
class Volume:
    """One volume resource on this server, for the functions below."""

    tag: str
    server: str
    properties: VolumeProperties
    log: Logger

    @property
    def where(self) -> str:
        """``volume TAG on SERVER``, the start of every message."""
        return f"volume {self.tag} on {self.server}"

    def error(self, message: str, severity: Severity = Severity.HARD) -> KitError:
        """A ``KitError`` about this volume."""
        return KitError(f"{self.where}: {message}", severity)


def device_number(volume: Volume) -> int:
    """``st_rdev`` of the volume's device; ``KitError`` (HARD) when it is missing or not a
    block device (another server may see the disk)."""
    device = volume.properties.device
    try:
        return mt.block_device_number(device)
    except FileNotFoundError:
        raise volume.error(f"device {device} does not exist here") from None
    except (OSError, ValueError) as exc:
        raise volume.error(f"cannot use device {device}: {exc}") from None


# --- restore ------------------------------------------------------------------------------


def _refuse_misplaced(volume: Volume, number: int, mounts: list[mt.MountEntry]) -> bool:
    """True when the volume is mounted right already; ``KitError`` when the mount point
    holds something else or the device is mounted elsewhere."""
    p = volume.properties
    top = mt.visible_mount(mounts, p.mount_point)
    if top is not None and top.device == number and top.root == "/":
        if top.read_only and not p.read_only:
            raise volume.error(
                f"{p.mount_point} is mounted read-only (after filesystem errors?): the local "
                "recovery unmounts, checks and mounts it again",
                Severity.SOFT,
            )
        return True
    if top is not None:
        raise volume.error(
            f"{p.mount_point} is in use: {top.source} ({top.fstype}) is mounted there; "
            "unmount it first"
        )
    elsewhere = mt.mounts_of_device(mounts, number)
    if elsewhere:
        raise volume.error(
            f"{p.device} is already mounted at {elsewhere[0].mount_point}; unmount it there "
            "first (a volume is mounted only by vigil)"
        )
    try:
        busy = mt.device_busy(p.device)
    except OSError as exc:
        raise volume.error(f"cannot open {p.device}: {exc.strerror or exc}") from None
    if busy:
        where = "; ".join(
            f"mounted at {point} in the mount namespace of pid {pid}"
            for pid, point in mt.namespaces_mounting(number)
        )
        raise volume.error(
            f"{p.device} is in use on this host outside this server's mount namespace "
            f"({where or 'device-mapper, md, swap, or a lazy unmount with open files'}); "
            "mounting it here would make a second live copy"
        )
    return False


async def _check_identity(volume: Volume) -> ExtState | None:
    p = volume.properties
    fs = await probe_filesystem(p.device, PROBE_LOG)
    if fs is None:
        raise volume.error(f"no filesystem recognised on {p.device}")
    if fs.type != p.filesystem_type:
        raise volume.error(f"{p.device} holds a {fs.type} filesystem, not {p.filesystem_type}")
    if p.filesystem_uuid is not None and fs.uuid.lower() != p.filesystem_uuid.lower():
        raise volume.error(
            f"{p.device} holds the filesystem {fs.uuid}, not the volume's {p.filesystem_uuid}: "
            "did the device's name change? fix the device property for this server"
        )
    return await ext_state(p.device, PROBE_LOG) if p.is_ext else None


async def _fsck(volume: Volume, state: ExtState | None, deadline: float) -> None:
    p = volume.properties
    if p.fsck is FsckPolicy.NEVER:
        return
    if p.is_ext:
        reasons = state.fsck_reasons() if state is not None else []
        if p.fsck is FsckPolicy.AUTO and not reasons:
            return
        argv = ["e2fsck", "-p", *(["-f"] if p.fsck is FsckPolicy.ALWAYS else []), p.device]
        volume.log.info(
            "%s: checking %s (%s)", volume.where, p.device, "; ".join(reasons) or "fsck=always"
        )
    elif p.fsck is FsckPolicy.ALWAYS:
        argv = ["fsck", "-a", "-t", p.filesystem_type, p.device]
    else:
        return
    result = await _run(volume, argv, deadline, "fsck")
    if result.returncode in _FSCK_OK:
        return
    if result.returncode & 4:
        raise volume.error(
            f"{argv[0]} left errors uncorrected on {p.device} ({result.last_line}): check it "
            f"by hand ({argv[0]} {p.device}), then bring the volume in service again",
            Severity.FATAL,
        )
    raise volume.error(f"{argv[0]} on {p.device} {result.describe_exit()}: {result.last_line}")


#: mount attempts when multi-mount protection refuses (a second one: the fenced server's
#: mount may end during the first check), and the restore time a new attempt needs (the
#: check waits 2 x max(5, 2 x mmp_update_interval) + 1 s, 11 s at the least)
MMP_ATTEMPTS = 2
MMP_RETRY_ROOM = 15.0


#: how often a mount that multi-mount protection holds back reads the MMP block
MMP_WATCH_INTERVAL = 0.2


async def _mount_until_freed(
    volume: Volume, argv: list[str], deadline: float, mmp: bool
) -> CommandResult | None:
    """Mount; None when cut short because the volume was freed meanwhile (``mmp``: the
    filesystem has an MMP block; without one the kernel never waits, and nothing is read).

    A failover can begin while the old owner's unmount is still under way (its remove runs
    until its lease ends everywhere). The kernel, finding the MMP block in use, then waits
    2 x max(5, 2 x mmp_update_interval) + 1 s (11 s at the least) and refuses the mount
    because the block changed, even when the change is that mount ending cleanly. So while
    the kernel waits, the block is read here too; once it says clean, the mount is killed
    (a signal ends the kernel's wait: "MMP startup interrupted", nothing is mounted) and the
    caller mounts again, which the clean block lets through at once. A server that died
    holding the volume never marks it clean: then the kernel's check runs its course."""
    if not mmp:
        return await _run(volume, argv, deadline, "mount")
    mounting = asyncio.ensure_future(_run(volume, argv, deadline, "mount"))
    freed = asyncio.ensure_future(_mmp_freed(volume))
    try:
        await asyncio.wait((mounting, freed), return_when=asyncio.FIRST_COMPLETED)
        if mounting.done() or not freed.done() or not freed.result():
            return await mounting
        volume.log.info(
            "%s: the other mount of %s ended while the kernel's multi-mount check waited: "
            "cutting the wait short, mounting again",
            volume.where,
            volume.properties.device,
        )
    finally:
        freed.cancel()
        mounting.cancel()  # nothing when it is done; else its process group is killed
        await asyncio.gather(mounting, return_exceptions=True)
    return None


async def _mmp_freed(volume: Volume) -> bool:
    """True once the MMP block turns clean after being in use (returns at once, False, when
    it is not in use: the kernel does not wait then)."""
    in_use = False
    while True:
        try:
            sequence = (await ext_state(volume.properties.device, PROBE_LOG)).mmp_sequence
        except (KitError, OSError):
            return False
        if sequence == MMP_SEQ_CLEAN:
            return in_use
        if sequence is None or sequence == MMP_SEQ_FSCK:
            return False
        in_use = True
        await asyncio.sleep(MMP_WATCH_INTERVAL)


async def _run(volume: Volume, argv: list[str], deadline: float, label: str) -> CommandResult:
    remaining = max(deadline - time.monotonic(), 1.0)
    return await run_command(
        argv, log=volume.log, timeout=remaining, env=_ENV, name=f"{volume.tag} {label}"
    )


async def _mmp_refusal(volume: Volume) -> str:
    """Why multi-mount protection refused the mount ("" when it did not)."""
    p = volume.properties
    if p.filesystem_type != "ext4":
        return ""
    try:
        state = await ext_state(p.device, PROBE_LOG)
    except KitError:
        return ""
    sequence = state.mmp_sequence
    if not state.has_mmp or sequence is None or sequence == MMP_SEQ_CLEAN:
        return ""
    if sequence == MMP_SEQ_FSCK:
        return f"multi-mount protection: fsck is running on it elsewhere ({state.describe_mmp()})"
    return (
        "refused by multi-mount protection: the filesystem is in use on another server "
        f"({state.describe_mmp()})"
    )


async def mount(volume: Volume, deadline: float) -> None:
    """Mount the volume here (fsck first, per policy). Idempotent: mounted right already
    is fine; the mount point holding something else, or the device mounted elsewhere
    (here, or in another mount namespace of this host), is a ``KitError``."""
    p = volume.properties
    number = device_number(volume)
    if _refuse_misplaced(volume, number, mt.read_mounts()):
        return
    started = time.monotonic()
    state = await _check_identity(volume)
    await _fsck(volume, state, deadline)
    await asyncio.to_thread(os.makedirs, p.mount_point, 0o755, True)
    argv = ["mount", "-t", p.filesystem_type, *(["-o", p.mount_options] if p.options else [])]
    mmp = state is not None and state.has_mmp
    for attempt in range(1, MMP_ATTEMPTS + 1):
        result = await _mount_until_freed(volume, [*argv, p.device, p.mount_point], deadline, mmp)
        if result is None:  # the other server's mount ended: mount again at once
            if _refuse_misplaced(volume, number, mt.read_mounts()):
                break  # the kernel's check had just ended (and mounted) when cut short
            continue
        if result.ok:
            break
        refusal = await _mmp_refusal(volume)
        busy = next((ln.strip() for ln in result.output.splitlines() if "busy" in ln), "")
        why = refusal or busy or result.last_line or result.describe_exit()
        late = deadline - time.monotonic() < MMP_RETRY_ROOM
        if not (refusal or busy) or late or attempt == MMP_ATTEMPTS:
            raise volume.error(f"cannot mount {p.device} at {p.mount_point}: {why}")
        # Refused by multi-mount protection (EBUSY: "already mounted or mount point busy";
        # by then the other mount may be gone, and the MMP block clean). A fenced server's
        # mount ends when its last process has exited, which under load can outlast the
        # kernel's one check (2 x interval + 1 s): multi-mount protection decides again.
        volume.log.warning("%s: %s; trying again", volume.where, why)
    else:  # the last attempt was cut short too: the volume keeps being mounted elsewhere
        raise volume.error(
            f"cannot mount {p.device} at {p.mount_point}: multi-mount protection held it "
            f"back on each of {MMP_ATTEMPTS} attempts, the last while another server's mount "
            "of it ended; is another server (or a cluster outside vigil) mounting it? "
            f"`dumpe2fs -h {p.device}` names the node that last updated its MMP block"
        )
    top = mt.visible_mount(mt.read_mounts(), p.mount_point)
    if top is None or top.device != number:
        raise volume.error(f"mount said it mounted {p.device}, but {p.mount_point} shows no such")
    volume.log.info(
        "%s: mounted %s at %s in %.0f ms",
        volume.where,
        p.device,
        p.mount_point,
        (time.monotonic() - started) * 1000,
    )


# --- remove -------------------------------------------------------------------------------


def _ours(volume: Volume, mounts: list[mt.MountEntry]) -> mt.MountEntry | None:
    """The volume's mount at its mount point, if it is there (also when the device node
    has vanished: then recognised by its source)."""
    p = volume.properties
    top = mt.visible_mount(mounts, p.mount_point)
    if top is None:
        return None
    try:
        number = mt.block_device_number(p.device)
    except (OSError, ValueError):
        return top if top.source == p.device else None
    return top if top.device == number else None


async def _umount(volume: Volume, deadline: float, *flags: str) -> CommandResult:
    argv = ["umount", *flags, volume.properties.mount_point]
    return await _run(volume, argv, deadline, "umount")


def _after_unmount(volume: Volume, device: int) -> None:
    """``KitError`` when the filesystem is still alive on this host after the unmount."""
    p = volume.properties
    left = mt.mounts_of_device(mt.read_mounts(), device)
    if left:
        raise volume.error(
            f"unmounted {p.mount_point}, but the filesystem is still mounted at "
            f"{', '.join(m.mount_point for m in left)} here (bind mounts?): unmount those too"
        )
    try:
        busy = os.path.exists(p.device) and mt.device_busy(p.device)
    except OSError:
        busy = False
    if busy:
        where = "; ".join(
            f"at {point} in the mount namespace of pid {pid}"
            for pid, point in mt.namespaces_mounting(device)
        )
        raise volume.error(
            f"unmounted {p.mount_point} here, but the filesystem on {p.device} is still "
            f"alive on this host ({where or 'held open after a lazy unmount'}): a mount "
            "namespace created while it was mounted keeps a copy; end it"
        )


def _refuse_stray_mounts(volume: Volume, mounts: list[mt.MountEntry]) -> None:
    """Not mounted at the mount point, but mounted elsewhere here (by hand): out of
    service is not true, and another server must not mount it. ``KitError`` (HARD)."""
    p = volume.properties
    try:
        number = mt.block_device_number(p.device)
    except (OSError, ValueError):
        return
    stray = mt.mounts_of_device(mounts, number)
    if stray:
        raise volume.error(
            f"{p.device} is mounted at {', '.join(m.mount_point for m in stray)} here, not by "
            "vigil: unmount it there (a volume is mounted only at its mount point, by vigil)"
        )


async def unmount(volume: Volume, deadline: float) -> None:
    """Unmount the volume here. Idempotent. When processes hold files on it: with
    ``stop_holders``, stop them first; without, ``KitError`` naming each (pid, command)."""
    p = volume.properties
    mounts = mt.read_mounts()
    ours = _ours(volume, mounts)
    if ours is None:
        _refuse_stray_mounts(volume, mounts)
        return
    started = time.monotonic()
    result = await _umount(volume, deadline)
    if not result.ok:
        below = [m.mount_point for m in mounts if m.mount_point.startswith(p.mount_point + "/")]
        if below:
            raise volume.error(
                f"cannot unmount {p.mount_point}: filesystems are mounted below it "
                f"({', '.join(below)}); unmount them first (make their volume resources "
                f"parents of {volume.tag})"
            )
        holders = await asyncio.to_thread(find_holders, ours.device)
        if not holders:
            raise volume.error(f"cannot unmount {p.mount_point}: {result.last_line}")
        if not p.stop_holders:
            raise volume.error(
                f"cannot unmount {p.mount_point}: in use by {describe_holders(holders)}; "
                "stop them, or set stop_holders=true to let vigil stop them"
            )
        survivors = await stop_holders(holders, p.stop_holders_grace, volume.log)
        result = await _umount(volume, deadline)
        if not result.ok:
            left = await asyncio.to_thread(find_holders, ours.device)
            raise volume.error(
                f"cannot unmount {p.mount_point} even after stopping its holders "
                f"({describe_holders(left) or survivors or result.last_line})"
            )
    _after_unmount(volume, ours.device)
    volume.log.info(
        "%s: unmounted %s in %.0f ms",
        volume.where,
        p.mount_point,
        (time.monotonic() - started) * 1000,
    )


async def force_unmount(volume: Volume, deadline: float) -> list[str]:
    """The escalation for fencing: SIGKILL every holder, unmount, and unmount lazily
    (``umount -l``) when that still fails. Returns what it did; ``KitError`` when the
    filesystem is still alive here afterwards (holders stuck in the kernel)."""
    p = volume.properties
    ours = _ours(volume, mt.read_mounts())
    if ours is None:
        return []
    done = []
    holders = await asyncio.to_thread(find_holders, ours.device)
    if holders:
        await stop_holders(holders, 0.0, volume.log)
        done.append(f"killed {describe_holders(holders)}")
    if (await _umount(volume, deadline)).ok:
        done.append(f"unmounted {p.mount_point}")
    elif (await _umount(volume, deadline, "-l")).ok:
        done.append(f"unmounted {p.mount_point} lazily")
        left = await asyncio.to_thread(find_holders, ours.device)
        if left:
            await stop_holders(left, 0.0, volume.log)
            done.append(f"killed {describe_holders(left)}")
    else:
        raise volume.error(f"cannot unmount {p.mount_point}, not even lazily")
    await _released(p.device, RELEASE_WAIT)
    _after_unmount(volume, ours.device)
    return done


async def _released(device: str, seconds: float) -> None:
    """Wait up to ``seconds`` for the kernel to let go of ``device`` (a lazily unmounted
    filesystem goes when its last user does, a moment after it was killed)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if not mt.device_busy(device):
                return
        except OSError:
            return
        await asyncio.sleep(0.05)
