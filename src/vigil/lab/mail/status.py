"""What runs of the lab's mail organisation: for ``vigil lab status``.

Found from ``lab.json`` and the system: the recorded slapd and front-end pids (trusted
while they run in their recorded namespaces), and per server whether the shared disk is
mounted at ``/srv/mail`` in its mount namespace and whether a Postfix master or a Dovecot
runs inside it.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vigil.lab import namespaces
from vigil.lab.files import LabState
from vigil.lab.mail import directory, frontend
from vigil.lab.mail.paths import MAIL_ROOT
from vigil.lab.naming import LabNames, server_number

#: what ``/proc/PID/comm`` says for a Postfix master and a Dovecot master
_DAEMONS = {"master": "postfix", "dovecot": "dovecot"}


@dataclass(frozen=True)
class MailServerStatus:
    """One server: whether the mail store is mounted there, and which daemons run."""

    name: str
    store_mounted: bool
    postfix: bool
    dovecot: bool


@dataclass(frozen=True)
class MailStatus:
    """The organisation: its directory and front-end processes, and each server."""

    directory_url: str
    directory_pid: int | None
    frontend_address: str | None
    frontend_pids: tuple[int, ...]
    servers: tuple[MailServerStatus, ...]


def _daemons_in(mount_ns: tuple[int, int] | None) -> set[str]:
    """Which of Postfix and Dovecot have a master process in mount namespace ``mount_ns``."""
    found: set[str] = set()
    if mount_ns is None:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        if comm in _DAEMONS and namespaces.ns_key(f"/proc/{entry}/ns/mnt") == mount_ns:
            found.add(_DAEMONS[comm])
    return found


def _store_mounted(names: LabNames, server: str) -> bool:
    mount_ns = names.mount_ns_file(server)
    if namespaces.ns_key_of_kind(mount_ns, "mnt") is None:
        return False
    done = subprocess.run(
        ["nsenter", f"--mount={mount_ns}", "--", "mountpoint", "-q", str(MAIL_ROOT)],
        capture_output=True,
        check=False,
        timeout=10,
    )
    return done.returncode == 0


def mail_status(names: LabNames, state: LabState | None) -> MailStatus | None:
    """The mail organisation's status, ``None`` if the lab has none."""
    if state is None or state.mail is None:
        return None
    mail = state.mail
    rows = []
    for server in sorted(mail.servers, key=server_number):
        key = namespaces.ns_key_of_kind(names.mount_ns_file(server), "mnt")
        running = _daemons_in(key)
        rows.append(
            MailServerStatus(
                name=server,
                store_mounted=_store_mounted(names, server),
                postfix="postfix" in running,
                dovecot="dovecot" in running,
            )
        )
    front = mail.frontend
    return MailStatus(
        directory_url=directory.url_of(mail.directory.address),
        directory_pid=directory.running_pid(names, mail.directory),
        frontend_address=front.address if front else None,
        frontend_pids=tuple(frontend.running_pids(names, front)) if front else (),
        servers=tuple(rows),
    )
