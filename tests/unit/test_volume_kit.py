"""The volume kit's actions on real loop devices, each run in a private mount namespace
(``MountNamespaceLoop``): the host's mount namespace never sees a mount of these tests.

Two "servers" are two namespaces, each with its own loop device onto one image, as in the
lab. Needs root, losetup and e2fsprogs.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.shared_disk import MountNamespaceLoop, SharedDisk, host_mounts, sh

from vigil.errors import KitError, Severity
from vigil.kits.base import Check, CheckStatus, ExtendCheck, KitContext
from vigil.kits.volume import CHECK_FILE, VolumeKit, service

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root"),
]

KIT = VolumeKit()
T = TypeVar("T")


class Server:
    """A pretend server: a private mount namespace and a loop device of the shared disk."""

    def __init__(self, name: str, device: str, workdir: Path) -> None:
        self.name = name
        self.device = device
        self.workdir = workdir
        self.ns = MountNamespaceLoop()

    def context(self, **properties: Any) -> KitContext:
        return KitContext(
            tag="vol",
            server=self.name,
            properties=KIT.parse_properties(properties),
            log=logging.getLogger("vigil.kit.volume.vol"),
            epoch=7,
            state_dir=self.workdir / "state" / self.name,
        )

    def act(self, action: Callable[[], Awaitable[T]]) -> T:
        return self.ns.run_sync(action)

    def holder(self, path: str) -> subprocess.Popen[bytes]:
        """``sleep 600`` holding ``path`` open, started inside this server."""
        return self.ns.call(
            lambda: subprocess.Popen(["sh", "-c", f"exec sleep 600 <'{path}'"], cwd="/")
        )

    def close(self) -> None:
        for line in reversed(self.ns.mountinfo().splitlines()):
            point = line.split()[4]
            if point.startswith(str(self.workdir)):
                self.ns.sh("umount", "-l", point, check=False)
        self.ns.close()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SharedDisk]:
    with SharedDisk(tmp_path / "disk.img").create(servers=2) as shared:
        yield shared


@pytest.fixture
def servers(disk: SharedDisk, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    made: list[Server] = []
    try:
        made.append(Server("node1", disk.devices[0], tmp_path))
        made.append(Server("node2", disk.devices[1], tmp_path))
        yield made[0], made[1]
    finally:
        for server in made:
            server.close()


@pytest.fixture
def mount_point(tmp_path: Path) -> str:
    return str(tmp_path / "mnt" / "data")


def props(server: Server, disk: SharedDisk, mount_point: str, **more: Any) -> dict[str, Any]:
    values = {"device": server.device, "mount_point": mount_point, "filesystem_uuid": disk.uuid}
    values.update(more)
    return values


def validate(server: Server, **properties: Any) -> list[str]:
    return server.act(lambda: KIT.validate_create(server.context(**properties)))


def check(server: Server, ctx: KitContext) -> Check:
    return server.act(lambda: KIT.quick_check(ctx))


def one(problems: list[str], text: str) -> str:
    found = [p for p in problems if text in p]
    assert found, f"no problem mentions {text!r}: {problems}"
    return found[0]


# --- validation ---------------------------------------------------------------------------


def test_a_good_volume_passes(servers: tuple[Server, Server], disk: SharedDisk, mount_point: str):
    node1, _ = servers
    assert validate(node1, **props(node1, disk, mount_point)) == []


def root_device_node() -> str | None:
    root = os.stat("/").st_dev
    for entry in os.scandir("/dev"):
        try:
            st = os.stat(entry.path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode) and st.st_rdev == root:
            return entry.path
    return None


def test_the_system_device_is_refused(
    servers: tuple[Server, Server], disk: SharedDisk, mount_point: str
) -> None:
    node1, _ = servers
    device = root_device_node()
    if device is None:
        pytest.skip("no device node for the root filesystem")
    problems = validate(node1, **props(node1, disk, mount_point, device=device))
    assert one(problems, "system device").startswith(f"{device} on node1 is the system device")


def test_device_problems(
    servers: tuple[Server, Server], disk: SharedDisk, mount_point: str, tmp_path: Path
) -> None:
    node1, _ = servers
    missing = validate(node1, **props(node1, disk, mount_point, device="/dev/vigil-none"))
    assert "device /dev/vigil-none does not exist on node1" in missing
    regular = validate(node1, **props(node1, disk, mount_point, device=str(disk.image)))
    one(regular, "is not a block device")
    unset = validate(node1, **props(node1, disk, mount_point, filesystem_uuid=None))
    assert one(unset, "filesystem_uuid is not set").endswith(
        f"has UUID {disk.uuid}; set filesystem_uuid={disk.uuid} (vigil recognises the volume "
        "by it on every server)"
    )
    other = "0b7a7c8e-1111-4222-8333-944445555666"
    wrong = validate(node1, **props(node1, disk, mount_point, filesystem_uuid=other))
    one(wrong, f"holds the filesystem {disk.uuid}, not {other}")
    xfs = validate(node1, **props(node1, disk, mount_point, filesystem_type="xfs"))
    one(xfs, "holds a ext4 filesystem, not xfs")


def test_filesystem_problems(
    servers: tuple[Server, Server], mount_point: str, tmp_path: Path
) -> None:
    node1, _ = servers
    with SharedDisk(tmp_path / "plain.img", size_mib=16) as plain:
        plain.create(servers=1)
        sh("wipefs", "-a", plain.devices[0])
        empty = validate(node1, device=plain.devices[0], mount_point=mount_point)
        one(empty, "no filesystem recognised on")
        sh("mkfs.ext4", "-q", "-F", plain.devices[0])
        uuid = sh("blkid", "-p", "-s", "UUID", "-o", "value", plain.devices[0]).stdout.strip()
        values = {"device": plain.devices[0], "mount_point": mount_point, "filesystem_uuid": uuid}
        one(validate(node1, **values), "has no multi-mount protection")
        assert validate(node1, **values, multi_mount_protection=False) == []


def test_mount_point_problems(
    servers: tuple[Server, Server], disk: SharedDisk, mount_point: str, tmp_path: Path
) -> None:
    node1, _ = servers
    values = props(node1, disk, mount_point)
    os.makedirs(mount_point)
    node1.ns.sh("mount", "-t", "tmpfs", "tmpfs", mount_point)
    one(validate(node1, **values), f"mount point {mount_point} is in use on node1: tmpfs")
    node1.ns.sh("umount", mount_point)
    Path(mount_point, "stray").write_text("x")
    one(validate(node1, **values), f"mount point {mount_point} on node1 is not empty (1 entries")
    os.unlink(Path(mount_point, "stray"))
    link = tmp_path / "link"
    link.symlink_to(mount_point)
    one(validate(node1, **{**values, "mount_point": str(link)}), "is a symbolic link")


def test_a_device_mounted_elsewhere_is_refused(
    servers: tuple[Server, Server], disk: SharedDisk, mount_point: str, tmp_path: Path
) -> None:
    node1, node2 = servers
    other = str(tmp_path / "other")
    os.makedirs(other)
    node1.ns.sh("mount", node1.device, other)
    one(validate(node1, **props(node1, disk, mount_point)), f"is mounted at {other} on node1")
    ctx = node1.context(**props(node1, disk, mount_point))
    misplaced = check(node1, ctx)
    assert misplaced.status is CheckStatus.FAILED and f"is mounted at {other}" in misplaced.detail
    with pytest.raises(KitError, match=f"is mounted at {other} here, not by vigil"):
        node1.act(lambda: KIT.remove(ctx))
    with pytest.raises(KitError, match=f"already mounted at {other}"):
        node1.act(lambda: KIT.restore(ctx))
    # the same device, seen from another mount namespace of this host
    problem = one(validate(node2, **props(node1, disk, mount_point)), "outside this server's")
    assert f"mounted at {other} in the mount namespace of pid" in problem
    assert not host_mounts(other)


def test_can_extend_proposes_the_free_device_holding_the_filesystem(
    servers: tuple[Server, Server], disk: SharedDisk, mount_point: str
) -> None:
    node1, node2 = servers
    ctx1 = node1.context(**props(node1, disk, mount_point))
    node1.act(lambda: KIT.restore(ctx1))
    # node2 is given node1's device (copied from the primary): busy, so it proposes its own
    ctx2 = node2.context(**props(node1, disk, mount_point))
    answer: ExtendCheck = node2.act(lambda: KIT.can_extend(ctx2))
    assert answer == ExtendCheck(problems=[], proposed={"device": node2.device})
    given = node2.context(**props(node2, disk, mount_point))
    assert node2.act(lambda: KIT.can_extend(given)) == ExtendCheck()
    node2.act(lambda: KIT.extend(given))


# --- exclusive access -------------------------------------------------------------------


def test_the_same_device_in_another_namespace_is_not_mounted_twice(
    servers: tuple[Server, Server], disk: SharedDisk, mount_point: str
) -> None:
    node1, node2 = servers
    values = props(node1, disk, mount_point)
    node1.act(lambda: KIT.restore(node1.context(**values)))
    with pytest.raises(KitError, match="second live copy") as caught:
        node2.act(lambda: KIT.restore(node2.context(**values)))
    assert caught.value.severity is Severity.HARD
    assert not node2.ns.mounted(mount_point) and not host_mounts(mount_point)


def test_multi_mount_protection_refuses_a_second_server(
    servers: tuple[Server, Server], disk: SharedDisk, mount_point: str
) -> None:
    node1, node2 = servers
    node1.act(lambda: KIT.restore(node1.context(**props(node1, disk, mount_point))))
    started = time.monotonic()
    with pytest.raises(KitError) as caught:
        node2.act(lambda: KIT.restore(node2.context(**props(node2, disk, mount_point))))
    waited = time.monotonic() - started
    message = str(caught.value)
    assert "refused by multi-mount protection" in message, message
    assert "in use on another server" in message
    assert f"device {os.path.basename(node1.device)}," in message
    assert not node2.ns.mounted(mount_point) and not host_mounts(mount_point)
    assert node1.ns.mounted(mount_point)
    print(f"multi-mount protection refused the second mount after {waited:.1f}s")


def test_a_mount_that_ends_during_the_kernels_check_lets_the_next_one_through(
    servers: tuple[Server, Server],
    disk: SharedDisk,
    mount_point: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failover begun while the old owner still unmounts: the kernel's multi-mount check
    (11 s here) would end in a refusal; the kit sees the block turn clean and mounts."""
    node1, node2 = servers
    old = node1.context(**props(node1, disk, mount_point))
    node1.act(lambda: KIT.restore(old))
    outcome: list[BaseException | None] = []

    def take_over() -> None:
        try:
            node2.act(lambda: KIT.restore(node2.context(**props(node2, disk, mount_point))))
            outcome.append(None)
        except BaseException as exc:  # reported by the assertion below
            outcome.append(exc)

    caplog.set_level(logging.INFO, logger="vigil.kit.volume.vol")
    started = time.monotonic()
    taker = threading.Thread(target=take_over)
    taker.start()
    # the takeover's mount is inside the kernel's check once the kit reads the block
    # while it is still in use
    time.sleep(2.0)
    node1.act(lambda: KIT.remove(old))
    taker.join(timeout=60)
    took = time.monotonic() - started
    assert outcome == [None], outcome
    assert node2.ns.mounted(mount_point) and not node1.ns.mounted(mount_point)
    said = caplog.text
    assert "ended while the kernel's multi-mount check waited" in said, said
    assert "trying again" not in said  # no refusal came back from the kernel
    # the kernel's check alone lasts 2 x 5 + 1 s: the mount did not wait it out
    assert took < 11.0, took


def test_a_volume_freed_and_taken_again_on_every_attempt_is_named(
    servers: tuple[Server, Server],
    disk: SharedDisk,
    mount_point: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each mount cut short (another server's mount of it ended during the kernel's check,
    then began again): the error says so, not that mount lied."""
    node1, _ = servers
    attempts: list[list[str]] = []

    async def always_freed(volume: Any, argv: list[str], deadline: float, mmp: bool) -> None:
        attempts.append(argv)

    monkeypatch.setattr(service, "_mount_until_freed", always_freed)
    with pytest.raises(KitError) as caught:
        node1.act(lambda: KIT.restore(node1.context(**props(node1, disk, mount_point))))
    message = str(caught.value)
    assert f"held it back on each of {service.MMP_ATTEMPTS} attempts" in message, message
    assert "shows no such" not in message
    assert len(attempts) == service.MMP_ATTEMPTS
    assert not node1.ns.mounted(mount_point)


# --- service ------------------------------------------------------------------------------


def test_holders_are_named_and_the_volume_stays_mounted(
    servers: tuple[Server, Server], disk: SharedDisk, mount_point: str
) -> None:
    node1, _ = servers
    ctx = node1.context(**props(node1, disk, mount_point))
    node1.act(lambda: KIT.restore(ctx))
    node1.ns.sh("sh", "-c", f"echo data > {mount_point}/file")
    holder = node1.holder(f"{mount_point}/file")
    try:
        with pytest.raises(KitError) as caught:
            node1.act(lambda: KIT.remove(ctx))
        message = str(caught.value)
        assert f"pid {holder.pid} (sleep 600): open file {mount_point}/file" in message
        assert "set stop_holders=true" in message
        assert check(node1, ctx).status is CheckStatus.RUNNING
    finally:
        holder.kill()
        holder.wait()
    node1.act(lambda: KIT.remove(ctx))
    assert check(node1, ctx).status is CheckStatus.STOPPED


def test_stop_holders_stops_them_before_unmounting(
    servers: tuple[Server, Server], disk: SharedDisk, mount_point: str
) -> None:
    node1, _ = servers
    ctx = node1.context(**props(node1, disk, mount_point, stop_holders=True))
    node1.act(lambda: KIT.restore(ctx))
    node1.ns.sh("touch", f"{mount_point}/file")
    holder = node1.holder(f"{mount_point}/file")
    node1.act(lambda: KIT.remove(ctx))
    assert holder.wait(timeout=10) == -15  # SIGTERM was enough
    assert not node1.ns.mounted(mount_point)


def test_escalate_kills_holders_and_unmounts(
    servers: tuple[Server, Server], disk: SharedDisk, mount_point: str
) -> None:
    node1, _ = servers
    ctx = node1.context(**props(node1, disk, mount_point))
    node1.act(lambda: KIT.restore(ctx))
    holder = node1.ns.call(lambda: subprocess.Popen(["sleep", "600"], cwd=mount_point))
    done = node1.act(lambda: KIT.escalate(ctx))
    assert holder.wait(timeout=10) == -9
    assert done[0].startswith(f"killed pid {holder.pid} (sleep 600): working directory")
    assert not node1.ns.mounted(mount_point)
    assert node1.act(lambda: KIT.escalate(ctx)) == []


def test_mounts_below_are_named(
    servers: tuple[Server, Server], disk: SharedDisk, mount_point: str
) -> None:
    node1, _ = servers
    ctx = node1.context(**props(node1, disk, mount_point))
    node1.act(lambda: KIT.restore(ctx))
    node1.ns.sh("mkdir", f"{mount_point}/sub")
    node1.ns.sh("mount", "-t", "tmpfs", "tmpfs", f"{mount_point}/sub")
    with pytest.raises(KitError, match=f"filesystems are mounted below it .{mount_point}/sub"):
        node1.act(lambda: KIT.remove(ctx))
    node1.ns.sh("umount", f"{mount_point}/sub")
    node1.act(lambda: KIT.remove(ctx))


def test_checks_and_local_recovery(
    servers: tuple[Server, Server], disk: SharedDisk, mount_point: str
) -> None:
    node1, _ = servers
    ctx = node1.context(**props(node1, disk, mount_point, full_threshold=1))
    node1.act(lambda: KIT.restore(ctx))
    assert check(node1, ctx).warning == ""
    node1.ns.sh("dd", "if=/dev/zero", f"of={mount_point}/fill", "bs=1M", "count=4")
    running = check(node1, ctx)
    assert running.status is CheckStatus.RUNNING
    assert running.warning.startswith("volume is nearly full: "), running
    deep = node1.act(lambda: KIT.deep_check(ctx))
    assert deep.status is CheckStatus.RUNNING
    written = node1.ns.sh("cat", f"{mount_point}/{CHECK_FILE}").stdout
    assert written.startswith("node1 epoch 7 ")
    node1.ns.sh("mount", "-o", "remount,ro", mount_point)
    failed = check(node1, ctx)
    assert failed.status is CheckStatus.FAILED and "read-only" in failed.detail
    assert node1.act(lambda: KIT.recover(ctx)) is True
    assert check(node1, ctx).status is CheckStatus.RUNNING
    node1.act(lambda: KIT.remove(ctx))
    node1.ns.sh("mount", "-t", "tmpfs", "tmpfs", mount_point)
    other = check(node1, ctx)
    assert other.status is CheckStatus.FAILED and "holds another filesystem" in other.detail
    with pytest.raises(KitError, match="is in use: tmpfs"):
        node1.act(lambda: KIT.restore(ctx))


def test_fsck_runs_when_the_filesystem_asks(
    servers: tuple[Server, Server], disk: SharedDisk, mount_point: str, caplog: Any
) -> None:
    node1, _ = servers
    sh("tune2fs", "-E", "force_fsck", node1.device)
    ctx = node1.context(**props(node1, disk, mount_point))
    caplog.set_level(logging.INFO, logger="vigil.kit.volume")
    started = time.monotonic()
    node1.act(lambda: KIT.restore(ctx))
    print(f"restore with fsck took {time.monotonic() - started:.1f}s")
    assert any("checking" in r.getMessage() for r in caplog.records), caplog.text
    assert check(node1, ctx).status is CheckStatus.RUNNING
    state = sh("dumpe2fs", "-h", node1.device).stdout
    assert "Filesystem state:         clean" in state


def test_restore_and_remove_are_idempotent_and_timed(
    servers: tuple[Server, Server], disk: SharedDisk, mount_point: str, caplog: Any
) -> None:
    node1, node2 = servers
    caplog.set_level(logging.INFO, logger="vigil.kit.volume")
    timings = []
    for server in (node1, node2, node1):
        ctx = server.context(**props(server, disk, mount_point))
        started = time.monotonic()
        server.act(lambda ctx=ctx: KIT.restore(ctx))
        restored = time.monotonic()
        server.act(lambda ctx=ctx: KIT.restore(ctx))
        assert check(server, ctx).status is CheckStatus.RUNNING
        removing = time.monotonic()
        server.act(lambda ctx=ctx: KIT.remove(ctx))
        timings.append((restored - started, time.monotonic() - removing))
        server.act(lambda ctx=ctx: KIT.remove(ctx))
        assert check(server, ctx).status is CheckStatus.STOPPED
    shown = ", ".join(f"restore {a * 1000:.0f} ms / remove {b * 1000:.0f} ms" for a, b in timings)
    print(f"volume kit timings: {shown}")
    assert "mounted" in caplog.text and "unmounted" in caplog.text
