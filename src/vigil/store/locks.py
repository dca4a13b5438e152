"""Who holds the embedded store's write lock: read from ``/proc/locks``.

The embedded store is one SQLite file shared by every agent of the host. A write
transaction takes an exclusive POSIX lock (in WAL mode, byte 120 of the ``-shm`` file; in
rollback mode, locks on the database file itself) and keeps it until it commits. An agent
frozen inside one (SIGSTOP, a hung kernel call) therefore stops every other agent from
writing: nobody can take its hierarchies over. The fence guard uses this to find such an
agent and end it (``vigil.agent.fenceguard``), as a node watchdog would reset a hung node.

Hand-written: no library reads the kernel's lock table. Standard library only (the guard
imports it and stays small).
"""

from __future__ import annotations

import os
from pathlib import Path

PROC_LOCKS = Path("/proc/locks")


def _file_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


def exclusive_holders(database: Path, table: str | None = None) -> set[int]:
    """The pids holding an exclusive (WRITE) lock on ``database`` or its ``-shm`` file.

    Shared (READ) locks are left out: every open connection holds some, and they do not
    stop a writer. Waiters (``->`` lines) hold nothing yet. ``table`` is the text of
    ``/proc/locks`` (read when not given). A pid is as seen in this process's pid namespace.
    """
    keys = {
        key for key in (_file_key(database), _file_key(Path(f"{database}-shm"))) if key is not None
    }
    if not keys:
        return set()
    if table is None:
        try:
            table = PROC_LOCKS.read_text()
        except OSError:
            return set()
    holders: set[int] = set()
    # e.g. "1: POSIX  ADVISORY  WRITE 15948 fe:00:2147643 120 120"
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->" or fields[3] != "WRITE":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
            pid = int(fields[4])
        except ValueError:
            continue
        if key in keys and pid > 0:
            holders.add(pid)
    return holders
