"""Fencing: making sure a server that lost its lease has nothing left in service.

Three layers, from the agent's own to the one that needs no agent at all:

1. The agent removes its hierarchies when its lease can no longer be trusted (``lease``).
2. Every resource's processes run in their own cgroup (``<cgroup2>/vigil/<server>/<tag>``),
   so "remove everything" can kill them all, whatever the kit's scripts did.
3. The **fence guard**, a small separate process per server (``fenceguard``), reads the
   *fence plan* this module writes after every lease renewal: a deadline (half a safety
   margin after the agent's own trust limit, on the system-wide monotonic clock: the agent
   gets that long to remove gracefully, the guard then escalates) and what to undo. If it
   passes without a renewal (the agent was SIGKILLed, frozen by SIGSTOP, or cut off from
   the store), the guard kills the cgroups, deletes the addresses and unmounts the
   volumes, before the lease can expire anywhere else.

   Failsafe (``vigil.agent.failsafe``): the agent moves the deadline on after a failsafe
   round every other agent confirmed, as after a renewal. The plan also carries the
   deadline the last *renewal* gave (``renewed``) and ``failsafe_limit``; the guard never
   waits past ``renewed + failsafe_limit``, whatever ``deadline`` says. A frozen or dead
   agent neither renews nor runs rounds: the guard fences it as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vigil.agent.realtime import DEFAULT_PRIORITY
from vigil.kits.cgroup import kill_cgroup

log = logging.getLogger("vigil.agent.fencing")

PLAN_FILE = "fence.json"
GUARD_PID_FILE = "fence-guard.pid"


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted here (None when it is not)."""
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        return None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


class Cgroups:
    """The cgroups of one server's resources: ``<cgroup2>/vigil/<server>-<id>/<tag>``.

    ``id`` is derived from the agent's state directory, so two clusters on one host (labs
    in tests, above all) never share a cgroup: a fence in one must not kill the other's."""

    def __init__(self, server: str, state_dir: Path, root: Path | None = None) -> None:
        base = root if root is not None else cgroup2_root()
        scope = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:10]
        self.base = base / "vigil" / f"{server}-{scope}" if base is not None else None

    def path(self, tag: str) -> Path | None:
        """The resource's cgroup, created if missing (None without cgroup v2)."""
        if self.base is None:
            return None
        path = self.base / tag
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning(
                "no cgroup for %s (%s): its processes cannot be fenced as a group", tag, exc
            )
            return None
        return path

    def kill(self, tag: str) -> list[int]:
        """Kill every process left in the resource's cgroup; the pids it found."""
        return kill_cgroup(self.base / tag) if self.base is not None else []

    def remove_all(self) -> list[int]:
        """Kill what is left in every resource cgroup of this server and remove them all
        (an orderly stop, or a lab torn down). The pids that were still there."""
        if self.base is None or not self.base.is_dir():
            return []
        pids = [
            pid for child in self.base.iterdir() if child.is_dir() for pid in kill_cgroup(child)
        ]
        with contextlib.suppress(OSError):
            self.base.rmdir()
            self.base.parent.rmdir()  # the shared "vigil" level, when no cluster uses it
        return pids


@dataclass
class FencePlan:
    """What the guard reads. ``mode``: active (fence at ``due``), maintenance (never
    fence: resources are meant to keep running), stopped (the guard exits)."""

    server: str
    agent_pid: int
    mode: str = "active"
    deadline: float = 0.0  # time.monotonic() value
    cgroups: list[str] = field(default_factory=list)
    addresses: list[tuple[str, int, str]] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    #: the deadline the last successful renewal gave (0: as ``deadline``), and how far past
    #: it a failsafe may move ``deadline`` (``vigil.agent.failsafe``)
    renewed: float = 0.0
    failsafe_limit: float = 0.0
    #: the embedded store's database file ("" on etcd): an agent past its deadline that
    #: keeps its write lock is ended by the guard (``vigil.store.locks``)
    store_file: str = ""

    @property
    def due(self) -> float:
        """When the guard fences: ``deadline``, but never later than the last renewal's
        deadline plus ``failsafe_limit``."""
        if not self.renewed:
            return self.deadline
        return min(self.deadline, self.renewed + self.failsafe_limit)

    @property
    def failsafe(self) -> bool:
        """Whether a failsafe holds the deadline past the last renewal's."""
        return bool(self.renewed) and self.deadline > self.renewed

    def write(self, directory: Path) -> None:
        """Atomically replace the plan (the guard never reads half a file)."""
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (PLAN_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(directory / PLAN_FILE)

    @classmethod
    def read(cls, directory: Path) -> FencePlan | None:
        try:
            data = json.loads((directory / PLAN_FILE).read_text())
            data["addresses"] = [tuple(a) for a in data.get("addresses", [])]
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None


def ensure_guard(directory: Path, priority: int = DEFAULT_PRIORITY) -> int:
    """Start the server's fence guard unless it runs; its pid. It is a separate session so
    that it outlives the agent (that is its purpose); ``priority``: its SCHED_RR priority
    (``vigil.agent.realtime``)."""
    pid_file = directory / GUARD_PID_FILE
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text())
        if _alive(pid):
            return pid
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "fence-guard.log").open("ab") as out:
        guard = subprocess.Popen(
            [sys.executable, "-m", "vigil.agent.fenceguard", str(directory), str(priority)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    pid_file.write_text(str(guard.pid))
    log.info("fence guard started (pid %d)", guard.pid)
    return guard.pid


def process_state(pid: int) -> str:
    """The process's state letter from ``/proc`` (R, S, T, Z, ...); "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return process_state(pid) not in ("", "Z") and b"vigil.agent.fenceguard" in cmdline
