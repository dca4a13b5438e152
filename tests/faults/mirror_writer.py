"""A writer of acknowledged records, for the mirror's fault tests (standard library only:
it runs inside a lab server as ``python mirror_writer.py write FILE`` or ``check FILE N``).

``write``: record ``i`` (4 KiB, its number and a digest of it) is written at offset
``i * 4096`` with ``pwrite`` and made durable with ``fdatasync``; only then is ``i``
printed (one line, flushed): a printed number is an acknowledged write. It stops at the
first error (the filesystem went away under it).

``check FILE N``: every record ``0..N-1`` in ``FILE`` is the one written: prints the
numbers of the records that are missing or wrong, and exits 1 if there is any.
"""

from __future__ import annotations

import hashlib
import os
import sys

SIZE = 4096


def record(number: int) -> bytes:
    head = f"record {number:012d} ".encode()
    body = hashlib.sha256(head).hexdigest().encode() * (SIZE // 64)
    return (head + body)[:SIZE]


def write(path: str) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    os.fsync(directory)
    os.close(directory)
    number = 0
    while True:
        try:
            os.pwrite(fd, record(number), number * SIZE)
            os.fdatasync(fd)
        except OSError as exc:
            print(f"stopped: {exc}", file=sys.stderr, flush=True)
            return 0
        print(number, flush=True)
        number += 1


def check(path: str, count: int) -> int:
    with open(path, "rb") as handle:
        data = handle.read(count * SIZE)
    bad = [n for n in range(count) if data[n * SIZE : (n + 1) * SIZE] != record(n)]
    print(" ".join(str(n) for n in bad))
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1] == "write":
        sys.exit(write(sys.argv[2]))
    sys.exit(check(sys.argv[2], int(sys.argv[3])))
