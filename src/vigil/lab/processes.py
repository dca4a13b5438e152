"""Processes of the lab: starting detached daemons, finding and stopping what runs inside.

A process "is inside" a lab server when its network or mount namespace is one of the
server's; ``pids_in_namespaces`` finds them by scanning ``/proc/*/ns/{net,mnt}``, so the
lab finds its processes even after a crash, without any pid file.

PID 1 on the lab machines reaps orphans slowly: a process whose state is ``Z`` (zombie)
has ended and counts as gone. Our own children are reaped here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Collection, Iterable
from pathlib import Path

from vigil.lab import namespaces

POLL_INTERVAL = 0.05


def spawn_detached(argv: list[str], log_file: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session: stdin ``/dev/null``, stdout+stderr appended to
    ``log_file``. The caller keeps the ``Popen`` to reap the process later."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child and has ended."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (state ``Z``) or a missing pid is gone."""
    reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X", "x")


def running_in(pid: int | None, netns: Path) -> int | None:
    """``pid`` if it runs inside the network namespace ``netns`` (a lab server or store
    member), else ``None`` (gone, or the pid reused by a process outside). A process just
    started counts too while its ``nsenter`` has not entered yet: taken for gone, it would
    be started a second time (two etcds racing for one member's ports)."""
    if pid is None or not is_alive(pid):
        return None
    key = namespaces.ns_key_of_kind(netns, "net")
    if key is not None and namespaces.ns_key(f"/proc/{pid}/ns/net") == key:
        return pid
    return pid if _still_entering(pid) else None


def _still_entering(pid: int) -> bool:
    """Whether ``pid`` is an ``nsenter`` of ours that has not switched namespaces yet."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return argv0.endswith(b"nsenter")


def describe(pid: int) -> str:
    """``pid`` and its command line, for messages."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return str(pid)
    command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return f"{pid} ({command[:80]})" if command else str(pid)


def pids_in_namespaces(keys: Collection[tuple[int, int]]) -> list[int]:
    """Live processes whose network or mount namespace has one of ``keys`` (dev, inode).

    Our own process is never listed.
    """
    if not keys:
        return []
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        for kind in ("net", "mnt"):
            try:
                st = os.stat(f"/proc/{entry}/ns/{kind}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in keys:
                if is_alive(int(entry)):
                    found.append(int(entry))
                break
    return sorted(found)


def send(pids: Iterable[int], sig: int) -> None:
    """Send ``sig`` to each pid; pids already gone are skipped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for ``pids`` to end; return those still alive."""
    remaining = [pid for pid in pids if is_alive(pid)]
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        remaining = [pid for pid in remaining if is_alive(pid)]
    return remaining


def terminate(pids: Iterable[int], grace: float, kill_wait: float = 10.0) -> list[int]:
    """SIGTERM ``pids``, SIGKILL what survives ``grace`` seconds, and wait up to
    ``kill_wait`` seconds more. Returns the pids still alive after all that."""
    pids = [pid for pid in pids if is_alive(pid)]
    send(pids, signal.SIGTERM)
    survivors = wait_gone(pids, grace)
    send(survivors, signal.SIGKILL)
    return wait_gone(survivors, kill_wait)


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            data = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
