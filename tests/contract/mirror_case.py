"""The mirror kit's conformance case (``kit_cases.CASES``): a mirror's source on this host.

Its disk is a loop device onto an ext4 image; what ``create`` would record on the primary
(the mirror's first generation, the link's secret, the disk's size) is written here first.
The kit's actions run on a loop inside a private mount namespace (``MountNamespaceLoop``),
so the source process it starts, its FUSE mount, the loop device's filesystem and mount
all live there and never in the host's mount namespace. The mirror has no target: the
sequence checks the kit's contract (restore, checks, remove, delete), the replication is
tested in the lab (``tests/integration/test_mirror_kit.py``, ``tests/faults``).
"""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

from kit_cases import KitEnvironment, free_port, processes_mentioning

from vigil.kits.mirror import loop as mirror_loop
from vigil.kits.mirror.lineage import new_generation
from vigil.kits.mirror.meta import MirrorMeta, MirrorPaths

#: the tag and state directory ``test_kits.make_context`` gives the resource
TAG = "conformance"


def mirror_case(workdir: Path) -> KitEnvironment:
    from tests.shared_disk import MountNamespaceLoop, SharedDisk, host_mounts

    disk = SharedDisk(workdir / "disk.img").create(servers=1)
    device = disk.devices[0]
    size = os.path.getsize(disk.image)
    mount_point = str(workdir / "mirror")
    paths = MirrorPaths.of(workdir / "state" / "kits" / TAG)
    paths.root.mkdir(parents=True)
    paths.save(
        MirrorMeta(
            tag=TAG, size=size, region_size=2**20, lineage=[new_generation()], last_source=True
        )
    )
    namespace: list[MountNamespaceLoop] = []

    def daemons() -> list[int]:
        return processes_mentioning(str(paths.config("source")))

    def cleanup() -> None:
        for pid in daemons():
            os.kill(pid, signal.SIGKILL)
        for ns in namespace:
            for point in (mount_point, str(paths.fuse_dir)):
                if ns.mounted(point):
                    ns.sh("umount", "-l", point, check=False)
            ns.close()
        for stray in mirror_loop.loops_of(paths.device_file):
            mirror_loop.detach(stray)
        left = disk.detach()
        assert not left, f"loop devices still attached to {disk.image}: {left}"

    try:
        namespace.append(MountNamespaceLoop())
    except BaseException:
        cleanup()
        raise
    ns = namespace[0]

    def answers() -> bool:
        if host_mounts(mount_point) or not ns.mounted(mount_point) or not daemons():
            return False
        probe = ns.sh("sh", "-c", f"echo probe > {mount_point}/probe && cat {mount_point}/probe")
        return probe.stdout == "probe\n"

    def released() -> bool:
        try:
            os.close(os.open(device, os.O_RDONLY | os.O_EXCL))
        except OSError:
            return False
        return True

    def gone() -> bool:
        return (
            not daemons()
            and not ns.mounted(mount_point)
            and not ns.mounted(str(paths.fuse_dir))
            and not mirror_loop.loops_of(paths.device_file)
            and released()
        )

    return KitEnvironment(
        properties={
            "disk": device,
            "address": "127.0.0.1",
            "port": free_port(),
            "mount_point": mount_point,
            "filesystem_uuid": disk.uuid,
            "secret": secrets.token_hex(32),
            "size": size,
        },
        answers=answers,
        gone=gone,
        cleanup=cleanup,
        run=ns.run,
    )
