"""The lab's directory server: OpenLDAP's ``slapd`` in a namespace of its own.

``create`` writes, under ``ROOT/mail/directory/`` (mode 0700), ``slapd.conf`` (static
configuration, mdb backend, see ``vigil.lab.mail.directory_conf``), fresh random
passwords in files of their own (mode 0600, never in ``lab.json``: ``admin.secret``,
``service.secret``, and ``users.secret`` with one ``uid password`` line per mail user),
and loads every entry with ``slapadd -q`` while no slapd runs (10,000 users in a few
seconds). ``start`` runs ``slapd -d none`` (in the foreground, so its pid is the one
recorded; ``-d none`` still prints its errors) listening only on ``ldap://ADDRESS:389/``
inside a lab client's network namespace, and waits until it answers; ``stop`` ends it
and keeps its data. ``Lab.down`` kills it by its recorded pid (and with everything else
in the lab's namespaces), and its directory goes with the lab's root.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vigil.errors import LabError
from vigil.lab import clients, namespaces, processes
from vigil.lab.files import LabState, MailDirectoryState, load_state, save_state
from vigil.lab.mail import ldap
from vigil.lab.mail.directory_conf import ldif, new_password, slapd_conf
from vigil.lab.mail.paths import LDAP_PORT
from vigil.lab.mail.writing import write_file
from vigil.lab.naming import NETNS_DIR, LabNames

#: seconds slapd gets to answer after it started, and to end after SIGTERM
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
#: seconds ``slapadd`` may take (10,000 users take about 2)
LOAD_TIMEOUT = 300
ADMIN_SECRET = "admin.secret"
SERVICE_SECRET = "service.secret"
USERS_SECRET = "users.secret"
CONFIG_FILE = "slapd.conf"
LOG_FILE = "slapd.log"


@dataclass(frozen=True)
class Secrets:
    """The directory's passwords: admin (rootdn), service account, and uid → password."""

    admin: str = field(repr=False)
    service: str = field(repr=False)
    users: dict[str, str] = field(repr=False)


def directory_of(names: LabNames) -> Path:
    return names.root / "mail" / "directory"


def url_of(address: str) -> str:
    return f"ldap://{address}:{LDAP_PORT}"


def read_secrets(directory: Path) -> Secrets:
    """The passwords ``create`` wrote into ``directory``."""
    try:
        admin = (directory / ADMIN_SECRET).read_text().strip()
        service = (directory / SERVICE_SECRET).read_text().strip()
        lines = (directory / USERS_SECRET).read_text().splitlines()
    except OSError as exc:
        raise LabError(f"the lab's directory has lost a password file: {exc}") from exc
    users = dict(line.split(" ", 1) for line in lines if line)
    return Secrets(admin=admin, service=service, users=users)


def create(directory: Path, uids: Iterable[str], mail_host: str) -> Secrets:
    """Write the configuration and passwords into ``directory`` (which must not exist)
    and load the tree with ``slapadd``: every user in ``uids`` homed at ``mail_host``."""
    directory.mkdir(mode=0o700, parents=True)
    (directory / "data").mkdir(mode=0o700)
    secrets = Secrets(new_password(), new_password(), {uid: new_password() for uid in uids})
    write_file(directory / ADMIN_SECRET, secrets.admin + "\n", 0o600)
    write_file(directory / SERVICE_SECRET, secrets.service + "\n", 0o600)
    users = "".join(f"{uid} {password}\n" for uid, password in secrets.users.items())
    write_file(directory / USERS_SECRET, users, 0o600)
    write_file(directory / CONFIG_FILE, slapd_conf(directory, secrets.admin), 0o600)
    entries = directory / "load.ldif"
    with entries.open("w", encoding="utf-8") as handle:
        handle.writelines(ldif(secrets.users.items(), secrets.service, mail_host))
    try:
        done = subprocess.run(
            ["slapadd", "-q", "-f", str(directory / CONFIG_FILE), "-l", str(entries)],
            capture_output=True,
            text=True,
            timeout=LOAD_TIMEOUT,
            check=False,
        )
    finally:
        entries.unlink()  # password hashes: nothing keeps them but slapd's data
    if done.returncode != 0:
        raise LabError(f"slapadd could not load the lab's directory: {done.stderr.strip()}")
    return secrets


def slapd_argv(directory: Path, address: str) -> list[str]:
    """slapd in the foreground (``-d none``: no debug output but its errors), on
    ``address`` port 389 only."""
    return [
        "slapd",
        "-d",
        "none",
        "-f",
        str(directory / CONFIG_FILE),
        "-h",
        f"{url_of(address)}/",
    ]


def _netns_key(names: LabNames, where: str) -> tuple[int, int] | None:
    return namespaces.ns_key_of_kind(NETNS_DIR / names.client_netns(where), "net")


def running_pid(names: LabNames, record: MailDirectoryState) -> int | None:
    """The recorded slapd pid while that process runs in the directory's namespace."""
    pid = record.pid
    if pid is None or not processes.is_alive(pid):
        return None
    key = _netns_key(names, record.where)
    if key is None or namespaces.ns_key(f"/proc/{pid}/ns/net") != key:
        return None  # the pid now belongs to another process
    return pid


def _log_tail(record: MailDirectoryState) -> str:
    return processes.tail(Path(record.directory) / LOG_FILE)


def start(names: LabNames, state: LabState) -> subprocess.Popen[bytes] | None:
    """Start the recorded directory's slapd unless it runs, record its pid and wait
    until it answers; returns the ``Popen`` (to reap) or ``None`` if it ran already."""
    record = _record(state)
    if running_pid(names, record) is not None:
        return None
    directory = Path(record.directory)
    argv = clients.enter_argv(names, record.where, slapd_argv(directory, record.address))
    child = processes.spawn_detached(argv, directory / LOG_FILE)
    record.pid = child.pid
    save_state(names.state_file, state)
    deadline = time.monotonic() + START_TIMEOUT
    while not ldap.answers(url_of(record.address)):
        if not processes.is_alive(child.pid):
            raise LabError(
                f"slapd in {record.where} exited at start; its log:\n{_log_tail(record)}"
            )
        if time.monotonic() > deadline:
            processes.terminate([child.pid], 0.0)
            raise LabError(
                f"slapd in {record.where} did not answer within {START_TIMEOUT:g}s; its log:\n"
                f"{_log_tail(record)}"
            )
        time.sleep(0.05)
    return child


def stop(names: LabNames, state: LabState) -> None:
    """Stop the directory's slapd (SIGTERM, SIGKILL after ``STOP_TIMEOUT``), keeping its
    data; nothing if it does not run."""
    record = _record(state)
    pid = running_pid(names, record)
    if pid is not None and processes.terminate([pid], STOP_TIMEOUT):
        raise LabError(f"slapd in {record.where} (pid {pid}) survived SIGKILL")
    record.pid = None
    save_state(names.state_file, state)


def _record(state: LabState) -> MailDirectoryState:
    if state.mail is None:
        raise LabError(
            f"lab {state.name} has no mail organisation; add one with "
            f"`vigil lab up --mail` or Lab.add_mail_org()"
        )
    return state.mail.directory


def add(names: LabNames, where: str, uids: Iterable[str], mail_host: str) -> Secrets:
    """Create the directory's files and ``where`` (a lab client) if it is missing;
    returns the passwords. The caller records the directory and starts it."""
    if names.client_netns(where) not in clients.netns_names(names):
        clients.add(names, where)
    return create(directory_of(names), uids, mail_host)


def reload_state(names: LabNames) -> LabState:
    """The lab's state as it is on disk now (``LabError`` if the lab is not up)."""
    state = load_state(names.state_file)
    if state is None:
        raise LabError(f"lab {names.name} is not up (no {names.state_file})")
    return state
