"""Loop devices onto the replicated device: attached with ``LOOP_CONFIGURE`` in direct-I/O
mode with **autoclear** (the kernel detaches the device when its last user, the mounted
filesystem, lets go: after a fence guard's lazy unmount too, so nothing is left on a dead
FUSE file), and found again by their backing file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import time
from pathlib import Path

__all__ = ["attach", "detach", "loops_of"]

_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LOOP_CLR_FD = 0x4C01
_LO_FLAGS_AUTOCLEAR = 4
_LO_FLAGS_DIRECT_IO = 16
#: struct loop_info64, then loop_config's reserved words
_INFO = struct.Struct("<QQQQQIIII64s64s32s2Q")
_CONFIG = struct.Struct(f"<II{_INFO.size}s64x")
_ATTEMPTS = 20


def attach(backing: Path) -> tuple[str, int]:
    """A new loop device onto ``backing`` (direct I/O, autoclear): its path, and an open
    descriptor of it that the caller keeps until the device is in use (mounted) and then
    closes: closing it first would let autoclear detach the device at once."""
    backing_fd = os.open(backing, os.O_RDWR | os.O_CLOEXEC)
    try:
        name = str(backing).encode()[:63]
        flags = _LO_FLAGS_AUTOCLEAR | _LO_FLAGS_DIRECT_IO
        info = _INFO.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0)
        config = _CONFIG.pack(backing_fd, 0, info)
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(_ATTEMPTS):
                number = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(fd, _LOOP_CONFIGURE, config)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno == errno.EBUSY:
                        continue  # taken by someone else meanwhile
                    raise
                return device, fd
        finally:
            os.close(control)
    finally:
        os.close(backing_fd)
    raise OSError(errno.EBUSY, "no free loop device could be configured")


def loops_of(backing: Path) -> list[str]:
    """The loop devices whose backing file is ``backing``."""
    wanted = str(backing)
    found = []
    for entry in Path("/sys/block").glob("loop*"):
        with contextlib.suppress(OSError):
            if (entry / "loop" / "backing_file").read_text().strip() == wanted:
                found.append(f"/dev/{entry.name}")
    return sorted(found)


def detach(device: str, wait: float = 5.0) -> bool:
    """Detach ``device`` (idempotent); True once it no longer has a backing file. A
    device still in use is marked autoclear by the kernel and goes with its last user."""
    with contextlib.suppress(OSError):
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, _LOOP_CLR_FD)
        finally:
            os.close(fd)
    backing = Path("/sys/block") / Path(device).name / "loop" / "backing_file"
    deadline = time.monotonic() + wait
    while backing.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not backing.exists()
