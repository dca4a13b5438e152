"""The replication link: frames on a TCP connection from a target to its source.

Every frame is a 24-byte header (kind, flags, payload length, sequence number, offset)
and a payload. The source numbers every frame that changes the target (writes, resync
blocks, flushes, control messages); the target applies them in order and acknowledges
the highest number it has applied (``ACK``): an acknowledged flush means everything
before it is durable there. ``PING`` keeps an idle link alive both ways.

The handshake authenticates both ends with the mirror's shared secret (HMAC-SHA256 of a
nonce each side chose) before anything else is believed: the source sends ``CHALLENGE``,
the target ``HELLO`` (its proof, its nonce, what its disk holds), the source ``WELCOME``
(its proof, the plan). The data itself is not encrypted: use a private replication
network (as for DRBD or DataKeeper).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import socket
import struct
import threading
import zlib
from enum import IntEnum
from typing import Any

__all__ = [
    "FLAG_ZLIB",
    "HEADER",
    "Frame",
    "Kind",
    "Link",
    "LinkClosed",
    "compress",
    "nonce",
    "proof",
]

HEADER = struct.Struct("<BBHIQQ")
FLAG_ZLIB = 1
#: the most bytes one frame may carry (a region of the largest size, plus room)
MAX_PAYLOAD = 16 * 2**20 + 4096
#: payloads smaller than this are never compressed
_COMPRESS_MIN = 4096


class Kind(IntEnum):
    CHALLENGE = 1
    HELLO = 2
    WELCOME = 3
    WRITE = 4
    RESYNC = 5
    FLUSH = 6
    CONTROL = 7
    ACK = 8
    PING = 9


class LinkClosed(OSError):
    """The other end closed the link, or it broke."""


def proof(secret: str, role: str, nonce: str) -> str:
    """What ``role`` (source, target) answers to ``nonce``."""
    return hmac.new(secret.encode(), f"{role}:{nonce}".encode(), hashlib.sha256).hexdigest()


def compress(data: bytes | memoryview) -> tuple[bytes | memoryview, int]:
    """``data`` compressed when that makes it smaller by a tenth, with the frame flags."""
    if len(data) < _COMPRESS_MIN:
        return data, 0
    packed = zlib.compress(data, 1)
    if len(packed) * 10 < len(data) * 9:
        return packed, FLAG_ZLIB
    return data, 0


class Frame:
    """One frame read from a link (``payload`` valid until the next read)."""

    __slots__ = ("flags", "kind", "offset", "payload", "seq")

    def __init__(self, kind: int, flags: int, seq: int, offset: int, payload: memoryview) -> None:
        self.kind = kind
        self.flags = flags
        self.seq = seq
        self.offset = offset
        self.payload = payload

    def data(self) -> bytes | memoryview:
        """The payload, decompressed when it was compressed."""
        if self.flags & FLAG_ZLIB:
            return zlib.decompress(self.payload)
        return self.payload

    def json(self) -> dict[str, Any]:
        loaded = json.loads(bytes(self.payload))
        if not isinstance(loaded, dict):
            raise ValueError("a control message must be a JSON object")
        return loaded


class Link:
    """A connected socket, framed. Sending is not locked here: one thread sends at a time
    (the caller's lock); one thread reads."""

    def __init__(self, sock: socket.socket, buffer_size: int = 4 * 2**20) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.sock = sock
        self._buf = bytearray(max(buffer_size, MAX_PAYLOAD + HEADER.size))
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    @staticmethod
    def frame(
        kind: Kind, seq: int = 0, offset: int = 0, payload: bytes | memoryview = b"", flags: int = 0
    ) -> list[bytes | memoryview]:
        """A frame as the parts ``send`` takes."""
        head = HEADER.pack(kind, flags, 0, len(payload), seq, offset)
        return [head, payload] if payload else [head]

    @staticmethod
    def message(kind: Kind, body: dict[str, Any], seq: int = 0) -> list[bytes | memoryview]:
        return Link.frame(kind, seq, 0, json.dumps(body).encode())

    def send(
        self, parts: list[bytes | memoryview], abandoned: threading.Event | None = None
    ) -> None:
        """Send every part, in order (scatter-gather), however long the other end takes to
        read, until ``abandoned`` is set. ``LinkClosed`` when the link broke or was
        abandoned (the frame may then be cut: the link is useless after that)."""
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        while views:
            try:
                sent = self.sock.sendmsg(views[:512])
            except TimeoutError:
                if abandoned is not None and abandoned.is_set():
                    raise LinkClosed("abandoned") from None
                continue
            except (OSError, ConnectionError) as exc:
                raise LinkClosed(str(exc)) from exc
            while sent:
                if sent >= len(views[0]):
                    sent -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    def _fill(self, need: int) -> None:
        """Have at least ``need`` unread bytes in the buffer."""
        if self._end - self._start >= need:
            return
        if self._start + need > len(self._buf):
            held = self._end - self._start
            self._buf[:held] = self._buf[self._start : self._end]
            self._start, self._end = 0, held
        while self._end - self._start < need:
            try:
                got = self.sock.recv_into(self._view[self._end :])
            except TimeoutError:
                raise
            except OSError as exc:
                raise LinkClosed(str(exc)) from exc
            if got == 0:
                raise LinkClosed("the other end closed the link")
            self._end += got

    def buffered(self) -> int:
        """Bytes received but not read yet."""
        return self._end - self._start

    def read(self) -> Frame:
        """The next frame (blocking, within the socket's timeout: ``TimeoutError``)."""
        self._fill(HEADER.size)
        kind, flags, _, length, seq, offset = HEADER.unpack_from(self._buf, self._start)
        if length > MAX_PAYLOAD:
            raise LinkClosed(f"a frame of {length} bytes: not a mirror peer")
        self._fill(HEADER.size + length)
        begin = self._start + HEADER.size
        self._start = begin + length
        if self._start == self._end:
            self._start = self._end = 0
        return Frame(kind, flags, seq, offset, self._view[begin : begin + length])

    def expect(self, kind: Kind) -> dict[str, Any]:
        """The next frame, which must be a JSON message of ``kind``."""
        frame = self.read()
        if frame.kind != kind:
            raise LinkClosed(f"expected {kind.name}, got frame kind {frame.kind}")
        return frame.json()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def nonce() -> str:
    return os.urandom(16).hex()
