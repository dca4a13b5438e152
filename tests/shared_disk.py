"""Test helpers for volumes: a shared disk, and a private mount namespace to mount it in.

``SharedDisk``: one sparse image file with an ext4 filesystem (multi-mount protection
on), and one loop device per server attached to it (``vigil.lab.disk``), as several hosts
see one LUN. Used as a context manager, it detaches its loop devices on the way out, also
after a failure, and checks that ``losetup -j IMAGE`` shows nothing left.

``MountNamespaceLoop``: an event loop in a thread that entered a new, private mount
namespace. Mount namespaces are per thread: ``mount`` run from that loop, and the threads
its ``asyncio.to_thread`` starts, live in that namespace; the rest of the test process
stays in the host's, which never sees the mount. (A filesystem mounted in the host's
namespace is copied into every namespace created afterwards, by other tests too: see
LAB-NOTES, "Namespaces as servers".)

Needs root, ``losetup``, ``mkfs.ext4`` (e2fsprogs) and ``blkid``.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from tests.thread_loop import ThreadLoop, libc, libc_check
from vigil.lab import disk

CLONE_NEWNS = 0x00020000
MS_REC = 16384
MS_PRIVATE = 1 << 18
T = TypeVar("T")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; ``check``: raise with its stderr on failure."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


class SharedDisk:
    """An ext4 image (``-O mmp``) and one loop device per server onto it (outside a lab:
    ``vigil.lab.disk``'s building blocks; a lab has ``Lab.add_shared_disk``)."""

    def __init__(self, image: Path, size_mib: int = 64, mmp_update_interval: int = 1) -> None:
        self.image = image
        self.size_mib = size_mib
        self.mmp_update_interval = mmp_update_interval
        self.devices: list[str] = []
        self.uuid = ""

    def create(self, servers: int) -> SharedDisk:
        """Make the image and its filesystem, attach ``servers`` loop devices."""
        self.uuid = disk.make_filesystem(
            self.image, self.size_mib, mmp_update_interval=self.mmp_update_interval
        )
        try:
            for _ in range(servers):
                self.devices.append(disk.attach(self.image))
        except BaseException:
            self.detach()
            raise
        return self

    def attached(self) -> list[str]:
        """Loop devices attached to the image right now (``losetup -j``)."""
        return disk.attached(self.image)

    def detach(self) -> list[str]:
        """Detach every loop device of the image; the ones still attached afterwards."""
        left = disk.detach(self.image, self.devices)
        self.devices = []
        return left

    def __enter__(self) -> SharedDisk:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        left = self.detach()
        if left and kind is None:
            raise AssertionError(f"loop devices still attached to {self.image}: {left}")


class MountNamespaceLoop(ThreadLoop):
    """An event loop on a thread inside a new private mount namespace.

    ``run`` executes a coroutine function there (the conformance suite's ``Runner``);
    ``call`` a plain function; ``mountinfo`` is that namespace's mount table. ``close``
    stops the loop (joining the threads it started) and the thread: the namespace, and
    whatever is still mounted in it, ends with them.
    """

    def __init__(self) -> None:
        self.tid = 0
        super().__init__("private mount ns")

    def _enter(self) -> None:
        c = libc()
        libc_check(c.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        libc_check(c.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        self.tid = threading.get_native_id()

    def run_sync(self, action: Callable[[], Awaitable[T]], timeout: float = 120) -> T:
        """``run`` for code without a running loop of its own (fixtures, probes)."""

        async def call() -> T:
            return await action()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def call(self, function: Callable[[], T], timeout: float = 60) -> T:
        """Run a plain function on the namespace's thread."""

        async def call() -> T:
            return function()

        return self.run_sync(call, timeout)

    def mountinfo(self) -> str:
        """The namespace's mount table (``/proc/<thread>/mountinfo``)."""
        return Path(f"/proc/{self.tid}/mountinfo").read_text()

    def mounted(self, mount_point: str) -> bool:
        """Something is mounted at ``mount_point`` in the namespace."""
        return any(line.split()[4] == mount_point for line in self.mountinfo().splitlines())

    def sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (``sh`` from its thread)."""
        return self.call(lambda: sh(*argv, check=check), timeout=130)


def host_mounts(mount_point: str) -> bool:
    """Something is mounted at ``mount_point`` in the host's (this main thread's)
    mount namespace."""
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        return any(line.split()[4] == mount_point for line in table)
