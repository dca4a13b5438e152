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
import concurrent.futures
import ctypes
import ctypes.util
import os
import subprocess
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

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


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


class MountNamespaceLoop:
    """An event loop on a thread inside a new private mount namespace.

    ``run`` executes a coroutine function there (the conformance suite's ``Runner``);
    ``call`` a plain function; ``mountinfo`` is that namespace's mount table. ``close``
    stops the loop (joining the threads it started) and the thread: the namespace, and
    whatever is still mounted in it, ends with them.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.tid = 0
        self._entered: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name="private mount ns", daemon=True)
        self._thread.start()
        self._entered.result(timeout=10)

    def _main(self) -> None:
        try:
            libc = _libc()
            _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
            self.tid = threading.get_native_id()
        except BaseException as exc:
            self._entered.set_exception(exc)
            return
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._entered.set_result, None)
        try:
            self.loop.run_forever()
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    async def run(self, action: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``action()`` on the namespace's loop and return its result."""

        async def call() -> Any:
            return await action()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), self.loop))

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

    def close(self) -> None:
        if self._thread.is_alive() and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)


def host_mounts(mount_point: str) -> bool:
    """Something is mounted at ``mount_point`` in the host's (this main thread's)
    mount namespace."""
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        return any(line.split()[4] == mount_point for line in table)
