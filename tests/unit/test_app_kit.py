"""The app kit and its command helper, with real shell commands (no mocks).

Actions go through ``asyncio.wait_for(..., kit.timeout(...))`` as the agent calls them.
Processes are checked by pid: a zombie (exited, not yet reaped by PID 1) counts as gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vigil.errors import KitError, KitTimeout, Severity
from vigil.kits import process
from vigil.kits.app import EXIT_NOT_CONFIGURED, EXIT_NOT_RUNNING, AppKit, AppProperties
from vigil.kits.base import Action, Check, CheckStatus, KitContext
from vigil.kits.process import CLEANUP_ALLOWANCE, pid_alive, run_command

KIT = AppKit()
LOGGER = "vigil.kit.app.web"


def make_ctx(tmp_path: Path, **properties: Any) -> KitContext:
    values: dict[str, Any] = {"restore": "true", "remove": "true", "quick_check": "true"}
    values.update(properties)
    return KitContext(
        tag="web",
        server="node1",
        properties=KIT.parse_properties(values),
        log=logging.getLogger(LOGGER),
        epoch=42,
        state_dir=tmp_path / "state" / "kits" / "web",
    )


async def act(action: Action, ctx: KitContext) -> Any:
    method = getattr(KIT, action.value)
    return await asyncio.wait_for(method(ctx), KIT.timeout(action, ctx.properties))


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text())
    except (FileNotFoundError, ValueError):
        return None


async def wait_for_pid(pidfile: Path, within: float = 5.0) -> int:
    for _ in range(int(within / 0.02)):
        if (pid := read_pid(pidfile)) is not None:
            return pid
        await asyncio.sleep(0.02)
    raise AssertionError(f"{pidfile} was never written")


async def wait_gone(pid: int, within: float = 1.0) -> bool:
    for _ in range(int(within / 0.02)):
        if not pid_alive(pid):
            return True
        await asyncio.sleep(0.02)
    return not pid_alive(pid)


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Pids a test started; killed afterwards if still alive, whatever happened."""
    started: list[int] = []
    yield started
    for pid in started:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


# --- exit codes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (0, CheckStatus.RUNNING),
        (EXIT_NOT_RUNNING, CheckStatus.STOPPED),
        (1, CheckStatus.FAILED),
        (3, CheckStatus.FAILED),
        (EXIT_NOT_CONFIGURED, CheckStatus.FAILED),
        (127, CheckStatus.FAILED),
    ],
)
@pytest.mark.parametrize("action", [Action.QUICK_CHECK, Action.DEEP_CHECK])
async def test_check_exit_codes(
    tmp_path: Path, action: Action, code: int, status: CheckStatus
) -> None:
    command = f"echo first; echo 'the last line'; exit {code}"
    ctx = make_ctx(tmp_path, quick_check=command, deep_check=command)
    check = await act(action, ctx)
    assert check.status is status
    assert "the last line" in check.detail
    if status is CheckStatus.FAILED:
        assert f"exited with code {code}" in check.detail


async def test_check_killed_by_a_signal_is_failed(tmp_path: Path) -> None:
    check = await act(Action.QUICK_CHECK, make_ctx(tmp_path, quick_check="kill -9 $$"))
    assert check == Check.failed("quick_check command killed by signal 9 (SIGKILL)")


async def test_deep_check_defaults_to_the_quick_check(tmp_path: Path) -> None:
    check = await act(Action.DEEP_CHECK, make_ctx(tmp_path, quick_check="exit 7"))
    assert check.status is CheckStatus.STOPPED


@pytest.mark.parametrize("action", [Action.RESTORE, Action.REMOVE])
async def test_service_action_success(tmp_path: Path, action: Action) -> None:
    ctx = make_ctx(tmp_path, **{action.value: "echo done; exit 0"})
    assert await act(action, ctx) is None


@pytest.mark.parametrize("action", [Action.RESTORE, Action.REMOVE])
@pytest.mark.parametrize(
    ("code", "severity"),
    [
        (1, Severity.HARD),
        (2, Severity.HARD),
        (EXIT_NOT_RUNNING, Severity.HARD),
        (6, Severity.FATAL),
    ],
)
async def test_service_action_failure(
    tmp_path: Path, action: Action, code: int, severity: Severity
) -> None:
    ctx = make_ctx(tmp_path, **{action.value: f"echo 'cannot bind port 80'; exit {code}"})
    with pytest.raises(KitError) as caught:
        await act(action, ctx)
    assert caught.value.severity is severity
    message = str(caught.value)
    assert "web" in message and "node1" in message and action.value in message
    assert "cannot bind port 80" in message


# --- timeouts, cancellation and process groups ---------------------------------------------


async def test_check_timeout_is_a_failed_check(tmp_path: Path, pids: list[int]) -> None:
    pidfile = tmp_path / "sleep.pid"
    ctx = make_ctx(
        tmp_path, quick_check=f"sleep 30 & echo $! > {pidfile}; wait", quick_check_timeout=0.3
    )
    started = time.monotonic()
    check = await act(Action.QUICK_CHECK, ctx)
    assert check == Check.failed("quick_check command timed out after 0.3s")
    assert time.monotonic() - started < 0.3 + CLEANUP_ALLOWANCE
    pids.append(int(pidfile.read_text()))
    assert await wait_gone(pids[-1]), "the check's sleep survived its timeout"


async def test_restore_timeout_kills_the_process_group(tmp_path: Path, pids: list[int]) -> None:
    pidfile = tmp_path / "sleep.pid"
    ctx = make_ctx(tmp_path, restore=f"sleep 30 & echo $! > {pidfile}; wait", restore_timeout=0.5)
    with pytest.raises(KitTimeout) as caught:
        await act(Action.RESTORE, ctx)
    assert caught.value.severity is Severity.HARD
    assert "timed out after 0.5s" in str(caught.value) and "restore_timeout" in str(caught.value)
    pids.append(int(pidfile.read_text()))
    assert await wait_gone(pids[-1]), "the restore's sleep survived its timeout"


async def test_sigterm_is_followed_by_sigkill(
    tmp_path: Path, pids: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process, "KILL_GRACE", 0.3)
    pidfile = tmp_path / "sleep.pid"
    # the shell and its sleep both ignore SIGTERM
    ctx = make_ctx(
        tmp_path, restore=f"trap '' TERM; sleep 30 & echo $! > {pidfile}; wait", restore_timeout=0.3
    )
    with pytest.raises(KitTimeout):
        await act(Action.RESTORE, ctx)
    pids.append(int(pidfile.read_text()))
    assert await wait_gone(pids[-1]), "a SIGTERM-ignoring child survived"


async def test_agent_cancellation_kills_the_process_group(tmp_path: Path, pids: list[int]) -> None:
    pidfile = tmp_path / "sleep.pid"
    ctx = make_ctx(tmp_path, restore=f"sleep 30 & echo $! > {pidfile}; wait")
    task = asyncio.create_task(act(Action.RESTORE, ctx))
    pids.append(await wait_for_pid(pidfile))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not pid_alive(pids[-1]), "cancellation returned before the group was killed"


async def test_agent_timeout_kills_the_process_group(tmp_path: Path, pids: list[int]) -> None:
    # the agent's own wait_for, shorter than the command's timeout: cancellation path
    pidfile = tmp_path / "sleep.pid"
    ctx = make_ctx(tmp_path, remove=f"sleep 30 & echo $! > {pidfile}; wait")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(KIT.remove(ctx), 0.5)
    pids.append(int(pidfile.read_text()))
    assert not pid_alive(pids[-1])


async def test_a_daemon_holding_the_output_pipe_does_not_block(
    tmp_path: Path, pids: list[int]
) -> None:
    pidfile = tmp_path / "daemon.pid"
    # the background sleep inherits stdout and keeps the pipe open after the shell exits
    ctx = make_ctx(tmp_path, restore=f"sleep 30 & echo $! > {pidfile}; echo started")
    started = time.monotonic()
    await act(Action.RESTORE, ctx)
    assert time.monotonic() - started < 10.0  # not the 30 s the daemon holds the pipe
    pids.append(int(pidfile.read_text()))
    assert pid_alive(pids[-1]), "a command that exited by itself must not have its children killed"


def test_timeouts_are_the_properties_plus_the_cleanup_allowance() -> None:
    properties = AppProperties(
        restore="a", remove="b", quick_check="c", restore_timeout=11, remove_timeout=12,
        quick_check_timeout=3, deep_check_timeout=14, recover_timeout=15,
    )  # fmt: skip
    assert KIT.timeout(Action.RESTORE, properties) == 11 + CLEANUP_ALLOWANCE
    assert KIT.timeout(Action.REMOVE, properties) == 12 + CLEANUP_ALLOWANCE
    assert KIT.timeout(Action.QUICK_CHECK, properties) == 3 + CLEANUP_ALLOWANCE
    assert KIT.timeout(Action.DEEP_CHECK, properties) == 3 + CLEANUP_ALLOWANCE  # no deep_check
    assert KIT.timeout(Action.RECOVER, properties) == 12 + 11 + 3 + 3 * CLEANUP_ALLOWANCE
    with_commands = properties.model_copy(update={"deep_check": "d", "recover": "e"})
    assert KIT.timeout(Action.DEEP_CHECK, with_commands) == 14 + CLEANUP_ALLOWANCE
    assert KIT.timeout(Action.RECOVER, with_commands) == 15 + 3 + 2 * CLEANUP_ALLOWANCE
    assert KIT.timeout(Action.VALIDATE_CREATE, properties) == KIT.timeouts.validate


# --- output and environment ------------------------------------------------------------------


async def test_command_output_goes_to_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    ctx = make_ctx(
        tmp_path, restore="echo hello from restore; echo oops on stderr >&2; printf tail"
    )
    await act(Action.RESTORE, ctx)
    lines = [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO
    ]
    assert lines == [
        "web restore: hello from restore",
        "web restore: oops on stderr",
        "web restore: tail",
    ]


async def test_environment_of_the_commands(tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    workdir = tmp_path / "work"
    workdir.mkdir()
    show = (
        'printf "%s\\n" "$VIGIL_TAG" "$VIGIL_SERVER" "$VIGIL_ACTION" "$VIGIL_EPOCH" '
        f'"$VIGIL_STATE_DIR" "$GREETING" "$(pwd)" "$PATH" > {out}; test -d "$VIGIL_STATE_DIR"'
    )
    ctx = make_ctx(
        tmp_path,
        quick_check=show,
        environment={"GREETING": "hi there"},
        working_directory=str(workdir),
    )
    assert (await act(Action.QUICK_CHECK, ctx)).status is CheckStatus.RUNNING
    tag, server, action, epoch, state_dir, greeting, cwd, path = out.read_text().splitlines()
    assert (tag, server, action, epoch) == ("web", "node1", "quick_check", "42")
    assert state_dir == str(ctx.state_dir) and ctx.state_dir.is_dir()
    assert greeting == "hi there"
    assert cwd == str(workdir)
    assert path == os.environ["PATH"]  # the agent's environment is inherited


# --- recover --------------------------------------------------------------------------------


def _marker_commands(tmp_path: Path) -> dict[str, str]:
    journal = tmp_path / "journal"
    up = "$VIGIL_STATE_DIR/up"
    return {
        "restore": f"echo restore >> {journal}; touch {up}",
        "remove": f"echo remove >> {journal}; rm -f {up}",
        "quick_check": f"echo quick_check >> {journal}; test -f {up} || exit 7",
    }


async def test_default_recovery_is_remove_restore_check(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, **_marker_commands(tmp_path))
    assert await act(Action.RECOVER, ctx) is True
    assert (tmp_path / "journal").read_text().split() == ["remove", "restore", "quick_check"]


async def test_recover_command_then_check(tmp_path: Path) -> None:
    commands = _marker_commands(tmp_path)
    commands["recover"] = f"echo recover >> {tmp_path / 'journal'}; touch $VIGIL_STATE_DIR/up"
    assert await act(Action.RECOVER, make_ctx(tmp_path, **commands)) is True
    assert (tmp_path / "journal").read_text().split() == ["recover", "quick_check"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"recover": "exit 1"},  # the recover command fails
        {"recover": "true"},  # it succeeds but the application is still down
        {"restore": "exit 1"},  # default recovery: restore fails
        {"recover": "sleep 30", "recover_timeout": 0.2},  # it times out
    ],
)
async def test_failed_recovery_returns_false(tmp_path: Path, overrides: dict[str, Any]) -> None:
    commands = {**_marker_commands(tmp_path), **overrides}
    assert await act(Action.RECOVER, make_ctx(tmp_path, **commands)) is False


async def test_recover_not_configured_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(KitError) as caught:
        await act(Action.RECOVER, make_ctx(tmp_path, recover="exit 6"))
    assert caught.value.severity is Severity.FATAL


# --- configuration: properties, validate_create, can_extend, delete ---------------------------


async def test_validate_create_accepts_existing_commands(tmp_path: Path) -> None:
    script = tmp_path / "start.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    ctx = make_ctx(
        tmp_path,
        restore=f"FOO=1 {script} --now",
        remove="cd / && pkill -f nothing-at-all",
        quick_check='test -e "$VIGIL_STATE_DIR"',
        deep_check="$HOME/bin/anything",  # left to the shell
        working_directory=str(tmp_path),
        recover="./start.sh",  # relative to the working directory
    )
    assert await act(Action.VALIDATE_CREATE, ctx) == []


async def test_validate_create_names_every_problem(tmp_path: Path) -> None:
    not_executable = tmp_path / "check.sh"
    not_executable.write_text("#!/bin/sh\n")
    ctx = make_ctx(
        tmp_path,
        restore="/opt/x/start --now",
        remove="no-such-program-vigil-test stop",
        quick_check=str(not_executable),
        deep_check=str(tmp_path),
        recover="'unbalanced",
        working_directory="/no/such/dir",
    )
    problems = await act(Action.VALIDATE_CREATE, ctx)
    assert problems == [
        "working_directory '/no/such/dir' does not exist on node1: create it or correct the path",
        "restore command '/opt/x/start' not found on node1: install it or correct the path",
        "remove command 'no-such-program-vigil-test' not found in PATH on node1: install it or "
        "give its absolute path",
        f"quick_check command '{not_executable}' is not executable on node1: make it executable "
        "(chmod +x) or correct the path",
        f"deep_check command '{tmp_path}' is a directory on node1, not a program: correct the path",
        'recover command is not a valid shell command line (No closing quotation): "\'unbalanced"',
    ]


async def test_validate_create_uses_the_configured_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "myapp").write_text("#!/bin/sh\n")
    (bin_dir / "myapp").chmod(0o755)
    ctx = make_ctx(
        tmp_path, restore="myapp start", environment={"PATH": f"{bin_dir}:/usr/bin:/bin"}
    )
    assert await act(Action.VALIDATE_CREATE, ctx) == []


async def test_can_extend_runs_the_same_checks(tmp_path: Path) -> None:
    check = await act(Action.CAN_EXTEND, make_ctx(tmp_path, restore="/opt/x/start"))
    assert check.problems == [
        "restore command '/opt/x/start' not found on node1: install it or correct the path"
    ]
    assert (await act(Action.CAN_EXTEND, make_ctx(tmp_path))).problems == []


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"remove": "x", "quick_check": "y"}, "restore: Field required"),
        ({"restore": "  ", "remove": "x", "quick_check": "y"}, "restore"),
        (
            {"restore": "a", "remove": "b", "quick_check": "c", "restore_timeout": 0},
            "restore_timeout",
        ),
        (
            {"restore": "a", "remove": "b", "quick_check": "c", "environment": {"VIGIL_TAG": "x"}},
            "set by vigil",
        ),
        (
            {"restore": "a", "remove": "b", "quick_check": "c", "environment": {"1X": "x"}},
            "not a valid",
        ),
        (
            {"restore": "a", "remove": "b", "quick_check": "c", "working_directory": "rel"},
            "absolute",
        ),
        ({"restore": "a", "remove": "b", "quick_check": "c", "user": "root"}, "user"),
    ],
)
def test_bad_properties_are_fatal(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(KitError) as caught:
        KIT.parse_properties(values)
    assert caught.value.severity is Severity.FATAL
    assert complaint in str(caught.value)


def test_blank_optional_commands_are_unset() -> None:
    properties = KIT.parse_properties(
        {"restore": "a", "remove": "b", "quick_check": "c", "deep_check": " "}
    )
    assert isinstance(properties, AppProperties) and properties.deep_check is None


async def test_delete_removes_the_state_directory(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, restore='touch "$VIGIL_STATE_DIR/file"')
    await act(Action.RESTORE, ctx)
    assert (ctx.state_dir / "file").exists()
    await act(Action.DELETE, ctx)
    assert not ctx.state_dir.exists()
    await act(Action.DELETE, ctx)  # idempotent


async def test_delete_leaves_a_directory_that_is_not_the_resources_own(tmp_path: Path) -> None:
    shared = tmp_path / "kits"
    shared.mkdir()
    ctx = make_ctx(tmp_path)
    ctx = KitContext(ctx.tag, ctx.server, ctx.properties, ctx.log, state_dir=shared)
    await act(Action.DELETE, ctx)
    assert shared.is_dir()


# --- run_command directly ------------------------------------------------------------------


async def test_run_command_that_cannot_start(tmp_path: Path) -> None:
    log = logging.getLogger("test")
    missing = await run_command(["/no/such/program"], log=log)
    assert missing.returncode == 127 and "No such file" in missing.output
    (tmp_path / "data").write_text("not a program")
    denied = await run_command([str(tmp_path / "data")], log=log)
    assert denied.returncode == 126
    nowhere = await run_command("true", log=log, shell=True, cwd=tmp_path / "missing")
    assert nowhere.returncode == 127 and f"in {tmp_path / 'missing'}" in nowhere.output


async def test_run_command_result_and_timeout(pids: list[int]) -> None:
    log = logging.getLogger("test")
    result = await run_command("printf 'a\\n\\nb  \\n\\n'; exit 4", log=log, shell=True)
    assert (result.returncode, result.last_line, result.ok) == (4, "b", False)
    assert result.describe_exit() == "exited with code 4"
    result = await run_command(["sh", "-c", "echo $X"], log=log, env={"X": "extra"})
    assert result.output == "extra"
    with pytest.raises(KitTimeout, match=r"timed out after 0\.2s"):
        await run_command("sleep 30", log=log, timeout=0.2)
