"""What the lab's mail organisation tells its users: ``MailOrgInfo`` and its parts.

All of it is read back from ``lab.json`` and the directory's password files, so another
process (a test, a benchmark, the kit's tests) can use an organisation this one built.
Passwords are fields with ``repr=False``: printing an info never shows one.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ldap3

from vigil.errors import LabError
from vigil.lab.disk import SharedDiskInfo
from vigil.lab.mail import clients, directory, ldap, paths
from vigil.lab.naming import LabNames, is_client_name, is_server_name


@dataclass(frozen=True)
class MailUser:
    """A mailbox of the organisation: its uid, address, password and DN."""

    name: str
    address: str
    password: str = field(repr=False)
    dn: str


@dataclass(frozen=True)
class DirectoryInfo:
    """The organisation's LDAP directory (slapd in a lab client's namespace).

    ``bind_dn`` is the service account (reads everything but password hashes, writes
    ``mailHost``); ``admin_dn`` the rootdn. Their passwords are also in
    ``bind_password_file`` and ``admin_password_file`` (mode 0600), for configurations
    that take a file; the users' in ``users_password_file`` (``uid password`` lines).
    """

    url: str
    address: str
    port: int
    where: str
    base_dn: str
    users_dn: str
    admin_dn: str
    bind_dn: str
    admin_password: str = field(repr=False)
    bind_password: str = field(repr=False)
    admin_password_file: Path
    bind_password_file: Path
    users_password_file: Path
    config_file: Path
    log_file: Path
    names: LabNames = field(repr=False)

    def connect(
        self, dn: str | None = None, password: str | None = None
    ) -> AbstractContextManager[ldap3.Connection]:
        """An ldap3 ``Connection`` bound as ``dn`` (default: the service account), closed
        when its ``with`` block ends. ``LdapRefused`` if the bind fails."""
        if dn is None:
            dn, password = self.bind_dn, self.bind_password
        return ldap.connection(self.url, dn, password)

    def mail_host(self, user: MailUser | str) -> str | None:
        """The user's ``mailHost`` (its home server's value), read as the service account."""
        with self.connect() as conn:
            return ldap.mail_host(conn, _uid(user))

    def set_mail_host(self, user: MailUser | str, value: str) -> None:
        """Re-home the user: set its ``mailHost`` to ``value``, as the service account."""
        with self.connect() as conn:
            ldap.set_mail_host(conn, _uid(user), value)

    def mail_hosts(self) -> dict[str, str | None]:
        """uid → ``mailHost`` of every mail user (the probe user too)."""
        with self.connect() as conn:
            return ldap.mail_hosts(conn)

    def answers(self) -> bool:
        """Whether the directory answers now."""
        return ldap.answers(self.url)

    def stop(self) -> None:
        """Stop slapd (an outage); its data stays. Nothing if it is not running."""
        directory.stop(self.names, directory.reload_state(self.names))

    def start(self) -> None:
        """Start slapd again on its data and wait until it answers (nothing if running)."""
        directory.start(self.names, directory.reload_state(self.names))


@dataclass(frozen=True)
class FrontendInfo:
    """The front-end: Postfix relay (SMTP, ETRN) and Dovecot proxy (IMAP, POP3)."""

    address: str
    where: str
    postfix_dir: Path
    dovecot_conf: Path
    postfix_log: Path
    dovecot_log: Path
    smtp_port: int = paths.SMTP_PORT
    imap_port: int = paths.IMAP_PORT
    pop3_port: int = paths.POP3_PORT


@dataclass(frozen=True)
class MailOrgInfo:
    """The lab's mail organisation: domain, directory, front-end, users and the paths
    the same on every server. Its client helpers (``send``, ``fetch``, ``pop3_list``,
    ``etrn``) run inside a lab client or server (``host``: ``client1``, ``node2``...)
    and talk to the front-end unless ``via`` names another address."""

    domain: str
    primary: str
    servers: tuple[str, ...]
    directory: DirectoryInfo
    frontend: FrontendInfo
    users: tuple[MailUser, ...] = field(repr=False)
    probe_user: MailUser
    disk: SharedDiskInfo
    names: LabNames = field(repr=False)
    postfix_dir: Path = paths.POSTFIX_DIR
    dovecot_conf: Path = paths.DOVECOT_CONF
    mail_root: Path = paths.MAIL_ROOT
    queue_dir: Path = paths.QUEUE_DIR
    vmail_dir: Path = paths.VMAIL_DIR
    #: the commands that start and stop the mail services in a server (see ``paths``)
    commands: dict[str, list[list[str]]] = field(default_factory=paths.server_commands)

    def to_dict(self) -> dict[str, Any]:
        """What an administrator needs to know, JSON-ready, without any password (the
        password files are named instead)."""
        directory, front = self.directory, self.frontend
        return {
            "domain": self.domain,
            "primary": self.primary,
            "directory": {
                "url": directory.url,
                "where": directory.where,
                "base_dn": directory.base_dn,
                "users_dn": directory.users_dn,
                "bind_dn": directory.bind_dn,
                "bind_password_file": str(directory.bind_password_file),
                "admin_dn": directory.admin_dn,
                "admin_password_file": str(directory.admin_password_file),
                "config_file": str(directory.config_file),
                "log_file": str(directory.log_file),
            },
            "frontend": {
                "address": front.address,
                "where": front.where,
                "ports": {
                    "smtp": front.smtp_port,
                    "imap": front.imap_port,
                    "pop3": front.pop3_port,
                },
                "postfix_dir": str(front.postfix_dir),
                "dovecot_conf": str(front.dovecot_conf),
                "postfix_log": str(front.postfix_log),
                "dovecot_log": str(front.dovecot_log),
            },
            "users": len(self.users),
            "users_password_file": str(directory.users_password_file),
            "probe_user": self.probe_user.address,
            "home_values": {server: self.home_value(server) for server in self.servers},
            "postfix_dir": str(self.postfix_dir),
            "dovecot_conf": str(self.dovecot_conf),
            "mail_root": str(self.mail_root),
            "disk": {"image": str(self.disk.image), "devices": dict(self.disk.devices)},
            "commands": {k: [" ".join(argv) for argv in v] for k, v in self.commands.items()},
        }

    def home_value(self, server: str) -> str:
        """``mailHost`` of users homed on ``server``: its lab address."""
        if server not in self.servers:
            raise LabError(f"{server!r} has no mail configuration (servers: {self.servers})")
        return self.names.address(server)

    def user(self, name: str) -> MailUser:
        """The user ``name`` (uid or address), the probe user included."""
        for user in (*self.users, self.probe_user):
            if name in (user.name, user.address):
                return user
        raise LabError(f"the lab's mail organisation has no user {name!r}")

    def netns(self, host: str) -> Path:
        """The network namespace file of a lab client or server."""
        if is_client_name(host):
            return Path("/run/netns") / self.names.client_netns(host)
        if is_server_name(host):
            return self.names.netns_path(host)
        raise LabError(f"{host!r} is neither a lab client (clientK) nor a server (nodeK)")

    def send(
        self,
        host: str,
        to: MailUser | str | list[MailUser | str],
        subject: str,
        body: str = "",
        *,
        via: str | None = None,
        port: int = paths.SMTP_PORT,
        sender: str | None = None,
        message_id: str | None = None,
    ) -> str:
        """Send a message from ``host`` over SMTP (to the front-end unless ``via``);
        returns its ``Message-ID``. ``MailClientError`` with the server's reply unless
        every step was answered 250."""
        recipients = [_address(r) for r in (to if isinstance(to, list) else [to])]
        message_id, _ = clients.send(
            self.netns(host),
            via=via or self.frontend.address,
            port=port,
            sender=sender or f"tester@{self.domain}",
            to=recipients,
            subject=subject,
            body=body or subject,
            message_id=message_id,
        )
        return message_id

    def fetch(
        self, host: str, user: MailUser | str, *, via: str | None = None, port: int = 143
    ) -> list[tuple[str, str]]:
        """(Message-ID, Subject) of each message in ``user``'s INBOX, over IMAP from
        ``host`` (through the front-end's proxy unless ``via``)."""
        found = self.user(user) if isinstance(user, str) else user
        return clients.fetch(
            self.netns(host),
            via=via or self.frontend.address,
            port=port,
            login=found.address,
            password=found.password,
        )

    def pop3_list(
        self, host: str, user: MailUser | str, *, via: str | None = None, port: int = 110
    ) -> list[tuple[str, str]]:
        """(Message-ID, Subject) of each message in ``user``'s maildrop, over POP3."""
        found = self.user(user) if isinstance(user, str) else user
        return clients.pop3_list(
            self.netns(host),
            via=via or self.frontend.address,
            port=port,
            login=found.address,
            password=found.password,
        )

    def etrn(self, host: str, *, via: str | None = None, port: int = paths.SMTP_PORT) -> str:
        """Ask the front-end (or ``via``) from ``host`` to deliver the domain's deferred
        mail now (``ETRN lab.example``); returns its reply."""
        return clients.etrn(
            self.netns(host), via=via or self.frontend.address, port=port, domain=self.domain
        )


def _uid(user: MailUser | str) -> str:
    return user.name if isinstance(user, MailUser) else user.partition("@")[0]


def _address(user: MailUser | str) -> str:
    if isinstance(user, MailUser):
        return user.address
    return user if "@" in user else f"{user}@{paths.DOMAIN}"
