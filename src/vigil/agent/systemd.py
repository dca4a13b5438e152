"""Running the agent as a service: systemd units (``vigil agent install``) and log lines
the journal understands.

Two units per server:

* ``vigil-fenceguard.service`` — the fence guard (``vigil.agent.fenceguard``), a process of
  its own that takes this server's resources down when the agent stops renewing its lease
  (dead, frozen, killed). It is started first and restarted whenever it ends, and it
  writes the pid file the agent looks for, so the agent does not start a second one;
* ``vigil-agent.service`` — the agent. ``SIGTERM`` is its orderly stop (hierarchies out of
  service, or switched over, per the server's shutdown strategy), so ``systemctl stop``
  may take as long as a remove does (``TimeoutStopSec``). ``KillMode=process``: what the
  kits started (in their resources' cgroups, or a mirror's receiver) is not killed with
  the agent, so ``systemctl restart vigil-agent`` (or ``vigil agent stop
  --leave-resources`` then a start) leaves resources running; the fence guard is what
  takes them down when they must go.

Logging: under systemd (``JOURNAL_STREAM`` names the agent's standard error), each line is
``<PRIORITY>logger: message`` without a time stamp (the journal adds its own, and reads
the priority: ``journalctl -u vigil-agent -p warning`` shows warnings and worse), each
line of a traceback with its priority too.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from vigil.agent.config import AgentConfig
from vigil.agent.fencing import GUARD_PID_FILE
from vigil.errors import ConfigError

__all__ = ["AGENT_UNIT", "GUARD_UNIT", "JournalFormatter", "install", "under_journald", "units"]

AGENT_UNIT = "vigil-agent.service"
GUARD_UNIT = "vigil-fenceguard.service"
UNIT_DIR = Path("/etc/systemd/system")
#: how long ``systemctl stop`` waits for an orderly stop (the mail kit's max_wait is 900 s)
STOP_TIMEOUT = 960
GUARD_PURPOSE = "takes its resources down if the agent stops renewing its lease"


def under_journald() -> bool:
    """Whether standard error goes to the journal (systemd sets ``JOURNAL_STREAM`` to its
    device and inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        stat = os.fstat(sys.stderr.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


#: syslog priorities of Python's levels (sd-daemon(3): "<3>" error, "<4>" warning...)
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


class JournalFormatter(logging.Formatter):
    """``<PRIORITY>logger: message``, every line of it prefixed, no time stamp."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in _PRIORITIES if record.levelno >= level), 7)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


@dataclass(frozen=True)
class Units:
    """The text of both units."""

    agent: str
    guard: str


def _command(*argv: str) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def units(config: AgentConfig, config_file: Path, python: str = sys.executable) -> Units:
    """The units of the agent configured in ``config_file`` (already read as ``config``)."""
    state_dir = config.state_dir
    pid_file = state_dir / GUARD_PID_FILE
    guard = f"""# written by `vigil agent install`: the fence guard of {config.server}
[Unit]
Description=vigil fence guard of {config.server} ({GUARD_PURPOSE})
Documentation=man:systemd.service(5)
Before={AGENT_UNIT}

[Service]
Type=exec
ExecStartPre=/bin/mkdir -p {shlex.quote(str(state_dir))}
ExecStart={_command(python, "-m", "vigil.agent.fenceguard", str(state_dir))}
ExecStartPost=/bin/sh -c {shlex.quote(f'echo "$MAINPID" > {shlex.quote(str(pid_file))}')}
Restart=always
RestartSec=1
OOMScoreAdjust=-900
SyslogIdentifier=vigil-fenceguard

[Install]
WantedBy=multi-user.target
"""
    agent = f"""# written by `vigil agent install`: the vigil agent of {config.server}
[Unit]
Description=vigil agent of {config.server} (high-availability cluster manager)
Wants=network-online.target {GUARD_UNIT}
After=network-online.target {GUARD_UNIT}

[Service]
Type=exec
ExecStart={_command(python, "-m", "vigil", "agent", "run", "--config", str(config_file))}
Environment=PYTHONUNBUFFERED=1
# SIGTERM is the orderly stop: hierarchies out of service (or switched over) first
KillMode=process
KillSignal=SIGTERM
TimeoutStopSec={STOP_TIMEOUT}
Restart=on-failure
RestartSec=2
LimitNOFILE=65536
OOMScoreAdjust=-500
SyslogIdentifier=vigil-agent

[Install]
WantedBy=multi-user.target
"""
    return Units(agent=agent, guard=guard)


@dataclass(frozen=True)
class Installed:
    """What ``install`` did."""

    files: list[Path]
    commands: list[str]


def install(
    config: AgentConfig,
    config_file: Path,
    unit_dir: Path = UNIT_DIR,
    *,
    systemctl: bool = True,
    start: bool = False,
) -> Installed:
    """Write both units to ``unit_dir``; with ``systemctl``, reload systemd and enable
    them (and start them with ``start``). ``ConfigError`` when a step fails."""
    text = units(config, config_file.resolve())
    unit_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name, body in ((GUARD_UNIT, text.guard), (AGENT_UNIT, text.agent)):
        path = unit_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.chmod(0o644)
        os.replace(tmp, path)
        files.append(path)
    commands: list[list[str]] = []
    if systemctl:
        commands = [["systemctl", "daemon-reload"], ["systemctl", "enable", GUARD_UNIT, AGENT_UNIT]]
        if start:
            commands.append(["systemctl", "start", GUARD_UNIT, AGENT_UNIT])
    for argv in commands:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"`{' '.join(argv)}` could not run: {exc}") from exc
        if done.returncode != 0:
            raise ConfigError(
                f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.stdout.strip()}; the "
                f"units are written in {unit_dir}"
            )
    return Installed(files, [" ".join(a) for a in commands])
