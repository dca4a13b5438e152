"""Processes that hold a filesystem busy, and stopping them (what ``fuser -m`` does).

A process holds a filesystem when one of its open files, its working directory, its root
directory, its program or a file it maps lies on it. Files are matched by device number
(``stat`` through ``/proc/<pid>/fd/*`` and friends follows the kernel's own link to the
file), so the scan sees every process of the host's pid namespace whatever its mount
namespace, and never opens a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

from vigil.kits.process import Logger, pid_alive

__all__ = ["KILL_WAIT", "Holder", "describe_holders", "find_holders", "stop_holders"]

#: seconds to wait for holders to be gone after SIGKILL
KILL_WAIT = 5.0
_POLL = 0.05
_MAX_COMMAND = 80
_MAX_PATHS = 3


@dataclass(frozen=True)
class Holder:
    """One process holding the filesystem, and how."""

    pid: int
    command: str
    uses: tuple[str, ...]

    def describe(self) -> str:
        """``pid 1234 (sleep 600): open file /srv/data/log``."""
        return f"pid {self.pid} ({self.command}): {', '.join(self.uses)}"


def describe_holders(holders: Iterable[Holder]) -> str:
    """The holders, one after the other, for a message."""
    return "; ".join(h.describe() for h in holders)


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read()
    except OSError:
        raw = b""
    command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    if not command:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
                command = f"[{comm.read().strip()}]"
        except OSError:
            command = "?"
    return command if len(command) <= _MAX_COMMAND else command[: _MAX_COMMAND - 3] + "..."


def _on_device(path: str, device: int) -> bool:
    try:
        return os.stat(path).st_dev == device
    except OSError:
        return False


def _open_files(pid: int, device: int) -> list[str]:
    found = []
    try:
        entries = list(os.scandir(f"/proc/{pid}/fd"))
    except OSError:
        return []
    for entry in entries:
        if _on_device(entry.path, device):
            try:
                found.append(os.readlink(entry.path))
            except OSError:
                found.append(f"fd {entry.name}")
    return found


def _maps_device(pid: int, device: int) -> bool:
    wanted = f"{os.major(device):02x}:{os.minor(device):02x}"
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) >= 5 and fields[3] == wanted and fields[4] != "0":
                    return True
    except OSError:
        return False
    return False


def _uses(pid: int, device: int) -> list[str]:
    uses = []
    files = _open_files(pid, device)
    if files:
        shown = ", ".join(files[:_MAX_PATHS]) + (" ..." if len(files) > _MAX_PATHS else "")
        uses.append(f"open file{'s' if len(files) > 1 else ''} {shown}")
    for link, what in (("cwd", "working directory"), ("root", "root directory")):
        if _on_device(f"/proc/{pid}/{link}", device):
            uses.append(what)
    if _on_device(f"/proc/{pid}/exe", device):
        uses.append("program")
    elif _maps_device(pid, device):
        uses.append("mapped file")
    return uses


def find_holders(device: int) -> list[Holder]:
    """Every live process holding files on the filesystem with device number ``device``,
    by pid. Processes that vanish during the scan are skipped."""
    holders = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        uses = _uses(pid, device)
        if uses and pid_alive(pid):
            holders.append(Holder(pid, _command(pid), tuple(uses)))
    return sorted(holders, key=lambda h: h.pid)


def _signal(pids: Iterable[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


async def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        await asyncio.sleep(_POLL)
        alive = [p for p in alive if pid_alive(p)]
    return alive


async def stop_holders(holders: Iterable[Holder], grace: float, log: Logger) -> list[int]:
    """SIGTERM the holders, SIGKILL those still there after ``grace`` seconds (at once
    when ``grace`` is 0), wait up to ``KILL_WAIT`` seconds more; the pids still alive
    after that (stuck in the kernel). Never signals this process itself (it is left in
    the answer if it holds files)."""
    me = os.getpid()
    holders = list(holders)
    targets = [h for h in holders if h.pid != me]
    pids = [h.pid for h in targets]
    for holder in targets:
        log.warning("%s %s", "stopping" if grace > 0 else "killing", holder.describe())
    survivors = pids
    if grace > 0:
        _signal(pids, signal.SIGTERM)
        survivors = await _wait_gone(pids, grace)
    if survivors:
        if grace > 0:
            log.warning(
                "pids %s still hold the volume %gs after SIGTERM: SIGKILL", survivors, grace
            )
        _signal(survivors, signal.SIGKILL)
        survivors = await _wait_gone(survivors, KILL_WAIT)
    return survivors + ([me] if any(h.pid == me for h in holders) else [])
