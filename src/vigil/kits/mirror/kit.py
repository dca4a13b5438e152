"""The mirror kit: a filesystem on a volume replicated between the servers' own disks
(the seed's DataKeeper mirror), mounted on the source only. ``docs/kits/mirror.md``.

=============  =========================================================================
action         behaviour
=============  =========================================================================
validate       the disk (a block device of its own, not mounted, not in use), its
               filesystem (type, UUID), the mount point, the replication address and
               port, FUSE and loop devices
create         records this disk's data as the mirror's first generation; records the
               link's secret and the disk's size
can_extend     the target's disk (as large as the source's, no other volume's
               filesystem on it), its address (proposed), the port
extend         the same, FATAL if it fails; the disk is marked for a full initial sync
restore        refused (HARD) unless this server may become the source (the last
               source, or a Mirroring target, or forced by an operator); stops the
               receiver, starts the source process (in the resource's cgroup), puts a
               loop device on the replicated device, fsck per policy, mounts
remove         unmounts, lets the loop device go, stops the source process cleanly
escalate       kills the source process, unmounts by force, detaches what is left
quick_check    source process, loop device and mount all there: RUNNING (a warning
               names each target that is not Mirroring); none: STOPPED; else FAILED
deep_check     the quick check, then the volume kit's write-and-read-back
standby        keeps the receiver running (the target side), told of the current peers
eligible       the source: yes; a target: what its receiver says (Mirroring, and
               connected or within its grace); the last source, while no other server
               has the mirror; forced by an operator: yes
delete         stops whatever mirror process runs here, removes the mirror's state
fence_actions  the mount point and the FUSE mount, unmounted lazily by the fence guard
               (the loop device then detaches itself)
=============  =========================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vigil.errors import KitError, Severity
from vigil.kits.base import (
    Action,
    Check,
    CheckIntervals,
    CheckStatus,
    Eligibility,
    ExtendCheck,
    FenceActions,
    Kit,
    KitContext,
    Timeouts,
    stop_cgroup,
)
from vigil.kits.mirror import loop, service, validation
from vigil.kits.mirror.lineage import new_generation
from vigil.kits.mirror.meta import MirrorMeta, MirrorPaths, TargetState
from vigil.kits.mirror.properties import MirrorProperties
from vigil.kits.process import CLEANUP_ALLOWANCE, run_command
from vigil.kits.volume import mounts as mt
from vigil.kits.volume import service as volume_service
from vigil.kits.volume.kit import VolumeKit
from vigil.kits.volume.properties import VolumeProperties
from vigil.kits.volume.service import PROBE_LOG, Volume

__all__ = ["MirrorKit"]

_VOLUME = VolumeKit()


class MirrorKit(Kit[MirrorProperties]):
    """A replicated volume (see the module docstring)."""

    name = "mirror"
    description = (
        "Mirror: a filesystem on a volume replicated between the servers' own disks (sync "
        "or async, the seed's DataKeeper), mounted on the source only"
    )
    Properties = MirrorProperties
    timeouts = Timeouts(
        restore=300.0, remove=60.0, quick_check=10.0, deep_check=30.0, recover=420.0
    )
    check_intervals = CheckIntervals(quick=2.0, deep=60.0)

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, ctx: KitContext[MirrorProperties]) -> asyncio.Lock:
        """Restore, remove and standby of one resource never overlap here."""
        return self._locks.setdefault(str(ctx.state_dir), asyncio.Lock())

    def timeout(self, action: Action, properties: MirrorProperties) -> float:
        restore = properties.restore_timeout + CLEANUP_ALLOWANCE
        remove = properties.remove_timeout + CLEANUP_ALLOWANCE
        if action is Action.RESTORE:
            return restore
        if action is Action.REMOVE:
            return remove
        if action is Action.RECOVER:
            return restore + remove + self.timeouts.quick_check
        if action is Action.STANDBY:
            return service.START_WAIT + service.STOP_WAIT + CLEANUP_ALLOWANCE
        return super().timeout(action, properties)

    # --- configuration actions ----------------------------------------------------------

    async def validate_create(self, ctx: KitContext[MirrorProperties]) -> list[str]:
        return await validation.source_problems(ctx, ctx.properties, PROBE_LOG)

    async def create(self, ctx: KitContext[MirrorProperties]) -> list[Any]:
        """This disk's data is the mirror's first generation."""
        p = ctx.properties
        size = validation.disk_size(p.disk)
        meta = MirrorMeta(
            tag=ctx.tag,
            size=size,
            region_size=p.region_size,
            lineage=[new_generation()],
            consistent=True,
            role="none",
            last_source=True,
            state=TargetState.PENDING,
            reason="the mirror's first copy",
        )
        _fresh(MirrorPaths.of(ctx.state_dir), meta)
        return []

    async def recorded_properties(self, ctx: KitContext[MirrorProperties]) -> Mapping[str, Any]:
        return {
            "secret": secrets.token_hex(32),
            "size": validation.disk_size(ctx.properties.disk),
        }

    async def can_extend(self, ctx: KitContext[MirrorProperties]) -> ExtendCheck:
        p = ctx.properties
        proposed: dict[str, Any] = {}
        if ctx.addresses and p.address not in ctx.addresses:
            proposed["address"] = ctx.addresses[0]
            p = p.model_copy(update=proposed)
        problems = await validation.target_problems(ctx, p, PROBE_LOG, p.filesystem_uuid)
        return ExtendCheck(problems=problems, proposed=proposed)

    async def extend(self, ctx: KitContext[MirrorProperties]) -> None:
        """The target's checks again (FATAL if they fail); its disk waits for the
        initial synchronization."""
        p = ctx.properties
        problems = await validation.target_problems(ctx, p, PROBE_LOG, p.filesystem_uuid)
        if problems:
            raise KitError(
                f"mirror {ctx.tag} cannot be extended to {ctx.server}: {problems[0]}",
                Severity.FATAL,
            )
        meta = MirrorMeta(
            tag=ctx.tag,
            size=p.size or validation.disk_size(p.disk),
            region_size=p.region_size,
            consistent=False,
            role="target",
            reason="waiting for the initial synchronization",
        )
        _fresh(MirrorPaths.of(ctx.state_dir), meta)

    async def delete(self, ctx: KitContext[MirrorProperties]) -> None:
        """Stop any mirror process here and forget the mirror (the disk keeps its data)."""
        paths = MirrorPaths.of(ctx.state_dir)
        async with self._lock(ctx):
            await service.stop(paths, ctx.log)
            await asyncio.to_thread(shutil.rmtree, paths.root, True)
            if ctx.state_dir.name == ctx.tag:  # the resource's own directory: gone too
                await asyncio.to_thread(shutil.rmtree, ctx.state_dir, True)

    def fence_actions(self, ctx: KitContext[MirrorProperties]) -> FenceActions:
        paths = MirrorPaths.of(ctx.state_dir)
        return FenceActions(mounts=(ctx.properties.mount_point, str(paths.fuse_dir)))

    # --- service actions ----------------------------------------------------------------

    async def restore(self, ctx: KitContext[MirrorProperties]) -> None:
        """Become the source and mount the filesystem (see the module docstring)."""
        p, paths = ctx.properties, MirrorPaths.of(ctx.state_dir)
        deadline = time.monotonic() + p.restore_timeout
        async with self._lock(ctx):
            if service.running(paths, "source") is None:
                await self._become_source(ctx, paths)
            loops = loop.loops_of(paths.device_file)
            held = None
            if loops:
                device = loops[0]
            else:
                device, held = await asyncio.to_thread(loop.attach, paths.device_file)
            try:
                await volume_service.mount(_volume(ctx, device), deadline)
            finally:
                if held is not None:
                    await asyncio.to_thread(_close, held)

    async def _become_source(self, ctx: KitContext[MirrorProperties], paths: MirrorPaths) -> None:
        why = _may_not_be_source(ctx, paths)
        if why:
            raise KitError(
                f"{ctx.server} may not become the source of mirror {ctx.tag}: {why}; an "
                f"operator may force it (vigil mirror force {ctx.tag} --on {ctx.server}): its "
                "data then becomes the mirror's",
                Severity.HARD,
            )
        if service.running(paths, "target") is not None:
            await service.stop(paths, ctx.log)
        await _unmount_fuse(paths)
        config = service.daemon_config(ctx, ctx.properties, "source")
        await service.start(ctx, config, ctx.log, ctx.cgroup)

    async def remove(self, ctx: KitContext[MirrorProperties]) -> None:
        """Unmount, let the loop device go, stop the source process. Idempotent."""
        p, paths = ctx.properties, MirrorPaths.of(ctx.state_dir)
        deadline = time.monotonic() + p.remove_timeout
        async with self._lock(ctx):
            for device in _devices(ctx, paths):
                await volume_service.unmount(_volume(ctx, device), deadline)
                await asyncio.to_thread(loop.detach, device)
            if service.running(paths, "source") is not None:
                await service.stop(paths, ctx.log)
            await _unmount_fuse(paths)

    async def escalate(self, ctx: KitContext[MirrorProperties]) -> list[str]:
        """Kill the source process, unmount by force, detach what is left."""
        paths = MirrorPaths.of(ctx.state_dir)
        deadline = time.monotonic() + ctx.properties.remove_timeout
        done = await stop_cgroup(ctx.cgroup)
        for device in _devices(ctx, paths):
            done += await volume_service.force_unmount(_volume(ctx, device), deadline)
            if await asyncio.to_thread(loop.detach, device):
                done.append(f"detached {device}")
        if await _unmount_fuse(paths):
            done.append(f"unmounted {paths.fuse_dir}")
        return done

    async def quick_check(self, ctx: KitContext[MirrorProperties]) -> Check:
        p, paths = ctx.properties, MirrorPaths.of(ctx.state_dir)
        status = service.running(paths, "source")
        devices = _devices(ctx, paths)
        if status is None and not devices:
            return Check.stopped("not the source here")
        if status is None:
            return Check.failed(
                f"{p.mount_point} is mounted but the mirror's source process is gone: "
                f"{service.log_tail(paths) or 'see ' + str(paths.log)}"
            )
        if not service.fresh(status):
            return Check.failed(f"the mirror's source process (pid {status.get('pid')}) is stuck")
        if not devices:
            return Check.failed("the mirror's source runs but nothing is mounted from it")
        check = await _VOLUME.quick_check(_volume_ctx(ctx, devices[0]))
        if check.status is not CheckStatus.RUNNING:
            return check
        detail, warning = _targets_summary(status)
        return Check.running(f"{check.detail}; {detail}", warning=warning or check.warning)

    async def deep_check(self, ctx: KitContext[MirrorProperties]) -> Check:
        check = await self.quick_check(ctx)
        if check.status is not CheckStatus.RUNNING:
            return check
        devices = _devices(ctx, MirrorPaths.of(ctx.state_dir))
        deep = await _VOLUME.deep_check(_volume_ctx(ctx, devices[0]))
        return check if deep.status is CheckStatus.RUNNING else deep

    async def recover(self, ctx: KitContext[MirrorProperties]) -> bool:
        return await self.recover_by(ctx, self.remove, self.restore)

    # --- standby and eligibility --------------------------------------------------------

    async def standby(self, ctx: KitContext[MirrorProperties]) -> None:
        """Keep the receiver running here, told of the mirror's current servers."""
        paths = MirrorPaths.of(ctx.state_dir)
        async with self._lock(ctx):
            if paths.load() is None:
                raise KitError(f"mirror {ctx.tag} is not set up on {ctx.server}: extend it here")
            if service.running(paths, "source") is not None or _devices(ctx, paths):
                return  # the source runs here (being restored or removed)
            config = service.daemon_config(ctx, ctx.properties, "target")
            running = service.running(paths, "target")
            if running is not None:
                if config.write(paths.config("target")):
                    await service.stop(paths, ctx.log)  # restarted with it next time
                return
            await service.start(ctx, config, ctx.log)

    async def eligible(self, ctx: KitContext[MirrorProperties]) -> Eligibility:
        paths = MirrorPaths.of(ctx.state_dir)
        meta = paths.load()
        if meta is None:
            return Eligibility.no(f"the mirror is not set up on {ctx.server}")
        if service.running(paths, "source") is not None:
            return Eligibility.yes("the mirror's source")
        if meta.forced is not None:
            return Eligibility.yes(f"forced by {meta.forced.by}: its data becomes the mirror's")
        others = ctx.active not in (None, ctx.server)
        if meta.last_source and meta.consistent and not others:
            return Eligibility.yes("the last source of the mirror (no server has it now)")
        status = service.running(paths, "target")
        if status is None or not service.fresh(status):
            return Eligibility.no(f"mirror target {meta.state}: its receiver is not running")
        return Eligibility(bool(status.get("eligible")), str(status.get("eligibility", "")))


def _may_not_be_source(ctx: KitContext[MirrorProperties], paths: MirrorPaths) -> str:
    """Why this server may not become the source now ("" when it may)."""
    meta = paths.load()
    if meta is None:
        return f"the mirror is not set up on {ctx.server} (extend it here)"
    if meta.forced is not None:
        ctx.log.warning("%s: becoming the source by %s's force", ctx.tag, meta.forced.by)
        return ""
    if not meta.lineage:
        return "its disk never received the mirror's data"
    if not meta.consistent:
        return "its disk is in the middle of a resync"
    if meta.last_source or meta.role in ("source", "none"):
        return ""
    status = service.running(paths, "target")
    if status is None or not service.fresh(status):
        return f"it is a target ({meta.state}: {meta.reason}) and its receiver is not running"
    if not status.get("eligible"):
        return str(status.get("eligibility"))
    return ""


def _fresh(paths: MirrorPaths, meta: MirrorMeta) -> None:
    """Start this server's record of the mirror afresh (create, extend)."""
    if paths.root.exists():
        shutil.rmtree(paths.root)
    paths.root.mkdir(parents=True)
    paths.save(meta)


def _devices(ctx: KitContext[MirrorProperties], paths: MirrorPaths) -> list[str]:
    """The loop devices onto this mirror's replicated device, and any other device
    mounted at the mount point from it."""
    found = loop.loops_of(paths.device_file)
    top = mt.visible_mount(mt.read_mounts(), ctx.properties.mount_point)
    if top is not None and top.source.startswith("/dev/loop") and top.source not in found:
        backing = _backing(top.source)
        if backing is not None and backing.endswith(str(paths.device_file)):
            found.append(top.source)
    return found


def _backing(device: str) -> str | None:
    path = Path("/sys/block") / device.removeprefix("/dev/") / "loop" / "backing_file"
    with contextlib.suppress(OSError):
        return path.read_text().strip()
    return None


def _volume(ctx: KitContext[MirrorProperties], device: str) -> Volume:
    return Volume(ctx.tag, ctx.server, ctx.properties.volume(device), ctx.log)


def _volume_ctx(ctx: KitContext[MirrorProperties], device: str) -> KitContext[VolumeProperties]:
    """The context the volume kit's checks take, for the filesystem on ``device``."""
    return KitContext(
        tag=ctx.tag,
        server=ctx.server,
        properties=ctx.properties.volume(device),
        log=ctx.log,
        state_dir=ctx.state_dir,
        epoch=ctx.epoch,
    )


def _close(fd: int) -> None:
    os.close(fd)


async def _unmount_fuse(paths: MirrorPaths) -> bool:
    """Unmount a FUSE mount left at the mirror's device directory (lazily); whether there
    was one."""
    if mt.visible_mount(mt.read_mounts(), str(paths.fuse_dir)) is None:
        return False
    await run_command(["umount", "-l", str(paths.fuse_dir)], log=PROBE_LOG, timeout=10)
    return True


def _targets_summary(status: Mapping[str, Any]) -> tuple[str, str]:
    """(detail, warning) about the source's targets."""
    targets = status.get("targets") or {}
    if not isinstance(targets, dict) or not targets:
        return "no target", "the mirror has no target: nothing replicates its writes"
    parts, behind = [], []
    for server, view in sorted(targets.items()):
        state = view.get("state", "?")
        progress = view.get("progress")
        if progress:
            state += f" {progress.get('percent')}% (ETA {progress.get('eta_s')}s)"
        parts.append(f"{server} {state}")
        if view.get("state") != TargetState.MIRRORING:
            behind.append(f"{server} is {state}: {view.get('reason', '')}")
    return "targets: " + ", ".join(parts), "; ".join(behind)
