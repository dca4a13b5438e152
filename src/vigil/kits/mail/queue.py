"""Moving Postfix's queue (the seed's SetSMTPQueuePath): stop Postfix, move the queue with
its owners and modes, set ``queue_directory``, check, start Postfix again.

The move is a rename when the new place is on the same filesystem, else a copy (``cp -a``
keeps owners, modes and the queue's named pipes) checked file by file before the old queue
is removed: a queue is acknowledged mail, and must never be half-moved. Postfix is stopped
for the move only if it ran, and started again afterwards in the cgroup given (the mail
resource's, when vigil protects it).
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import shutil
import time
from pathlib import Path

from vigil.errors import KitError, Severity
from vigil.kits.mail import config
from vigil.kits.mail.services import live_pid
from vigil.kits.process import Logger, pid_alive, run_command

__all__ = ["path_problems", "relocate_queue"]

#: seconds Postfix gets to stop before the move
STOP_WAIT = 60.0


def path_problems(new: str, old: str) -> list[str]:
    """Why ``new`` cannot take the queue now in ``old`` (nothing is changed)."""
    if not new.startswith("/") or posixpath.normpath(new) != new:
        return [f"{new!r}: give an absolute path in canonical form (like /srv/mail/spool)"]
    if new == old:
        return [f"the queue is in {old} already"]
    if new.startswith(old.rstrip("/") + "/") or old.startswith(new.rstrip("/") + "/"):
        return [f"{new} and the current queue {old} are inside one another"]
    if not os.path.isdir(posixpath.dirname(new)):
        return [f"{posixpath.dirname(new)} does not exist: create it first"]
    if os.path.exists(new) and (not os.path.isdir(new) or os.listdir(new)):
        return [f"{new} exists and is not an empty directory"]
    return []


async def relocate_queue(
    config_dir: str, new: str, log: Logger, *, cgroup: Path | None = None
) -> str:
    """Move the queue of the Postfix at ``config_dir`` to ``new``; returns where it was.
    ``KitError`` (nothing changed) on a refused path; on a failure half-way, the message
    says where the queue is."""
    old = (await config.postconf(config_dir, ("queue_directory",)))["queue_directory"]
    problems = await asyncio.to_thread(path_problems, new, old)
    if problems:
        raise KitError(problems[0], Severity.FATAL)
    pid = _master_pid(old)
    running = pid is not None and pid_alive(pid)
    if pid is not None and running:
        await _postfix(config_dir, "stop", log, cgroup)
        await _gone(pid)
    await asyncio.to_thread(_move, old, new)
    await _postconf(config_dir, f"queue_directory = {new}", log)
    await _postfix(config_dir, "check", log, None)
    if running:
        await _postfix(config_dir, "start", log, cgroup)
    log.info("moved the Postfix queue of %s from %s to %s", config_dir, old, new)
    return old


def _move(old: str, new: str) -> None:
    if os.path.isdir(new):
        os.rmdir(new)  # an empty directory (checked): the queue takes its place
    if os.stat(old).st_dev == os.stat(posixpath.dirname(new)).st_dev:
        os.rename(old, new)
        return
    done = os.spawnvp(os.P_WAIT, "cp", ["cp", "-a", old, new])
    if done != 0:
        raise KitError(f"copying the queue {old} to {new} failed (cp exit {done}); the "
                       f"queue is still in {old}", Severity.HARD)  # fmt: skip
    missing = _files(old) - _files(new)
    if missing:
        raise KitError(f"the copy of {old} in {new} lacks {sorted(missing)[:3]}; the queue is "
                       f"still in {old}", Severity.HARD)  # fmt: skip
    shutil.rmtree(old)


def _files(root: str) -> set[str]:
    return {
        os.path.relpath(os.path.join(path, name), root)
        for path, _, names in os.walk(root)
        for name in names
    }


def _master_pid(queue: str) -> int | None:
    return live_pid(Path(queue, "pid", "master.pid"), "master")


async def _gone(pid: int) -> None:
    deadline = time.monotonic() + STOP_WAIT
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise KitError(f"Postfix (pid {pid}) did not stop; the queue was not moved")
        await asyncio.sleep(0.1)


async def _postfix(config_dir: str, verb: str, log: Logger, cgroup: Path | None) -> None:
    # output to /dev/null, not to a pipe: a daemon started would hold the pipe open
    command = [
        "/bin/sh",
        "-c",
        'exec "$@" >/dev/null 2>&1',
        "sh",
        "postfix",
        "-c",
        config_dir,
        verb,
    ]
    result = await run_command(command, log=log, timeout=120, cgroup=cgroup, name=f"postfix {verb}")
    if not result.ok:
        raise KitError(f"postfix {verb} {result.describe_exit()} (see Postfix's log)")


async def _postconf(config_dir: str, setting: str, log: Logger) -> None:
    result = await run_command(["postconf", "-c", config_dir, "-e", setting], log=log, timeout=30)
    if not result.ok:
        raise KitError(f"postconf -e '{setting}' failed: {result.last_line}")
