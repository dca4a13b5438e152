"""The volume kit: a filesystem on a shared block device, mounted on one server at a time.

What each action does on the server it runs on, in the mount namespace of the calling
thread (the agent's: in the lab, its server's own):

=============  =========================================================================
action         behaviour
=============  =========================================================================
validate       the device exists here, is a block device, is not the system device
               (the one holding ``/``, or a disk under it), is mounted nowhere else and
               held by nobody; it holds a filesystem of ``filesystem_type`` whose UUID
               is ``filesystem_uuid`` (the message gives it when unset); ext4 has
               multi-mount protection; the mount point is a real, empty directory (or
               can be created) that nothing is mounted on; the kernel knows the type
can_extend    the same checks on the target; when the device it was given (the
               primary's) is missing there, busy, or holds another filesystem, it
               proposes the one device of the target that holds ``filesystem_uuid``
extend        repeats the checks with the final properties: FATAL if they fail
restore       mounted right already: done. Else refuses a mount point holding another
               filesystem and a device mounted elsewhere (also in another mount
               namespace of this host); checks the filesystem's type and UUID, runs
               fsck per policy, mounts. ext4 multi-mount protection refuses the mount
               while another server has it mounted (after ~11-21 s): KitError HARD
               naming the node that holds it
remove         unmounts; idempotent. Processes holding files on it: with
               ``stop_holders``, SIGTERM then SIGKILL them first; without, KitError
               HARD naming each (pid, command). Afterwards the filesystem must be gone
               from this host (no bind mount, no other namespace's copy)
quick_check    mounted at the mount point from the device (major:minor), not bind, not
               read-only unless asked, readable: RUNNING (with a warning above
               ``full_threshold``); not mounted: STOPPED; anything else: FAILED
deep_check     the quick check, then writes and reads back ``.vigil-check`` at the
               volume's root and compares the filesystem's UUID
recover        remove, restore, quick check; False when any fails (FATAL is raised)
delete         nothing to clean: create and extend made nothing on the server
escalate       after a remove that overran (or failed where the agent must let go):
               SIGKILL every holder, unmount, unmount lazily if still busy; HARD when
               the filesystem is still alive on this host afterwards
fence_actions  the mount point, for the fence guard to unmount lazily
=============  =========================================================================
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import ClassVar

from vigil.errors import KitError, Severity
from vigil.kits.base import (
    Action,
    Check,
    CheckIntervals,
    CheckStatus,
    ExtendCheck,
    FenceActions,
    Kit,
    KitContext,
    Timeouts,
)
from vigil.kits.process import CLEANUP_ALLOWANCE
from vigil.kits.volume import mounts as mt
from vigil.kits.volume import service, validation
from vigil.kits.volume.probe import probe_filesystem
from vigil.kits.volume.properties import VolumeProperties
from vigil.kits.volume.service import PROBE_LOG, Volume

__all__ = ["CHECK_FILE", "VolumeKit"]

#: the deep check's status file, at the root of the volume
CHECK_FILE = ".vigil-check"


class VolumeKit(Kit[VolumeProperties]):
    """A filesystem on a shared block device (the seed's volume resource)."""

    name: ClassVar[str] = "volume"
    description: ClassVar[str] = (
        "Volume: a filesystem on a shared block device, mounted at its mount point on one "
        "server at a time (ext4 multi-mount protection as a second guard)"
    )
    Properties = VolumeProperties
    timeouts: ClassVar[Timeouts] = Timeouts(
        restore=300.0, remove=60.0, quick_check=10.0, deep_check=30.0, recover=420.0
    )
    check_intervals: ClassVar[CheckIntervals] = CheckIntervals(quick=2.0, deep=60.0)

    def timeout(self, action: Action, properties: VolumeProperties) -> float:
        """``restore_timeout`` and ``remove_timeout`` (plus the margin to kill a command
        and report) for restore, remove, and recover (both, and a check)."""
        restore = properties.restore_timeout + CLEANUP_ALLOWANCE
        remove = properties.remove_timeout + CLEANUP_ALLOWANCE
        if action is Action.RESTORE:
            return restore
        if action in (Action.REMOVE, Action.ESCALATE):
            return remove
        if action is Action.RECOVER:
            return restore + remove + self.timeouts.quick_check
        return super().timeout(action, properties)

    # --- configuration actions ----------------------------------------------------------

    async def validate_create(self, ctx: KitContext[VolumeProperties]) -> list[str]:
        """Every problem with the device, its filesystem and the mount point here."""
        p = ctx.properties
        found = await validation.device_findings(p, ctx.server, PROBE_LOG)
        return (
            found.problems
            + validation.mount_point_problems(p, ctx.server, found.device_number)
            + validation.setup_problems(p, ctx.server)
        )

    async def can_extend(self, ctx: KitContext[VolumeProperties]) -> ExtendCheck:
        """The checks of ``validate_create`` on the target; proposes the target's device
        (by ``filesystem_uuid``) when the one given does not do there."""
        p = ctx.properties
        found = await validation.device_findings(p, ctx.server, PROBE_LOG)
        proposed: dict[str, str] = {}
        if found.problems and found.curable:
            device, why = await validation.propose_device(p, ctx.server, PROBE_LOG)
            if device is not None:
                p = p.model_copy(update={"device": device})
                found = await validation.device_findings(p, ctx.server, PROBE_LOG)
                proposed["device"] = device
            elif why:
                found.problems.append(why)
        problems = (
            found.problems
            + validation.mount_point_problems(p, ctx.server, found.device_number)
            + validation.setup_problems(p, ctx.server)
        )
        return ExtendCheck(problems=problems, proposed=proposed)

    async def extend(self, ctx: KitContext[VolumeProperties]) -> None:
        """The device checks again, with the properties the target was given: FATAL if
        they fail (an administrator's override skipped the proposal)."""
        p = ctx.properties
        found = await validation.device_findings(p, ctx.server, PROBE_LOG)
        if found.problems:
            raise KitError(
                f"volume {ctx.tag} cannot be extended to {ctx.server}: {found.problems[0]}",
                Severity.FATAL,
            )

    def fence_actions(self, ctx: KitContext[VolumeProperties]) -> FenceActions:
        """The mount point: the fence guard unmounts it lazily after killing the
        resources' processes (the filesystem then goes with its last user)."""
        return FenceActions(mounts=(ctx.properties.mount_point,))

    # --- service actions ----------------------------------------------------------------

    async def restore(self, ctx: KitContext[VolumeProperties]) -> None:
        """Mount the volume here (fsck per policy first). Idempotent. ``KitError``: HARD
        (device missing, another filesystem there, mounted elsewhere, refused by
        multi-mount protection), FATAL (fsck left errors), SOFT (mounted read-only)."""
        p = ctx.properties
        await service.mount(_volume(ctx), time.monotonic() + p.restore_timeout)

    async def remove(self, ctx: KitContext[VolumeProperties]) -> None:
        """Unmount the volume here. Idempotent. ``KitError`` (HARD) names the processes
        holding it (unless ``stop_holders``), the mounts below it, or where the filesystem
        is still alive afterwards."""
        p = ctx.properties
        await service.unmount(_volume(ctx), time.monotonic() + p.remove_timeout)

    async def escalate(self, ctx: KitContext[VolumeProperties]) -> list[str]:
        """The forceful stop, after a ``remove`` that overran (or failed where the agent
        must let go): SIGKILL every process holding the volume, unmount, and unmount
        lazily if it is still busy.
        Returns what it did (empty: nothing was mounted). ``KitError`` (HARD) when the
        filesystem is still alive on this host afterwards. Bounded by ``remove_timeout``.

        A lazy unmount alone is not a release: the filesystem lives on (and, for ext4,
        multi-mount protection keeps other servers out) until its last user is gone."""
        p = ctx.properties
        return await service.force_unmount(_volume(ctx), time.monotonic() + p.remove_timeout)

    async def quick_check(self, ctx: KitContext[VolumeProperties]) -> Check:
        """Mounted here right and readable: RUNNING (warning when nearly full); not
        mounted: STOPPED; mounted wrongly or unreadable: FAILED. Read-only."""
        p = ctx.properties
        mounts = mt.read_mounts()
        try:
            number: int | None = mt.block_device_number(p.device)
        except (OSError, ValueError):
            number = None
        top = mt.visible_mount(mounts, p.mount_point)
        if number is None:
            if top is not None and top.source == p.device:
                return Check.failed(f"mounted at {p.mount_point}, but {p.device} is gone")
            return Check.stopped(f"not mounted ({p.device} does not exist here)")
        if top is None or top.device != number:
            elsewhere = mt.mounts_of_device(mounts, number)
            if elsewhere:
                return Check.failed(
                    f"{p.device} is mounted at {elsewhere[0].mount_point}, not {p.mount_point}"
                )
            if top is None:
                return Check.stopped(f"{p.mount_point} is not mounted")
            return Check.failed(
                f"{p.mount_point} holds another filesystem: {top.source} "
                f"({mt.show_device(top.device)}), not {p.device} ({mt.show_device(number)})"
            )
        if top.root != "/":
            return Check.failed(f"{p.mount_point} is a bind mount of {top.root} of the volume")
        if top.read_only and not p.read_only:
            return Check.failed(
                f"{p.mount_point} is mounted read-only (remounted after filesystem errors? "
                "see the kernel log)"
            )
        return await self._usage_check(p)

    async def _usage_check(self, p: VolumeProperties) -> Check:
        try:
            used = await asyncio.to_thread(_readable_usage, p.mount_point)
        except OSError as exc:
            return Check.failed(f"cannot read {p.mount_point}: {exc.strerror or exc}")
        detail = f"{p.device} mounted at {p.mount_point}, {used.blocks_percent:.0f}% used"
        return Check.running(detail, warning=used.over(p.full_threshold))

    async def deep_check(self, ctx: KitContext[VolumeProperties]) -> Check:
        """The quick check; then writes ``.vigil-check`` (server, epoch, time) at the
        volume's root and reads it back (not on a read-only volume), and compares the
        filesystem's UUID with ``filesystem_uuid``. Changes nothing but that file."""
        p = ctx.properties
        check = await self.quick_check(ctx)
        if check.status is not CheckStatus.RUNNING:
            return check
        if not p.read_only:
            stamp = f"{ctx.server} epoch {ctx.epoch} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
            path = os.path.join(p.mount_point, CHECK_FILE)
            try:
                back = await asyncio.to_thread(_write_and_read, path, stamp)
            except OSError as exc:
                return Check.failed(f"cannot write {path}: {exc.strerror or exc}")
            if back != stamp:
                return Check.failed(f"{path} reads back {back!r} instead of what was written")
        if p.filesystem_uuid is not None:
            try:
                fs = await probe_filesystem(p.device, PROBE_LOG)
            except KitError as exc:
                return Check.failed(str(exc))
            if fs is None or fs.uuid.lower() != p.filesystem_uuid.lower():
                found = fs.uuid if fs is not None else "no filesystem"
                return Check.failed(f"{p.device} shows {found}, not {p.filesystem_uuid}")
        return check

    async def recover(self, ctx: KitContext[VolumeProperties]) -> bool:
        """Unmount, mount again (fsck per policy: a volume remounted read-only after errors
        gets checked when ``fsck`` is auto), then the quick check. False when a step
        fails; a FATAL error is raised."""
        return await self.recover_by(ctx, self.remove, self.restore)


def _readable_usage(mount_point: str) -> mt.Usage:
    os.stat(mount_point)
    with os.scandir(mount_point) as entries:
        next(entries, None)
    return mt.usage(mount_point)


def _write_and_read(path: str, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(path, encoding="utf-8", errors="replace") as back:
        return back.read()


def _volume(ctx: KitContext[VolumeProperties]) -> Volume:
    return Volume(ctx.tag, ctx.server, ctx.properties, ctx.log)
