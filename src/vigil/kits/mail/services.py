"""The protected services: Postfix, Dovecot and the optional ones, started and stopped
within ``max_wait`` each (the seed's MAXWAIT), and checked.

Start order: Dovecot (LMTP must accept what Postfix delivers), the optional services in
the order given (filters and milters Postfix talks to), Postfix last (it accepts mail
only when everything behind it is up). Stop order: the reverse. A service that is not up
within ``max_wait`` is a failure whose message carries the tail of its log.

Every command runs in the resource's cgroup (``ctx.cgroup``): the daemons it starts stay
there however they detach, so the fence guard can stop them all. A service found running
outside the cgroup (started by hand before it was protected) is adopted into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from vigil.errors import KitError, Severity
from vigil.kits.base import Check, KitContext
from vigil.kits.mail.probes import greeting
from vigil.kits.mail.properties import MailProperties, OptionalService
from vigil.kits.process import pid_alive, run_command

__all__ = ["KNOWN_SERVICES", "Endpoint", "Service", "live_pid", "services_in_start_order"]

#: seconds between two looks at a service that is starting or stopping
POLL = 0.1
#: seconds one start/stop/check command of an optional service may run
COMMAND_TIMEOUT = 60.0
#: lines of a service's log quoted in a failure
LOG_LINES = 12
#: a check command runs every few seconds: its output stays out of the agent log
_CHECK_LOG = logging.getLogger("vigil.kit.mail.check")
_CHECK_LOG.setLevel(logging.WARNING)

#: optional services vigil knows by name (Debian's packages): start, stop, check
KNOWN_SERVICES: dict[str, tuple[str, str, str]] = {
    "opendkim": (
        "mkdir -p /run/opendkim && opendkim -x /etc/opendkim.conf -P /run/opendkim/opendkim.pid",
        "kill $(cat /run/opendkim/opendkim.pid)",
        "kill -0 $(cat /run/opendkim/opendkim.pid)",
    ),
    "rspamd": (
        "mkdir -p /run/rspamd && rspamd -c /etc/rspamd/rspamd.conf",
        "kill $(cat /run/rspamd/rspamd.pid)",
        "kill -0 $(cat /run/rspamd/rspamd.pid)",
    ),
    "clamav-daemon": (
        "mkdir -p /run/clamav && clamd",
        "kill $(cat /run/clamav/clamd.pid)",
        "kill -0 $(cat /run/clamav/clamd.pid)",
    ),
}


@dataclass(frozen=True)
class Endpoint:
    """Where the checks find the service: the protected address and the ports."""

    address: str
    smtp_port: int = 25
    imap_port: int = 143
    pop3_port: int = 110
    lmtp: str = ""  # Postfix's virtual_transport when it is LMTP (lmtp:unix:PATH, lmtp:inet:H:P)


class Service:
    """One protected service. Subclasses implement ``pid``/``_start``/``_stop``/``_listening``."""

    name = "service"

    def __init__(self, props: MailProperties, endpoint: Endpoint) -> None:
        self.props = props
        self.endpoint = endpoint

    # --- what subclasses say -----------------------------------------------------------

    def pid(self) -> int | None:
        """The main process, when it runs (None for services known only by commands)."""
        return None

    def log_file(self) -> str:
        return ""

    async def running(self, ctx: KitContext[MailProperties]) -> bool:
        pid = self.pid()
        return pid is not None and pid_alive(pid)

    async def listening(self) -> Check:
        """Its listeners answer as they should (running), or why not (failed)."""
        return Check.running()

    async def _start(self, ctx: KitContext[MailProperties]) -> None:
        raise NotImplementedError

    async def _stop(self, ctx: KitContext[MailProperties], force: bool) -> None:
        raise NotImplementedError

    # --- the contract the kit uses -------------------------------------------------------

    async def start(self, ctx: KitContext[MailProperties]) -> None:
        """Start it (adopt it when it runs already) and wait until it answers; KitError
        HARD with the tail of its log when it is not up within ``max_wait``."""
        if await self.running(ctx):
            self.adopt(ctx)
        else:
            ctx.log.info("%s: starting %s", ctx.tag, self.name)
            await self._start(ctx)
        began = time.monotonic()
        why = await self._wait(ctx, lambda: self._up(ctx), self.props.max_wait)
        if why:
            raise KitError(
                f"{self.name} did not start within max_wait ({self.props.max_wait:g}s): "
                f"{why}{self._log_tail()}",
                Severity.HARD,
            )
        ctx.log.info("%s: %s is up (%.2fs)", ctx.tag, self.name, time.monotonic() - began)

    async def stop(self, ctx: KitContext[MailProperties]) -> None:
        """Stop it and wait until it is gone; after ``max_wait``, force it (SIGKILL).
        Idempotent. KitError HARD when even that fails."""
        if not await self.running(ctx):
            return
        ctx.log.info("%s: stopping %s", ctx.tag, self.name)
        await self._stop(ctx, force=False)
        why = await self._wait(ctx, lambda: self._down(ctx), self.props.max_wait)
        if not why:
            return
        ctx.log.warning(
            "%s: %s still running after %gs: forcing it", ctx.tag, self.name, self.props.max_wait
        )
        await self._stop(ctx, force=True)
        why = await self._wait(ctx, lambda: self._down(ctx), 5.0)
        if why:
            raise KitError(f"{self.name} could not be stopped: {why}", Severity.HARD)

    async def check(self, ctx: KitContext[MailProperties]) -> Check:
        if not await self.running(ctx):
            return Check.stopped(f"{self.name} is not running")
        heard = await self.listening()
        if heard.status.value != "running":
            return Check.failed(f"{self.name}: {heard.detail}")
        return Check.running(f"{self.name}: {heard.detail}" if heard.detail else self.name)

    def adopt(self, ctx: KitContext[MailProperties]) -> None:
        """Move the running service's processes into the resource's cgroup."""
        pid = self.pid()
        if pid is None or ctx.cgroup is None:
            return
        moved = 0
        for member in [pid, *_descendants(pid)]:
            with contextlib.suppress(OSError):
                (ctx.cgroup / "cgroup.procs").write_text(str(member))
                moved += 1
        if moved:
            ctx.log.info(
                "%s: %s was running already: adopted %d processes", ctx.tag, self.name, moved
            )

    # --- helpers --------------------------------------------------------------------------

    async def _up(self, ctx: KitContext[MailProperties]) -> str:
        if not await self.running(ctx):
            return f"{self.name} is not running"
        heard = await self.listening()
        return "" if heard.status.value == "running" else heard.detail

    async def _down(self, ctx: KitContext[MailProperties]) -> str:
        return f"{self.name} is still running" if await self.running(ctx) else ""

    async def _wait(
        self, ctx: KitContext[MailProperties], problem: Callable[[], Awaitable[str]], seconds: float
    ) -> str:
        """Wait until ``problem()`` says "" (done); the last problem after ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            why = await problem()
            if not why or time.monotonic() >= deadline:
                return why
            await asyncio.sleep(POLL)

    def _log_tail(self) -> str:
        path = self.log_file()
        if not path:
            return ""
        try:
            lines = Path(path).read_text(errors="replace").splitlines()[-LOG_LINES:]
        except OSError:
            return ""
        return f"; last lines of {path}:\n  " + "\n  ".join(lines) if lines else ""

    async def _command(
        self, ctx: KitContext[MailProperties], argv: list[str] | str, what: str
    ) -> None:
        """Run a start or stop command in the resource's cgroup. Its output goes to a file
        in the resource's state directory, not to a pipe: a daemon it starts would inherit
        the pipe, and the command would be waited for as long as the pipe is open."""
        await asyncio.to_thread(ctx.state_dir.mkdir, parents=True, exist_ok=True)
        out = ctx.state_dir / f"{what.replace(' ', '-')}.out"
        if isinstance(argv, str):
            command = ["/bin/sh", "-c", f'exec >"$0" 2>&1\n{argv}', str(out)]
        else:
            command = ["/bin/sh", "-c", 'exec "$@" >"$0" 2>&1', str(out), *argv]
        result = await run_command(
            command, log=ctx.log, timeout=COMMAND_TIMEOUT, cgroup=ctx.cgroup,
            name=f"{ctx.tag} {what}",
        )  # fmt: skip
        if not result.ok:
            said = await asyncio.to_thread(_tail, out)
            raise KitError(
                f"{what} {result.describe_exit()}{': ' + said if said else ''}{self._log_tail()}",
                Severity.HARD,
            )


class Postfix(Service):
    """Postfix, by its configuration directory (``postfix -c DIR``)."""

    name = "postfix"

    def pid(self) -> int | None:
        queue = self.props.setting("postfix:queue_directory")
        return live_pid(Path(queue) / "pid" / "master.pid", "master") if queue else None

    def log_file(self) -> str:
        return self.props.setting("record:postfix:maillog_file")

    async def listening(self) -> Check:
        heard = await greeting("220", self.endpoint.address, self.endpoint.smtp_port)
        return Check.running(f"SMTP {heard.detail}") if heard.ok else Check.failed(heard.detail)

    async def _start(self, ctx: KitContext[MailProperties]) -> None:
        await self._command(
            ctx, ["postfix", "-c", self.props.postfix_config, "start"], "postfix start"
        )

    async def _stop(self, ctx: KitContext[MailProperties], force: bool) -> None:
        verb = "abort" if force else "stop"
        with contextlib.suppress(KitError):
            await self._command(
                ctx, ["postfix", "-c", self.props.postfix_config, verb], f"postfix {verb}"
            )
        if force:
            _kill(self.pid())


class Dovecot(Service):
    """Dovecot, by its configuration file (``dovecot -c FILE``); its LMTP listener is
    what Postfix delivers to."""

    name = "dovecot"

    def pid(self) -> int | None:
        base = self.props.setting("record:dovecot:base_dir")
        return live_pid(Path(base) / "master.pid", "dovecot") if base else None

    def log_file(self) -> str:
        return self.props.setting("record:dovecot:log_path")

    async def listening(self) -> Check:
        protocols = self.props.setting("dovecot:protocols", "imap").split()
        heard = []
        if "imap" in protocols:
            heard.append(await greeting("* OK", self.endpoint.address, self.endpoint.imap_port))
        if "pop3" in protocols:
            heard.append(await greeting("+OK", self.endpoint.address, self.endpoint.pop3_port))
        lmtp = _lmtp_target(self.endpoint.lmtp)
        if lmtp is not None:
            heard.append(await greeting("220", *lmtp))
        bad = [h.detail for h in heard if not h.ok]
        if bad:
            return Check.failed("; ".join(bad))
        return Check.running(", ".join(h.detail for h in heard))

    async def _start(self, ctx: KitContext[MailProperties]) -> None:
        base = self.props.setting("record:dovecot:base_dir")
        pid_file = Path(base) / "master.pid"
        removed: bool = bool(base) and await asyncio.to_thread(
            remove_stale_pid, pid_file, "dovecot"
        )
        if removed:
            ctx.log.info("%s: removed Dovecot's stale pid file (its process is gone)", ctx.tag)
        await self._command(ctx, ["dovecot", "-c", self.props.dovecot_config], "dovecot start")

    async def _stop(self, ctx: KitContext[MailProperties], force: bool) -> None:
        # a signal to the master, not `dovecot stop`: that command waits until the master's
        # pid is gone, and an exited master stays a zombie until its parent (the agent, a
        # subreaper) reaps it, up to seconds later; a zombie serves nothing
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL if force else signal.SIGTERM)


class Command(Service):
    """An optional service known by its start, stop and check commands."""

    def __init__(self, props: MailProperties, endpoint: Endpoint, spec: OptionalService) -> None:
        super().__init__(props, endpoint)
        known = KNOWN_SERVICES.get(spec.name, (None, None, None))
        self.name = spec.name
        self.start_command = spec.start or known[0]
        self.stop_command = spec.stop or known[1]
        self.check_command = spec.check or known[2]

    def missing(self) -> list[str]:
        """The commands it lacks (a service vigil does not know needs all three)."""
        named = {
            "start": self.start_command,
            "stop": self.stop_command,
            "check": self.check_command,
        }
        return [what for what, command in named.items() if not command]

    async def running(self, ctx: KitContext[MailProperties]) -> bool:
        assert self.check_command
        result = await run_command(
            self.check_command, log=_CHECK_LOG, timeout=COMMAND_TIMEOUT, shell=True,
            name=f"{ctx.tag} {self.name} check",
        )  # fmt: skip
        return result.ok

    async def _start(self, ctx: KitContext[MailProperties]) -> None:
        assert self.start_command
        await self._command(ctx, self.start_command, f"{self.name} start")

    async def _stop(self, ctx: KitContext[MailProperties], force: bool) -> None:
        if not force:
            assert self.stop_command
            with contextlib.suppress(KitError):
                await self._command(ctx, self.stop_command, f"{self.name} stop")


def services_in_start_order(props: MailProperties, endpoint: Endpoint) -> list[Service]:
    """Dovecot, the optional services in their order, Postfix."""
    optional: list[Service] = [Command(props, endpoint, spec) for spec in props.services]
    return [Dovecot(props, endpoint), *optional, Postfix(props, endpoint)]


def _lmtp_target(transport: str) -> tuple[str | None, int, str | None] | None:
    """(host, port, path) of ``lmtp:unix:PATH`` or ``lmtp:inet:HOST:PORT``, else None."""
    kind, _, rest = transport.partition(":")
    if kind != "lmtp" or not rest:
        return None
    if rest.startswith("unix:"):
        return None, 0, rest[len("unix:") :]
    if rest.startswith("inet:"):
        rest = rest[len("inet:") :]
    host, _, port = rest.strip("[]").rpartition(":")
    if host and port.isdigit():
        return host.strip("[]"), int(port), None
    return None


def _tail(path: Path, lines: int = 5) -> str:
    """The last lines a command wrote to ``path``, on one line ("" if none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " / ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def live_pid(path: Path, name: str) -> int | None:
    """The pid in ``path`` when it is a live process called ``name`` in this thread's
    network namespace; else None. A pid file outlives its process: after a crash or a
    fence its number may belong to another process, and a queue's pid file on a shared
    volume may name the process of another server."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        theirs = os.stat(f"/proc/{pid}/ns/net").st_ino
        ours = os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return None
    return pid if comm == name and theirs == ours else None


def remove_stale_pid(path: Path, name: str) -> bool:
    """Remove ``path`` when it names no live ``name`` here (Dovecot refuses to start
    while its pid file names any live process); True when removed."""
    if not path.exists() or live_pid(path, name) is not None:
        return False
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True


def _kill(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, from ``/proc`` (children files)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                todo.append(child)
    return found
