"""The kit's side of the mirror processes: their configuration, starting, stopping and
finding them, and reading what they say (``status.json``), on the server the kit runs on.

A process counts as running while the pid its status names is alive and is a mirror
daemon; a status older than ``STALE`` seconds is not believed (a process that stopped
writing it is stuck).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vigil.errors import KitError, Severity
from vigil.kits.base import KitContext
from vigil.kits.mirror import control
from vigil.kits.mirror.config import DaemonConfig, Peer
from vigil.kits.mirror.meta import MirrorPaths, status_age
from vigil.kits.mirror.properties import MirrorProperties
from vigil.kits.process import Logger, pid_alive, run_command

__all__ = [
    "STALE",
    "daemon_config",
    "running",
    "start",
    "stop",
    "until",
]

#: seconds after which a status is not believed
STALE = 5.0
#: seconds a process gets to start (its status says serving) or to stop
START_WAIT = 30.0
STOP_WAIT = 15.0


def daemon_config(
    ctx: KitContext[MirrorProperties], props: MirrorProperties, role: str
) -> DaemonConfig:
    """What the process of ``role`` on ``ctx.server`` is told."""
    if not props.secret or not props.size:
        raise KitError(
            f"mirror {ctx.tag}: its secret and size were not recorded at create; delete and "
            "create it again",
            Severity.FATAL,
        )
    peers = []
    for server, values in ctx.instances.items():
        if server == ctx.server or "address" not in values:
            continue
        peers.append(Peer(server=server, address=str(values["address"]), port=props.port))
    return DaemonConfig(
        role=role,
        tag=ctx.tag,
        server=ctx.server,
        disk=props.disk,
        size=props.size,
        region_size=props.region_size,
        mode=props.mode.value,
        secret=props.secret,
        bandwidth=props.bandwidth_mbps * 1e6,
        compression=props.compression,
        queue_limit=props.async_queue_mb * 2**20,
        target_timeout=props.target_timeout,
        address=props.address,
        port=props.port,
        peers=peers,
        root=str(MirrorPaths.of(ctx.state_dir).root),
    )


def _is_daemon(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return pid_alive(pid) and b"vigil.kits.mirror.daemon" in cmdline


def running(paths: MirrorPaths, role: str | None = None) -> dict[str, Any] | None:
    """The status of the mirror process running here (of ``role``), or None."""
    status = paths.read_status()
    if status is None or (role is not None and status.get("role") != role):
        return None
    pid = status.get("pid")
    if not isinstance(pid, int) or not _is_daemon(pid) or status.get("stopped"):
        return None
    if status.get("role") == "source" and not status.get("serving"):
        return None
    return status


def fresh(status: dict[str, Any]) -> bool:
    return status_age(status) < STALE


def log_tail(paths: MirrorPaths, lines: int = 3) -> str:
    """The last lines of the mirror's log (what a process that failed said)."""
    try:
        text = paths.log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.split(" ", 3)[-1] for line in text[-lines:])


async def start(
    ctx: KitContext[MirrorProperties], config: DaemonConfig, log: Logger, cgroup: Path | None = None
) -> dict[str, Any]:
    """Start the process of ``config.role`` (its own session; in ``cgroup``) and wait
    until it runs; its status. ``KitError`` (HARD) with what it logged when it does not."""
    paths = MirrorPaths(Path(config.root))
    config.write(paths.config(config.role))
    begun = time.time()
    argv = ["setsid", "-f", sys.executable, "-m", "vigil.kits.mirror.daemon", config.role]
    result = await run_command(
        [*argv, str(paths.config(config.role))], log=log, timeout=10, cgroup=cgroup
    )
    if not result.ok:
        raise KitError(f"mirror {ctx.tag}: cannot start its {config.role}: {result.last_line}")
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        status = running(paths, config.role)
        if status is not None and float(status.get("time", 0)) >= begun - 1:
            return status
        await asyncio.sleep(0.05)
        if _gave_up(paths, begun):
            break
    raise KitError(
        f"mirror {ctx.tag} on {ctx.server}: its {config.role} did not start: "
        f"{log_tail(paths) or 'see ' + str(paths.log)}",
        Severity.HARD,
    )


def _gave_up(paths: MirrorPaths, since: float) -> bool:
    """Whether the log shows a process of this mirror that ended after ``since``."""
    with contextlib.suppress(OSError):
        if paths.log.stat().st_mtime >= since:
            tail = paths.log.read_text(errors="replace")[-2000:]
            return " ERROR " in tail.splitlines()[-1] if tail.strip() else False
    return False


async def stop(paths: MirrorPaths, log: Logger, wait: float = STOP_WAIT) -> bool:
    """Stop the mirror process running here (cleanly; SIGKILL after ``wait``). True when
    one was running."""
    status = paths.read_status()
    pid = status.get("pid") if status else None
    if not isinstance(pid, int) or not _is_daemon(pid):
        _drop_stale_socket(paths)
        return False
    with contextlib.suppress(control.ControlUnavailable):
        await asyncio.to_thread(control.ask, paths.socket, {"command": "stop"}, 5.0)
    if not await until(lambda: not _is_daemon(pid), wait):
        log.warning("mirror process %d did not stop in %gs: SIGKILL", pid, wait)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await until(lambda: not _is_daemon(pid), 5.0)
    _drop_stale_socket(paths)
    return True


def _drop_stale_socket(paths: MirrorPaths) -> None:
    """Remove the control socket a killed mirror process left in ``SOCKET_DIR`` (outside
    the mirror's directory: deleting the mirror would not take it). Called once no mirror
    process of this directory runs (under the kit's lock: none is starting either)."""
    with contextlib.suppress(OSError):
        paths.socket.unlink(missing_ok=True)


async def until(condition: Callable[[], bool], seconds: float, poll: float = 0.05) -> bool:
    """Wait up to ``seconds`` for ``condition``; whether it holds."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        await asyncio.sleep(poll)
    return condition()
