"""A FUSE filesystem of one file, ``device``: the replicated device the loop device sits on.

Spoken directly on ``/dev/fuse`` (protocol 7.x, the few operations one regular file needs)
rather than through libfuse: requests are read into a pool of page-aligned buffers with
the write's data landing aligned (so it can go to the disk with ``O_DIRECT``, and be sent
without a copy), every request can be answered later from any thread (a write is answered
when the targets have it), and the kernel is asked for asynchronous direct I/O with
1 MiB requests. ``docs/kits/mirror.md`` has the measurements behind this choice.

What the kernel asks beyond reads, writes and flushes (lookup, attributes, open, a
directory listing of the mount) is answered here; extended attributes, fallocate
(discard), ioctl, poll and lseek are refused, and the kernel stops asking.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import select
import stat
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Fuse", "FuseGone", "Request"]

IN_HEADER = struct.Struct("<IIQQIIIHH")  # 40 bytes
OUT_HEADER = struct.Struct("<IiQ")  # 16 bytes
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # 88 bytes
ENTRY = struct.Struct("<QQQQII")  # entry_out before its attr
ATTR_OUT = struct.Struct("<QII")
RW_IN = struct.Struct("<QQIIQII")  # read_in and write_in
INIT_IN = struct.Struct("<IIII")
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
OPEN_OUT = struct.Struct("<QII")
WRITE_OUT = struct.Struct("<II")
STATFS_OUT = struct.Struct("<QQQQQIIII6I")
DIRENT = struct.Struct("<QQII")

ROOT, DEVICE, NAME = 1, 2, b"device"
#: the header a write request starts with (in header + write_in): its data follows aligned
WRITE_HEAD = 80
MAX_WRITE = 1 << 20
#: init flags asked for: async direct I/O, big writes, max_pages
_WANTED = (1 << 15) | (1 << 5) | (1 << 22)
_FOPEN_DIRECT_IO, _FOPEN_PARALLEL_DIRECT_WRITES = 1 << 0, 1 << 6
_VALID = 3600  # seconds the kernel may cache names and attributes (they never change)
MNT_DETACH = 2

OP_LOOKUP, OP_FORGET, OP_GETATTR, OP_SETATTR = 1, 2, 3, 4
OP_OPEN, OP_READ, OP_WRITE, OP_STATFS, OP_RELEASE = 14, 15, 16, 17, 18
OP_FSYNC, OP_FLUSH, OP_INIT, OP_OPENDIR, OP_READDIR = 20, 25, 26, 27, 28
OP_RELEASEDIR, OP_FSYNCDIR, OP_ACCESS, OP_INTERRUPT = 29, 30, 34, 36
OP_DESTROY, OP_IOCTL, OP_BATCH_FORGET = 38, 39, 42
_NO_REPLY = {OP_FORGET, OP_BATCH_FORGET, OP_INTERRUPT}
_OK = {OP_RELEASE, OP_RELEASEDIR, OP_FLUSH, OP_ACCESS, OP_FSYNCDIR, OP_DESTROY}

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class FuseGone(OSError):
    """The filesystem was unmounted (or the connection aborted)."""


@dataclass
class Request:
    """One request. For ``OP_WRITE``, ``data`` is the data (aligned, in a pool buffer that
    stays the request's until ``Fuse.release``); for ``OP_READ``, ``size``."""

    opcode: int
    unique: int
    nodeid: int
    body: bytes
    offset: int = 0
    size: int = 0
    data: memoryview | None = None
    buffer: int = -1


class Fuse:
    """The FUSE session serving ``device`` (``size`` bytes) at ``mount_dir``."""

    def __init__(self, mount_dir: Path, size: int, fsname: str, pool: int = 32) -> None:
        self.mount_dir = mount_dir
        self.size = size
        self.fsname = fsname
        self.fd = -1
        self._heads = [bytearray(WRITE_HEAD) for _ in range(pool)]
        self._data = [mmap.mmap(-1, MAX_WRITE + 4096) for _ in range(pool)]
        self._free = list(range(pool))
        self._freed = threading.Event()
        self.started = time.time()

    # --- mounting -------------------------------------------------------------------------

    def mount(self) -> None:
        """Open ``/dev/fuse`` and mount the filesystem (``OSError`` naming the cause)."""
        self.mount_dir.mkdir(parents=True, exist_ok=True)
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        options = (
            f"fd={self.fd},rootmode={stat.S_IFDIR | 0o755:o},user_id=0,group_id=0,"
            "allow_other,default_permissions"
        )
        result = _libc.mount(
            self.fsname.encode(),
            str(self.mount_dir).encode(),
            b"fuse.vigil-mirror",
            0,
            options.encode(),
        )
        if result != 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"cannot mount FUSE at {self.mount_dir}: {os.strerror(err)}")
        os.set_blocking(self.fd, False)

    def unmount(self) -> None:
        """Detach the mount (lazily: the loop device may still hold the file)."""
        _libc.umount2(str(self.mount_dir).encode(), MNT_DETACH)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # --- requests -------------------------------------------------------------------------

    def release(self, request: Request) -> None:
        """The request's buffer may be reused (from any thread)."""
        if request.buffer >= 0:
            self._free.append(request.buffer)
            request.buffer = -1
            self._freed.set()

    def read_batch(self, wait: float) -> list[Request]:
        """Every request waiting (as many as there are free buffers), after waiting up to
        ``wait`` seconds for the first. Requests the filesystem answers itself (lookup,
        attributes...) are answered here and not returned. ``FuseGone`` once unmounted."""
        batch: list[Request] = []
        if not self._free:  # every buffer holds a write still going to the disk
            self._freed.wait(wait)
            self._freed.clear()
        while self._free:
            index = self._free.pop()
            try:
                length = os.readv(self.fd, [self._heads[index], self._data[index]])
            except BlockingIOError:
                self._free.append(index)
                if batch or not select.select([self.fd], [], [], wait)[0]:
                    break
                wait = 0
                continue
            except OSError as exc:
                self._free.append(index)
                if exc.errno in (errno.ENODEV, errno.ECONNABORTED):
                    raise FuseGone(exc.errno, "the replicated device was unmounted") from exc
                if exc.errno in (errno.EINTR, errno.ENOENT):
                    continue  # an interrupted request: the kernel dropped it
                raise
            request = self._parse(index, length)
            if request is None or request.buffer != index:
                self._free.append(index)  # only a write keeps its buffer
            if request is not None:
                batch.append(request)
        return batch

    def _parse(self, index: int, length: int) -> Request | None:
        head, data = self._heads[index], self._data[index]
        opcode, unique, nodeid = IN_HEADER.unpack_from(head)[1:4]
        if opcode == OP_WRITE:
            offset, size = RW_IN.unpack_from(head, 40)[1:3]
            view = memoryview(data)[:size]
            return Request(opcode, unique, nodeid, b"", offset, size, view, index)
        body = (
            bytes(head[40:length])
            if length <= WRITE_HEAD
            else bytes(head[40:]) + bytes(data[: length - WRITE_HEAD])
        )
        request = Request(opcode, unique, nodeid, body)
        if opcode == OP_READ:
            request.offset, request.size = RW_IN.unpack_from(body)[1:3]
            return request
        if opcode == OP_FSYNC:
            return request
        self._answer(request)
        return None

    def reply(self, unique: int, payload: bytes | memoryview = b"", error: int = 0) -> None:
        """Answer request ``unique`` (thread-safe: one ``writev`` per answer)."""
        head = OUT_HEADER.pack(OUT_HEADER.size + len(payload), -error, unique)
        try:
            os.writev(self.fd, [head, payload] if payload else [head])
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.EBADF):
                raise  # ENOENT: the request was interrupted meanwhile

    def reply_write(self, unique: int, size: int) -> None:
        self.reply(unique, WRITE_OUT.pack(size, 0))

    # --- what the filesystem answers itself ----------------------------------------------

    def _attr(self, node: int) -> bytes:
        when = int(self.started)
        if node == ROOT:
            mode, size, links = stat.S_IFDIR | 0o755, 0, 2
        else:
            mode, size, links = stat.S_IFREG | 0o600, self.size, 1
        return ATTR.pack(
            node, size, -(-size // 512), when, when, when, 0, 0, 0, mode, links, 0, 0, 0,
            4096, 0,
        )  # fmt: skip

    def _answer(self, request: Request) -> None:
        op, unique, body = request.opcode, request.unique, request.body
        if op in _NO_REPLY:
            return
        if op in _OK:
            self.reply(unique)
        elif op == OP_INIT:
            major, minor, readahead, flags = INIT_IN.unpack_from(body)
            if major != 7:
                self.reply(unique, error=errno.EPROTO)
                return
            out = INIT_OUT.pack(
                7, min(minor, 38), readahead, flags & _WANTED, 64, 48, MAX_WRITE, 1,
                MAX_WRITE // 4096, 0, 0, *([0] * 7),
            )  # fmt: skip
            self.reply(unique, out)
        elif op == OP_LOOKUP:
            if request.nodeid == ROOT and body.split(b"\0")[0] == NAME:
                entry = ENTRY.pack(DEVICE, 0, _VALID, _VALID, 0, 0) + self._attr(DEVICE)
                self.reply(unique, entry)
            else:
                self.reply(unique, error=errno.ENOENT)
        elif op in (OP_GETATTR, OP_SETATTR):
            self.reply(unique, ATTR_OUT.pack(_VALID, 0, 0) + self._attr(request.nodeid))
        elif op == OP_OPEN:
            flags = _FOPEN_DIRECT_IO | _FOPEN_PARALLEL_DIRECT_WRITES
            self.reply(unique, OPEN_OUT.pack(0, flags, 0))
        elif op == OP_OPENDIR:
            self.reply(unique, OPEN_OUT.pack(0, 0, 0))
        elif op == OP_READDIR:
            self.reply(unique, self._listing(RW_IN.unpack_from(body)[1]))
        elif op == OP_STATFS:
            self.reply(unique, STATFS_OUT.pack(0, 0, 0, 1, 0, 4096, 255, 4096, 0, *([0] * 6)))
        elif op == OP_IOCTL:
            self.reply(unique, error=errno.ENOTTY)
        else:
            self.reply(unique, error=errno.ENOSYS)

    def _listing(self, offset: int) -> bytes:
        entries = [(ROOT, b".", stat.S_IFDIR), (ROOT, b"..", stat.S_IFDIR)]
        entries.append((DEVICE, NAME, stat.S_IFREG))
        out = b""
        for position, (node, name, kind) in enumerate(entries[offset:], start=offset + 1):
            record = DIRENT.pack(node, position, len(name), kind >> 12) + name
            out += record + b"\0" * (-len(record) % 8)
        return out
