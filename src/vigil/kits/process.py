"""Running a command for a kit: the one helper every kit uses (``run_command``).

What it guarantees:

* The command runs in **its own process group** (``start_new_session=True``), with stdin
  from ``/dev/null`` and stdout and stderr merged into one pipe.
* Every line the command prints is written to the kit's logger (``"<name>: <line>"`` at
  INFO), so command output ends up in the agent log; the last ``MAX_OUTPUT_LINES`` lines
  are also returned in ``CommandResult.output``.
* When the command overruns ``timeout``, or when the calling task is **cancelled** (the
  agent enforces a kit action's timeout by cancelling it), the command's whole process
  group is killed: SIGTERM, ``KILL_GRACE`` seconds for it to go, then SIGKILL; the helper
  waits until no live process is left in the group, then raises ``KitTimeout`` (timeout)
  or re-raises ``asyncio.CancelledError`` (cancellation). Killing takes at most
  ``CLEANUP_ALLOWANCE`` seconds; a repeated cancellation does not cut it short.
* It returns when the command **exits**, not when its output pipe is closed: a daemon the
  command started may have inherited the pipe and hold it open for ever. Output still in
  the pipe is read for at most ``OUTPUT_DRAIN`` seconds after the exit, then the pipe is
  closed (the daemon's later writes to it fail with EPIPE: a restore script should
  redirect its daemon's output, e.g. ``mydaemon >>/var/log/mydaemon.log 2>&1``).

What it does not do: kill anything once the command has exited by itself. A long-running
service is started by a restore script that leaves the process group (a daemon that
double-forks or calls ``setsid``; ``setsid mydaemon`` from a script): that is the intended
way, and such a daemon survives both the command's exit and a kill of its group. A
process merely put in the background (``mydaemon &``) stays in the group, so it is
killed if the command is later timed out or cancelled.

A command that cannot be started (no such executable, not executable) is reported like a
shell does: return code 127 or 126 with the reason as output; it does not raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vigil.aio import within
from vigil.errors import KitTimeout

__all__ = [
    "CLEANUP_ALLOWANCE",
    "KILL_GRACE",
    "MAX_OUTPUT_LINES",
    "OUTPUT_DRAIN",
    "CommandResult",
    "Logger",
    "group_members",
    "pid_alive",
    "run_command",
]

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]

#: seconds between SIGTERM and SIGKILL when a command's process group is killed
KILL_GRACE = 2.0
#: seconds to wait for the group to be gone after SIGKILL before giving up (logged)
KILL_WAIT = 2.0
#: seconds to keep reading output after the command exited (a daemon may hold the pipe)
OUTPUT_DRAIN = 0.5
#: upper bound of the time ``run_command`` may take beyond its timeout or cancellation
CLEANUP_ALLOWANCE = KILL_GRACE + KILL_WAIT + OUTPUT_DRAIN + 0.5
#: how many of the last output lines ``CommandResult.output`` keeps
MAX_OUTPUT_LINES = 1000

_POLL = 0.05
_READ_SIZE = 65536


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: its return code (negative: killed by that signal, as in
    ``subprocess``) and its combined stdout/stderr (the last ``MAX_OUTPUT_LINES`` lines)."""

    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def last_line(self) -> str:
        """The last non-blank output line ("" when there is none), for short messages."""
        for line in reversed(self.output.splitlines()):
            if line.strip():
                return line.strip()
        return ""

    def describe_exit(self) -> str:
        """ "exited with code 3" or "killed by signal 9 (SIGKILL)"."""
        if self.returncode >= 0:
            return f"exited with code {self.returncode}"
        signum = -self.returncode
        try:
            signame = signal.Signals(signum).name
        except ValueError:
            signame = "unknown"
        return f"killed by signal {signum} ({signame})"


async def run_command(
    argv: Sequence[str] | str,
    *,
    log: Logger,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    shell: bool = False,
    name: str | None = None,
    cgroup: Path | None = None,
) -> CommandResult:
    """Run a command to completion in its own process group and return how it ended.

    ``argv`` is an argument list, or a string: a shell command line when ``shell`` is true
    (run by ``/bin/sh -c``), else split like a shell would (``shlex.split``). ``env`` holds
    variables **added to** the agent's environment (overriding same-named ones). ``name``
    prefixes each logged output line (default: the executable's base name).

    Raises ``KitTimeout`` when ``timeout`` (seconds) is exceeded and re-raises
    ``asyncio.CancelledError`` when cancelled, in both cases only after the command's
    process group has been killed (see the module docstring). Never raises for a non-zero
    exit; the caller decides what a return code means.

    ``cgroup`` (a cgroup v2 directory) puts the command, and every process it starts
    (daemons included, however they detach), into that cgroup: the fence guard can then
    stop all of a resource's processes at once.
    """
    args = _argv(argv, shell)
    label = name or _label(args, shell)
    if cgroup is not None:
        # the shell joins the cgroup, then becomes the command: nothing runs outside it
        args = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), *args]
    full_env = {**os.environ, **env} if env is not None else None
    read_fd, write_fd = os.pipe()
    try:
        transport, reader = await _open_reader(read_fd)  # owns read_fd from here on
    except BaseException:
        os.close(write_fd)
        raise
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            return _not_started(args, cwd, exc, label, log)
        finally:
            os.close(write_fd)  # the child has its copy: EOF comes when its side closes
        log.debug("%s: started %s (pid %d)", label, shlex.join(args), proc.pid)
        lines: deque[str] = deque(maxlen=MAX_OUTPUT_LINES)
        returncode = await _wait(proc, reader, lines, label, log, timeout)
    finally:
        transport.close()
    result = CommandResult(returncode, "\n".join(lines))
    log.debug("%s: %s", label, result.describe_exit())
    return result


async def _wait(
    proc: asyncio.subprocess.Process,
    reader: asyncio.StreamReader,
    lines: deque[str],
    label: str,
    log: Logger,
    seconds: float | None,
) -> int:
    """Wait for the command's exit while logging its output; on timeout or cancellation,
    kill its process group first."""
    pump = asyncio.ensure_future(_pump(reader, lines, label, log))
    try:
        try:
            async with asyncio.timeout(seconds):
                returncode = await proc.wait()
        except TimeoutError:
            await _kill_group_uninterruptible(proc, label, log)
            await _drain(pump)
            log.warning("%s: timed out after %gs, process group killed", label, seconds)
            raise KitTimeout(f"{label} timed out after {seconds:g}s") from None
        except BaseException:
            await _kill_group_uninterruptible(proc, label, log)
            await _drain(pump)
            log.warning("%s: cancelled, process group killed", label)
            raise
        await _drain(pump)
        return returncode
    finally:
        pump.cancel()


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie (an exited process its parent
    has not reaped yet: on these servers PID 1 reaps orphans slowly)."""
    state = _proc_state(pid)
    return state is not None and state[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of process group ``pgid``, from ``/proc``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        state = _proc_state(int(entry.name))
        if state is not None and state[1] == pgid and state[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


# --- helpers --------------------------------------------------------------------------


def _argv(argv: Sequence[str] | str, shell: bool) -> list[str]:
    if shell:
        line = argv if isinstance(argv, str) else shlex.join(argv)
        return ["/bin/sh", "-c", line]
    args = shlex.split(argv) if isinstance(argv, str) else list(argv)
    if not args:
        raise ValueError("run_command: empty command")
    return args


def _label(args: list[str], shell: bool) -> str:
    words = args[2].split() if shell else args[:1]
    return Path(words[0]).name if words else "command"


def _not_started(
    args: list[str], cwd: str | os.PathLike[str] | None, exc: OSError, label: str, log: Logger
) -> CommandResult:
    code = 127 if isinstance(exc, FileNotFoundError) else 126
    where = f" in {cwd}" if cwd is not None and str(exc.filename) == os.fspath(cwd) else ""
    message = f"cannot run {args[0]}{where}: {exc.strerror or exc}"
    log.info("%s: %s", label, message)
    return CommandResult(code, message)


async def _open_reader(fd: int) -> tuple[asyncio.ReadTransport, asyncio.StreamReader]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_READ_SIZE * 4, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
    except BaseException:
        pipe.close()
        raise
    return transport, reader


async def _pump(reader: asyncio.StreamReader, lines: deque[str], label: str, log: Logger) -> None:
    """Read the pipe until EOF, logging and keeping each line; a final partial line is
    flushed on EOF or cancellation."""
    pending = b""
    try:
        while chunk := await reader.read(_READ_SIZE):
            pending += chunk
            *complete, pending = pending.split(b"\n")
            if len(pending) > _READ_SIZE:  # a very long line: log it in pieces
                complete.append(pending)
                pending = b""
            for raw in complete:
                _emit(raw, lines, label, log)
    finally:
        if pending:
            _emit(pending, lines, label, log)


def _emit(raw: bytes, lines: deque[str], label: str, log: Logger) -> None:
    line = raw.decode(errors="replace").rstrip("\r")
    lines.append(line)
    log.info("%s: %s", label, line)


async def _drain(pump: asyncio.Future[None]) -> None:
    """Let the output pump finish for at most ``OUTPUT_DRAIN`` seconds, then stop it."""
    # asyncio.wait leaves the pump's outcome alone and lets the caller's own cancellation
    # through (suppressing CancelledError here swallowed it: an agent told to stop went on)
    await asyncio.wait((pump,), timeout=OUTPUT_DRAIN)
    if not pump.done():
        pump.cancel()
        await asyncio.wait((pump,))


async def _kill_group_uninterruptible(
    proc: asyncio.subprocess.Process, label: str, log: Logger
) -> None:
    """Kill the group to the end even if the caller is cancelled again meanwhile (the
    repeated cancellation is delivered by the caller's own ``raise`` afterwards)."""
    task = asyncio.ensure_future(_kill_group(proc, label, log))
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    task.result()


async def _kill_group(proc: asyncio.subprocess.Process, label: str, log: Logger) -> None:
    pgid = proc.pid  # the leader of a new session: its pid is the group's id
    _signal_group(pgid, signal.SIGTERM)
    if not await _group_gone(proc, pgid, KILL_GRACE):
        log.warning("%s: still running %gs after SIGTERM, sending SIGKILL", label, KILL_GRACE)
        _signal_group(pgid, signal.SIGKILL)
        if not await _group_gone(proc, pgid, KILL_WAIT):
            log.error(
                "%s: processes %s of group %d survived SIGKILL (stuck in the kernel?)",
                label,
                group_members(pgid),
                pgid,
            )
    with contextlib.suppress(TimeoutError):
        await within(proc.wait(), KILL_WAIT)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


async def _group_gone(proc: asyncio.subprocess.Process, pgid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while True:
        if proc.returncode is not None and not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL)


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of ``pid`` from ``/proc/<pid>/stat``, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
    fields = data[data.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[2])
    except (IndexError, ValueError):
        return None
