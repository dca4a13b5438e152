"""The mail front-end: a Postfix relay and a Dovecot proxy in a namespace of their own.

Everything lives under ``ROOT/mail/frontend/``: ``postfix/`` (its configuration
directory: ``main.cf``, ``master.cf``, the LDAP maps, mode 0640 root:postfix),
``postfix-state/`` (``spool`` and ``data``), ``dovecot/`` (``dovecot.conf`` and its LDAP
passdb, mode 0600), ``dovecot-run/`` (``base_dir``), ``dovecot-state/``, and the logs
``postfix.log``, ``dovecot.log`` (what the programs print goes to ``*.out``).

Both run in the foreground inside a lab client's network namespace: Postfix as
``postfix -c DIR start-fg`` (its master's pid is recorded from ``pid/master.pid``),
Dovecot as ``dovecot -F -c FILE``. ``Lab.down`` kills them by their recorded pids and
with everything else in the lab's namespaces.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vigil.errors import LabError
from vigil.lab import clients, namespaces, processes
from vigil.lab.files import MailFrontendState
from vigil.lab.mail import dovecot_conf, postfix_conf, queue
from vigil.lab.mail.paths import DOVECOT_LDAP, IMAP_PORT, POP3_PORT, SMTP_PORT
from vigil.lab.mail.writing import write_file
from vigil.lab.naming import NETNS_DIR, LabNames

#: seconds the front-end's daemons get to answer after they started
START_TIMEOUT = 20.0
#: seconds between SIGTERM and SIGKILL when they are stopped
STOP_TIMEOUT = 5.0
COMMAND_TIMEOUT = 60


@dataclass(frozen=True)
class FrontendFiles:
    """Where the front-end's files are (``directory``: ``ROOT/mail/frontend``)."""

    directory: Path

    @property
    def postfix_dir(self) -> Path:
        return self.directory / "postfix"

    @property
    def postfix_state(self) -> Path:
        return self.directory / "postfix-state"

    @property
    def master_pid_file(self) -> Path:
        return self.postfix_state / "spool" / "pid" / "master.pid"

    @property
    def dovecot_conf(self) -> Path:
        return self.directory / "dovecot" / "dovecot.conf"

    @property
    def postfix_log(self) -> Path:
        return self.directory / "postfix.log"

    @property
    def dovecot_log(self) -> Path:
        return self.directory / "dovecot.log"


def files_of(names: LabNames) -> FrontendFiles:
    return FrontendFiles(names.root / "mail" / "frontend")


def write_config(
    files: FrontendFiles,
    *,
    address: str,
    networks: str,
    directory_url: str,
    bind_password: str,
    instance: str,
) -> None:
    """Write the front-end's Postfix and Dovecot configurations."""
    config = postfix_conf.frontend(
        config_dir=files.postfix_dir,
        state_dir=files.postfix_state,
        log_file=files.postfix_log,
        address=address,
        networks=networks,
        directory_url=directory_url,
        bind_password=bind_password,
    )
    write_file(files.postfix_dir / "main.cf", config.main_cf(), 0o644)
    write_file(files.postfix_dir / "master.cf", postfix_conf.master_cf(), 0o644)
    for name, text in config.maps.items():
        write_file(files.postfix_dir / name, text, 0o640, "postfix")
    files.postfix_state.mkdir(mode=0o755, exist_ok=True)
    ldap_file = files.dovecot_conf.with_name(DOVECOT_LDAP)
    write_file(ldap_file, dovecot_conf.proxy_ldap(directory_url, bind_password), 0o600)
    run_dir, state_dir = files.directory / "dovecot-run", files.directory / "dovecot-state"
    run_dir.mkdir(mode=0o755, exist_ok=True)
    state_dir.mkdir(mode=0o750, exist_ok=True)
    text = dovecot_conf.proxy(
        address=address,
        base_dir=run_dir,
        state_dir=state_dir,
        log_file=files.dovecot_log,
        ldap_file=ldap_file,
        name=instance,
    )
    write_file(files.dovecot_conf, text, 0o644)


def greeting(address: str, port: int, timeout: float = 2.0) -> str | None:
    """The first line a TCP server at ``address:port`` sends, ``None`` if none comes."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            return conn.makefile("rb").readline().decode(errors="replace").strip() or None
    except OSError:
        return None


def _wait_greeting(address: str, port: int, pid: int, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while greeting(address, port) is None:
        if not processes.is_alive(pid) or time.monotonic() > deadline:
            processes.terminate([pid], 0.0)
            raise LabError(
                f"{what} on the mail front-end did not answer on {address}:{port}; "
                f"its log:\n{processes.tail(log)}"
            )
        time.sleep(0.05)


def _master_pid(files: FrontendFiles, starter: int) -> int:
    """The Postfix master's pid, from its pid file once it has written it."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            pid = int(files.master_pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid and processes.is_alive(pid):
            return pid
        if not processes.is_alive(starter):
            break
        time.sleep(0.05)
    output = processes.tail(files.directory / "postfix.out")
    raise LabError(
        "Postfix on the mail front-end did not start; its log and output:\n"
        f"{processes.tail(files.postfix_log)}\n{output}"
    )


def start(names: LabNames, record: MailFrontendState) -> list[subprocess.Popen[bytes]]:
    """Start the front-end's Postfix and Dovecot in ``record.where`` (a lab client,
    created when missing), record their pids in ``record`` and wait until both answer;
    returns their ``Popen`` handles (to reap)."""
    if names.client_netns(record.where) not in clients.netns_names(names):
        clients.add(names, record.where)
    files = FrontendFiles(Path(record.directory))
    # the queue as `postfix check` would make it, in a fraction of its time; the check
    # then only judges (inside the namespace: inet_interfaces must be local addresses;
    # its complaints go to its log, not stderr)
    queue.create(files.postfix_state / "spool", files.postfix_state / "data")
    argv = clients.enter_argv(
        names, record.where, ["postfix", "-c", str(files.postfix_dir), "check"]
    )
    check = subprocess.run(
        argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if check.returncode != 0:
        raise LabError(
            "the mail front-end's Postfix refuses its configuration; its log:\n"
            f"{processes.tail(files.postfix_log)}"
        )
    postfix_argv = ["postfix", "-c", str(files.postfix_dir), "start-fg"]
    postfix = processes.spawn_detached(
        clients.enter_argv(names, record.where, postfix_argv), files.directory / "postfix.out"
    )
    dovecot_argv = ["dovecot", "-F", "-c", str(files.dovecot_conf)]
    dovecot = processes.spawn_detached(
        clients.enter_argv(names, record.where, dovecot_argv), files.directory / "dovecot.out"
    )
    record.dovecot_pid = dovecot.pid
    record.postfix_pid = _master_pid(files, postfix.pid)
    _wait_greeting(record.address, SMTP_PORT, record.postfix_pid, "Postfix", files.postfix_log)
    for port in (IMAP_PORT, POP3_PORT):
        _wait_greeting(record.address, port, dovecot.pid, "Dovecot", files.dovecot_log)
    return [postfix, dovecot]


def running_pids(names: LabNames, record: MailFrontendState) -> list[int]:
    """The recorded pids (Postfix master, Dovecot) still running in the front-end's
    network namespace."""
    key = namespaces.ns_key_of_kind(NETNS_DIR / names.client_netns(record.where), "net")
    found = []
    for pid in (record.postfix_pid, record.dovecot_pid):
        if pid is None or not processes.is_alive(pid):
            continue
        if key is not None and namespaces.ns_key(f"/proc/{pid}/ns/net") == key:
            found.append(pid)
    return found


def stop(names: LabNames, record: MailFrontendState) -> list[str]:
    """Stop the front-end's daemons (their children follow their masters); messages
    for survivors."""
    pids = running_pids(names, record)
    left = processes.terminate(pids, STOP_TIMEOUT)
    record.postfix_pid = record.dovecot_pid = None
    return [f"mail front-end process {processes.describe(pid)}: survived SIGKILL" for pid in left]
