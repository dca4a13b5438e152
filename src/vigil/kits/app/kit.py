"""The app kit: protects any application through commands its administrator supplies.

This is the seed product's Generic Application kit. Each command is a shell command line
(run by ``/bin/sh -c``, in its own process group, stdin ``/dev/null``, its output logged
line by line in the agent log). Its exit code is the answer:

=========================  =====================================  ========================
command                    exit code                              vigil makes of it
=========================  =====================================  ========================
restore, remove, recover   0 (``EXIT_SUCCESS``)                   success
restore, remove, recover   6 (``EXIT_NOT_CONFIGURED``, as OCF's   KitError FATAL: wait
                           OCF_ERR_CONFIGURED)                    for an operator
restore, remove            anything else, or killed               KitError HARD: move the
                                                                  hierarchy
recover                    anything else, or killed               recovery failed (False)
quick_check, deep_check    0 (``EXIT_SUCCESS``)                   running
quick_check, deep_check    7 (``EXIT_NOT_RUNNING``, as OCF's      stopped
                           OCF_NOT_RUNNING)
quick_check, deep_check    anything else, killed, or timed out    failed (the exit and the
                                                                  last output line)
=========================  =====================================  ========================

A restore or remove command that overruns its timeout has its process group killed and
raises ``KitTimeout`` (HARD). ``restore`` and ``remove`` must be idempotent (exit 0 when the
application already runs / is already stopped); checks must not change anything. A
restore command that starts a daemon must let it leave the command's process group
(``setsid``, or a daemon that double-forks) and redirect its output, or the daemon is
killed with the group when the command is timed out.

A remove that overran its timeout (or failed where the agent must let the resource go) is
escalated: every process of the resource's cgroup is killed (the daemons its restore
started, however they detached), then the quick check must not say running.

Every command gets these environment variables, on top of the agent's environment and
the resource's ``environment`` property: ``VIGIL_TAG`` (the resource), ``VIGIL_SERVER``
(this server), ``VIGIL_ACTION`` (restore, remove, quick_check, deep_check, recover),
``VIGIL_EPOCH`` (the fencing token of the current ownership) and ``VIGIL_STATE_DIR`` (a
directory of this resource on this server, created if missing, removed on delete).
"""

from __future__ import annotations

import asyncio
import shutil
from typing import ClassVar

from vigil.errors import KitError, KitTimeout, Severity
from vigil.kits.app.properties import AppProperties
from vigil.kits.app.validation import config_problems
from vigil.kits.base import (
    Action,
    Check,
    CheckStatus,
    ExtendCheck,
    Kit,
    KitContext,
    Timeouts,
    stop_cgroup,
)
from vigil.kits.process import CLEANUP_ALLOWANCE, CommandResult, run_command

__all__ = ["EXIT_NOT_CONFIGURED", "EXIT_NOT_RUNNING", "EXIT_SUCCESS", "AppKit"]

#: restore/remove/recover succeeded; a check found the application running
EXIT_SUCCESS = 0
#: the application is not configured on this server (OCF_ERR_CONFIGURED): fatal
EXIT_NOT_CONFIGURED = 6
#: a check found the application stopped, cleanly (OCF_NOT_RUNNING)
EXIT_NOT_RUNNING = 7


class AppKit(Kit[AppProperties]):
    """Generic application: user-supplied restore, remove and check commands."""

    name: ClassVar[str] = "app"
    description: ClassVar[str] = (
        "Generic application: any application, protected by your own restore, remove, "
        "check and recover commands"
    )
    Properties = AppProperties
    timeouts: ClassVar[Timeouts] = Timeouts(
        restore=60.0, remove=60.0, quick_check=10.0, deep_check=30.0, recover=60.0
    )

    def timeout(self, action: Action, properties: AppProperties) -> float:
        """The resource's own timeout property for the action, plus ``CLEANUP_ALLOWANCE``
        per command the action runs: the kit enforces each command's timeout itself (a
        check that overruns is a failed check, a restore that overruns a ``KitTimeout``),
        and it needs that margin to kill the command's process group and report before the
        agent cancels the action."""
        p = properties
        steps: dict[Action, list[float]] = {
            Action.RESTORE: [p.restore_timeout],
            Action.REMOVE: [p.remove_timeout],
            Action.QUICK_CHECK: [p.quick_check_timeout],
            Action.DEEP_CHECK: [p.deep_check_timeout if p.deep_check else p.quick_check_timeout],
            Action.RECOVER: (
                [p.recover_timeout] if p.recover else [p.remove_timeout, p.restore_timeout]
            )
            + [p.quick_check_timeout],
            # killing the cgroup waits for it to empty (2 s at most), then the check
            Action.ESCALATE: [2.0, p.quick_check_timeout],
        }
        if action not in steps:
            return super().timeout(action, properties)
        return sum(t + CLEANUP_ALLOWANCE for t in steps[action])

    # --- configuration actions ----------------------------------------------------------

    async def validate_create(self, ctx: KitContext[AppProperties]) -> list[str]:
        """Every command's program must exist and be executable here, the working directory
        must exist. Does not run any command (the application may run or not)."""
        return config_problems(ctx.properties, ctx.server)

    async def can_extend(self, ctx: KitContext[AppProperties]) -> ExtendCheck:
        """The same checks as ``validate_create``, on the target server."""
        return ExtendCheck(problems=config_problems(ctx.properties, ctx.server))

    async def delete(self, ctx: KitContext[AppProperties]) -> None:
        """Remove the resource's state directory (``VIGIL_STATE_DIR``). Idempotent.

        Only a directory named after the resource's tag is removed: a context whose
        ``state_dir`` is not the resource's own is logged and left alone."""
        state_dir = ctx.state_dir
        if state_dir.name != ctx.tag:
            ctx.log.warning(
                "%s: not removing state directory %s: it is not named after the resource",
                ctx.tag,
                state_dir,
            )
            return
        await asyncio.to_thread(shutil.rmtree, state_dir, ignore_errors=True)

    # --- service actions ----------------------------------------------------------------

    async def restore(self, ctx: KitContext[AppProperties]) -> None:
        """Run the restore command. Raises ``KitError`` (HARD; FATAL on exit code 6) or
        ``KitTimeout`` (HARD)."""
        p = ctx.properties
        await self._run_or_raise(ctx, Action.RESTORE, p.restore, p.restore_timeout)

    async def remove(self, ctx: KitContext[AppProperties]) -> None:
        """Run the remove command. Raises ``KitError`` (HARD; FATAL on exit code 6) or
        ``KitTimeout`` (HARD)."""
        p = ctx.properties
        await self._run_or_raise(ctx, Action.REMOVE, p.remove, p.remove_timeout)

    async def quick_check(self, ctx: KitContext[AppProperties]) -> Check:
        """Run the quick_check command: 0 running, 7 stopped, else (or timeout) failed."""
        p = ctx.properties
        return await self._check(ctx, Action.QUICK_CHECK, p.quick_check, p.quick_check_timeout)

    async def deep_check(self, ctx: KitContext[AppProperties]) -> Check:
        """Run the deep_check command (the quick check when there is none)."""
        p = ctx.properties
        if p.deep_check is None:
            return await self.quick_check(ctx)
        return await self._check(ctx, Action.DEEP_CHECK, p.deep_check, p.deep_check_timeout)

    async def recover(self, ctx: KitContext[AppProperties]) -> bool:
        """Run the recover command (without one: remove, then restore), then the quick
        check; True when the application runs again. A failing step returns False; only
        a FATAL error (exit code 6) is raised."""
        p = ctx.properties
        if p.recover is None:
            return await self.recover_by(ctx, self.remove, self.restore)
        command, seconds = p.recover, p.recover_timeout

        async def run_recover(ctx: KitContext[AppProperties]) -> None:
            await self._run_or_raise(ctx, Action.RECOVER, command, seconds)

        return await self.recover_by(ctx, run_recover)

    async def escalate(self, ctx: KitContext[AppProperties]) -> list[str]:
        """After a remove that overran or failed: kill every process of the resource's
        cgroup, then run the quick check. KitError HARD when it still says running (no
        cgroup here, or the application runs outside it)."""
        done = await stop_cgroup(ctx.cgroup)
        check = await self.quick_check(ctx)
        if check.status is CheckStatus.RUNNING:
            where = (
                "with no cgroup to kill" if ctx.cgroup is None else "after its cgroup was killed"
            )
            raise KitError(
                f"app resource {ctx.tag} on {ctx.server} still runs {where}: {check.detail}",
                Severity.HARD,
            )
        return done

    # --- helpers ------------------------------------------------------------------------

    async def _run(
        self, ctx: KitContext[AppProperties], action: Action, command: str, seconds: float
    ) -> CommandResult:
        p = ctx.properties
        state_dir = ctx.state_dir
        await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
        env = {
            **p.environment,
            "VIGIL_TAG": ctx.tag,
            "VIGIL_SERVER": ctx.server,
            "VIGIL_ACTION": action.value,
            "VIGIL_EPOCH": str(ctx.epoch),
            "VIGIL_STATE_DIR": str(state_dir),
        }
        return await run_command(
            command,
            log=ctx.log,
            timeout=seconds,
            env=env,
            cwd=p.working_directory or "/",
            shell=True,
            name=f"{ctx.tag} {action.value}",
            cgroup=ctx.cgroup,
        )

    async def _run_or_raise(
        self, ctx: KitContext[AppProperties], action: Action, command: str, seconds: float
    ) -> None:
        where = f"app resource {ctx.tag} on {ctx.server}"
        try:
            result = await self._run(ctx, action, command, seconds)
        except KitTimeout:
            raise KitTimeout(
                f"{where}: the {action} command timed out after {seconds:g}s and was killed; "
                f"raise {action}_timeout if the application needs longer"
            ) from None
        if result.returncode == EXIT_SUCCESS:
            return
        detail = f": {result.last_line}" if result.last_line else ""
        if result.returncode == EXIT_NOT_CONFIGURED:
            raise KitError(
                f"{where}: the {action} command says the application is not configured "
                f"here (exit code 6){detail}; fix its configuration, then try again",
                Severity.FATAL,
            )
        raise KitError(
            f"{where}: the {action} command {result.describe_exit()}{detail}", Severity.HARD
        )

    async def _check(
        self, ctx: KitContext[AppProperties], action: Action, command: str, seconds: float
    ) -> Check:
        try:
            result = await self._run(ctx, action, command, seconds)
        except KitTimeout:
            return Check.failed(f"{action} command timed out after {seconds:g}s")
        if result.returncode == EXIT_SUCCESS:
            return Check.running(result.last_line)
        if result.returncode == EXIT_NOT_RUNNING:
            return Check.stopped(result.last_line or "not running")
        detail = f": {result.last_line}" if result.last_line else ""
        return Check.failed(f"{action} command {result.describe_exit()}{detail}")
