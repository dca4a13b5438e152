"""Building the lab's mail organisation, reading it back, and stopping it at teardown.

``add`` (``Lab.add_mail_org``), in order, recording each part in ``lab.json`` as soon
as it exists (so ``Lab.down`` finds it after a failure or a crash):

1. the directory: files, ``slapadd``, slapd started in its lab client;
2. the front-end: Postfix relay and Dovecot proxy started in theirs;
3. every server: private mail directories, configurations, bind mounts;
4. a shared disk, mounted on the primary only at ``/srv/mail``, with the queue and the
   mailbox root on it; left mounted there with Postfix and Dovecot stopped: the state in
   which an administrator creates the mail resource on the primary;
5. the Debian packages' systemd units (postfix, dovecot, slapd) disabled, so nothing
   but vigil starts these services.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from vigil.errors import LabError
from vigil.lab import disk, processes
from vigil.lab.files import (
    LabState,
    MailDirectoryState,
    MailFrontendState,
    MailOrgState,
    save_state,
)
from vigil.lab.mail import directory, frontend, servers
from vigil.lab.mail.directory_conf import user_address, user_dn, user_uid
from vigil.lab.mail.info import DirectoryInfo, FrontendInfo, MailOrgInfo, MailUser
from vigil.lab.mail.paths import (
    ADMIN_DN,
    BASE_DN,
    DIRECTORY_HOST,
    DOMAIN,
    FRONTEND_HOST,
    LDAP_PORT,
    PROBE_UID,
    SERVICE_DN,
    USERS_DN,
)
from vigil.lab.naming import LabNames, is_client_name, server_number

MAX_USERS = 100_000
#: the shared disk's default size (MiB): the queue and the mailboxes
DEFAULT_DISK_MB = 128


@dataclass(frozen=True)
class Built:
    """What ``add`` made: the organisation, the processes it started (to reap) and the
    system units it disabled."""

    info: MailOrgInfo
    children: list[subprocess.Popen[bytes]]
    disabled_units: list[str]


def _check(state: LabState, users: int, primary: str, hosts: tuple[str, str]) -> None:
    if state.mail is not None:
        raise LabError(f"lab {state.name} has a mail organisation already")
    if primary not in state.servers:
        raise LabError(f"lab {state.name} has no server {primary!r} to be the mail primary")
    if not 1 <= users <= MAX_USERS:
        raise LabError(f"a mail organisation has 1 to {MAX_USERS} users, not {users}")
    for host in hosts:
        if not is_client_name(host):
            raise LabError(f"{host!r} is not a lab client name (client1..client50)")
    if hosts[0] == hosts[1]:
        raise LabError("the directory and the front-end need namespaces of their own")
    if any(record.where in hosts for record in state.dns_servers.values()):
        raise LabError(f"a DNS server of lab {state.name} runs in {' or '.join(hosts)} already")


def add(
    names: LabNames,
    enter: dict[str, list[str]],
    *,
    users: int,
    primary: str,
    directory_host: str = DIRECTORY_HOST,
    frontend_host: str = FRONTEND_HOST,
    disk_mb: int = DEFAULT_DISK_MB,
    disable_units: bool = True,
) -> Built:
    """See the module docstring; ``enter``: server → its ``nsenter ... --`` prefix.
    On failure, what was made stays recorded, for ``Lab.down``."""
    state = directory.reload_state(names)
    _check(state, users, primary, (directory_host, frontend_host))
    uids = [user_uid(k, users) for k in range(1, users + 1)] + [PROBE_UID]
    secrets = directory.add(names, directory_host, uids, servers.home_value(names, primary))
    mail = MailOrgState(
        domain=DOMAIN,
        primary=primary,
        users=users,
        directory=MailDirectoryState(
            where=directory_host,
            address=names.client_address(directory_host),
            directory=str(directory.directory_of(names)),
        ),
    )
    state.mail = mail
    save_state(names.state_file, state)
    children = [c for c in [directory.start(names, state)] if c is not None]
    children += _start_frontend(names, state, mail, frontend_host, secrets.service)
    for server in sorted(state.servers, key=server_number):
        _configure_server(names, state, mail, server, enter[server], secrets.service)
    made = disk.add(names, state, disk_mb, mmp=True)
    mail.disk_image = str(made.image)
    save_state(names.state_file, state)
    servers.create_store(primary, enter[primary], made.device(primary))
    disabled = servers.disable_system_units() if disable_units else []
    return Built(recorded(names), children, disabled)


def _start_frontend(
    names: LabNames, state: LabState, mail: MailOrgState, where: str, bind_password: str
) -> list[subprocess.Popen[bytes]]:
    """Record, configure and start the front-end in lab client ``where``."""
    files = frontend.files_of(names)
    record = MailFrontendState(
        where=where, address=names.client_address(where), directory=str(files.directory)
    )
    mail.frontend = record
    save_state(names.state_file, state)
    frontend.write_config(
        files,
        address=record.address,
        networks=state.subnet,
        directory_url=directory.url_of(mail.directory.address),
        bind_password=bind_password,
        instance=f"vigil-{names.name}-frontend",
    )
    children = frontend.start(names, record)
    save_state(names.state_file, state)  # with the daemons' pids
    return children


def _configure_server(
    names: LabNames,
    state: LabState,
    mail: MailOrgState,
    server: str,
    enter: list[str],
    bind_password: str,
) -> Path:
    """Write ``server``'s configurations, mount its private directories, record it."""
    if mail.frontend is None:
        raise LabError(f"the mail organisation of lab {state.name} has no front-end yet")
    private = servers.write_config(
        names,
        server,
        networks=state.subnet,
        directory_url=directory.url_of(mail.directory.address),
        bind_password=bind_password,
        frontend_address=mail.frontend.address,
    )
    servers.bind_mounts(server, enter, private)
    servers.compile_sieve(server, enter)
    if server not in mail.servers:
        mail.servers.append(server)
        save_state(names.state_file, state)
    return private


def prepare_server(names: LabNames, server: str, enter: list[str]) -> Path:
    """Make ``server`` ready to take the mail service over: its configurations written
    again from the recorded organisation and its private directories mounted (both are
    normally there already). Returns its private mail directory."""
    state = directory.reload_state(names)
    mail = _mail(state)
    if server not in state.servers:
        raise LabError(f"lab {state.name} has no server {server!r}")
    secrets = directory.read_secrets(Path(mail.directory.directory))
    return _configure_server(names, state, mail, server, enter, secrets.service)


def _mail(state: LabState) -> MailOrgState:
    if state.mail is None:
        raise LabError(
            f"lab {state.name} has no mail organisation; build one with `vigil lab up "
            f"--mail` or Lab.add_mail_org()"
        )
    return state.mail


def recorded(names: LabNames) -> MailOrgInfo:
    """The organisation recorded in ``lab.json`` (passwords from their files)."""
    state = directory.reload_state(names)
    mail = _mail(state)
    if mail.frontend is None or mail.disk_image is None:
        raise LabError(f"the mail organisation of lab {state.name} is not complete")
    directory_dir = Path(mail.directory.directory)
    secrets = directory.read_secrets(directory_dir)
    everyone = [
        MailUser(uid, user_address(uid), password, user_dn(uid))
        for uid, password in secrets.users.items()
    ]
    disks = [disk.info_of(d) for d in state.shared_disks if d.image == mail.disk_image]
    if not disks:
        raise LabError(f"the mail organisation's disk {mail.disk_image} is not recorded")
    files = frontend.FrontendFiles(Path(mail.frontend.directory))
    return MailOrgInfo(
        domain=mail.domain,
        primary=mail.primary,
        servers=tuple(mail.servers),
        directory=DirectoryInfo(
            url=directory.url_of(mail.directory.address),
            address=mail.directory.address,
            port=LDAP_PORT,
            where=mail.directory.where,
            base_dn=BASE_DN,
            users_dn=USERS_DN,
            admin_dn=ADMIN_DN,
            bind_dn=SERVICE_DN,
            admin_password=secrets.admin,
            bind_password=secrets.service,
            admin_password_file=directory_dir / directory.ADMIN_SECRET,
            bind_password_file=directory_dir / directory.SERVICE_SECRET,
            users_password_file=directory_dir / directory.USERS_SECRET,
            config_file=directory_dir / directory.CONFIG_FILE,
            log_file=directory_dir / directory.LOG_FILE,
            names=names,
        ),
        frontend=FrontendInfo(
            address=mail.frontend.address,
            where=mail.frontend.where,
            postfix_dir=files.postfix_dir,
            dovecot_conf=files.dovecot_conf,
            postfix_log=files.postfix_log,
            dovecot_log=files.dovecot_log,
        ),
        users=tuple(u for u in everyone if u.name != PROBE_UID),
        probe_user=next(u for u in everyone if u.name == PROBE_UID),
        disk=disks[0],
        names=names,
    )


def stop_recorded(names: LabNames, state: LabState) -> list[str]:
    """Teardown: stop the recorded slapd and front-end daemons that still run (a pid is
    trusted only while it runs in its recorded namespace); messages for survivors."""
    mail = state.mail
    if mail is None:
        return []
    problems = []
    pid = directory.running_pid(names, mail.directory)
    if pid is not None and processes.terminate([pid], directory.STOP_TIMEOUT):
        problems.append(f"slapd of the mail organisation (pid {pid}): survived SIGKILL")
    if mail.frontend is not None:
        problems += frontend.stop(names, mail.frontend)
    return problems
