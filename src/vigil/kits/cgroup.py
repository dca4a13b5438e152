"""The cgroup of a resource: every process it started, however it detached, killed at once.

Shared by the agent (after a remove, at an orderly stop), the fence guard (which must stay
tiny: standard library only, as this module is) and kits (``Kit.escalate``). cgroup v2:
``cgroup.kill`` where the kernel has it, SIGKILL of each process otherwise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def cgroup_pids(path: Path) -> list[int]:
    """The processes now in a cgroup (none when it does not exist)."""
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def signal_cgroup(path: Path) -> list[int]:
    """SIGKILL every process of a cgroup now, without waiting for them to go; the pids
    that were there (read first: a killed process leaves ``cgroup.procs`` at once)."""
    pids = cgroup_pids(path)
    if pids:
        try:
            (path / "cgroup.kill").write_text("1")
        except OSError:
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
    return pids


def reap_cgroup(path: Path, wait: float = 2.0) -> bool:
    """Wait until a signalled cgroup is empty, then remove it; False if it is still not
    empty after ``wait`` seconds (a process stuck in the kernel)."""
    deadline = time.monotonic() + wait
    while cgroup_pids(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    empty = not cgroup_pids(path)
    with contextlib.suppress(OSError):
        path.rmdir()
    return empty


def kill_cgroup(path: Path, wait: float = 2.0) -> list[int]:
    """SIGKILL every process of a cgroup (``cgroup.kill`` where the kernel has it), wait
    until it is empty, and remove it. Returns the pids that were there."""
    pids = signal_cgroup(path)
    reap_cgroup(path, wait)
    return pids


def describe_killed(pids: list[int]) -> list[str]:
    """What an escalation reports of the processes it killed."""
    return [f"killed {len(pids)} process(es) of the resource's cgroup: {pids}"] if pids else []
