"""Postfix configurations of the lab's mail organisation: the front-end and each server.

Pure text generation, no I/O. Both run outside any chroot (``chroot = n`` everywhere in
``master.cf``: the queue is not a chroot jail a second instance could share), log to a
file of their own (``maillog_file`` through ``postlogd``) and never ask DNS (a lab has
no DNS server for mail: next hops are bracketed addresses, ``smtpd_peername_lookup =
no``).

**The front-end** (the seed's smart host) accepts mail for the domain from anyone on the
lab network, refuses recipients the directory does not know (``relay_recipient_maps``)
and sends each recipient to its home server, ``smtp:[mailHost]:25`` (LDAP
``transport_maps``). Retry timings are realistic in kind but short, so a test sees a
re-homed user's deferred mail delivered within minutes, not hours:

- ``queue_run_delay = 30s``, ``minimal_backoff_time = 30s``: a deferred message is
  retried after 30 s at the earliest (Postfix's default: 300 s);
- ``maximal_backoff_time = 120s``: and at least every 2 minutes (default: 4000 s);
- ``smtp_connect_timeout = 5s``: a dead home server costs 5 s per attempt (default 30 s).

It keeps a fast-flush log for the domain (``fast_flush_domains``) and accepts ``ETRN``
from the lab network (``smtpd_etrn_restrictions``): after re-homing users, the mail kit
asks it (``ETRN lab.example``) to deliver the domain's deferred mail at once, without a
shell on the front-end. One caveat no setting changes: the queue manager keeps the route
of the recipient it resolved last for 30 s (hard-coded in Postfix), so right after a
re-homing that one recipient may go to its old home once more, and then at its next
retry (LAB-NOTES, "The mail stack").

**A server** accepts mail for the domain's users (``virtual_mailbox_maps`` from LDAP, any
user: the front-end routes, a server delivers) and hands it to Dovecot over LMTP. Its
queue is on the shared disk (``/srv/mail/spool``), its other state local.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vigil.lab.mail.paths import (
    DOMAIN,
    LMTP_SOCKET,
    MAILBOXES_MAP,
    POSTFIX_DATA_DIR,
    POSTFIX_LOG,
    QUEUE_DIR,
    RECIPIENTS_MAP,
    SERVICE_DN,
    SMTP_PORT,
    TRANSPORT_MAP,
    USERS_DN,
)

#: the front-end's retry timings (see the module docstring)
FRONTEND_TIMINGS = {
    "queue_run_delay": "30s",
    "minimal_backoff_time": "30s",
    "maximal_backoff_time": "120s",
    "smtp_connect_timeout": "5s",
}

# service, type, private, unpriv, chroot, wakeup, maxproc, command
_MASTER_SERVICES = (
    ("smtp", "inet", "n", "-", "n", "-", "-", "smtpd"),
    ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
    ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
    ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
    ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
    ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
    ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
    ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
    ("proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"),
    ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
    ("error", "unix", "-", "-", "n", "-", "-", "error"),
    ("retry", "unix", "-", "-", "n", "-", "-", "error"),
    ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
    ("lmtp", "unix", "-", "-", "n", "-", "-", "lmtp"),
    ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
    ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
    ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
)


@dataclass(frozen=True)
class PostfixConfig:
    """One Postfix configuration directory's files: ``main.cf`` parameters, and the
    LDAP map files (name → text; they hold the service account's password)."""

    main: dict[str, str]
    maps: dict[str, str]

    def main_cf(self) -> str:
        lines = "".join(f"{name} = {value}\n" for name, value in self.main.items())
        return "# written by the vigil lab\n" + lines


def master_cf() -> str:
    """``master.cf``: the services a relay and a delivering server need, none chrooted."""
    lines = ["# written by the vigil lab: every service outside a chroot (chroot = n)"]
    lines += ["{:<11}{:<11}{:<8}{:<8}{:<8}{:<8}{:<8}{}".format(*row) for row in _MASTER_SERVICES]
    return "\n".join(lines) + "\n"


def ldap_map(
    directory_url: str, bind_password: str, result_attribute: str, result_format: str = ""
) -> str:
    """A Postfix LDAP table that finds a user of the domain by ``mail`` (bound as the
    service account) and returns ``result_attribute``, formatted by ``result_format``."""
    text = (
        f"server_host = {directory_url}\n"
        "version = 3\n"
        "timeout = 5\n"
        "bind = yes\n"
        f"bind_dn = {SERVICE_DN}\n"
        f"bind_pw = {bind_password}\n"
        f"search_base = {USERS_DN}\n"
        "scope = one\n"
        # only addresses of the domain are looked up at all
        f"domain = {DOMAIN}\n"
        "query_filter = (&(objectClass=inetLocalMailRecipient)(mail=%s))\n"
        f"result_attribute = {result_attribute}\n"
    )
    return text + (f"result_format = {result_format}\n" if result_format else "")


def _common(hostname: str, networks: str, log_file: Path) -> dict[str, str]:
    return {
        "compatibility_level": "3.6",
        "myhostname": hostname,
        "mydomain": DOMAIN,
        "myorigin": "$mydomain",
        "mydestination": "",
        "inet_protocols": "ipv4",
        "mynetworks": f"127.0.0.0/8 {networks}",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "maillog_file": str(log_file),
        "maillog_file_prefixes": str(log_file.parent),
        "smtp_dns_support_level": "disabled",
        "lmtp_dns_support_level": "disabled",
        "smtpd_peername_lookup": "no",
        "alias_maps": "",
        "alias_database": "",
        "local_recipient_maps": "",
        "local_transport": "error:no local mailboxes on this host",
        "biff": "no",
        "append_dot_mydomain": "no",
        # every message gets a Message-ID at the first hop, whoever sent it: the mail
        # kit's duplicate suppression after a failover goes by it (docs/kits/mail.md)
        "always_add_missing_headers": "yes",
    }


def frontend(
    *,
    config_dir: Path,
    state_dir: Path,
    log_file: Path,
    address: str,
    networks: str,
    directory_url: str,
    bind_password: str,
) -> PostfixConfig:
    """The front-end's configuration: listening on ``address``, queue and data under
    ``state_dir``, maps in ``config_dir``; ``networks``: the lab subnet."""
    main = _common(f"frontend.{DOMAIN}", networks, log_file)
    main.update(
        {
            "inet_interfaces": address,
            "queue_directory": str(state_dir / "spool"),
            "data_directory": str(state_dir / "data"),
            "relay_domains": DOMAIN,
            "relay_recipient_maps": f"ldap:{config_dir / RECIPIENTS_MAP}",
            "transport_maps": f"ldap:{config_dir / TRANSPORT_MAP}",
            "fast_flush_domains": "$relay_domains",
            "smtpd_etrn_restrictions": "permit_mynetworks, reject",
            **FRONTEND_TIMINGS,
        }
    )
    maps = {
        RECIPIENTS_MAP: ldap_map(directory_url, bind_password, "mail"),
        TRANSPORT_MAP: ldap_map(directory_url, bind_password, "mailHost", f"smtp:[%s]:{SMTP_PORT}"),
    }
    return PostfixConfig(main, maps)


def server(
    *, server: str, networks: str, directory_url: str, bind_password: str, config_dir: Path
) -> PostfixConfig:
    """A lab server's configuration, for ``config_dir`` (``/etc/vigil-mail/postfix``
    inside the server): every address of the server (``inet_interfaces = all``, so an
    address added later, a switchable one, is served too), queue on the shared disk."""
    main = _common(f"{server}.{DOMAIN}", networks, POSTFIX_LOG)
    main.update(
        {
            "inet_interfaces": "all",
            "queue_directory": str(QUEUE_DIR),
            "data_directory": str(POSTFIX_DATA_DIR),
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_maps": f"ldap:{config_dir / MAILBOXES_MAP}",
            "virtual_transport": f"lmtp:unix:{LMTP_SOCKET}",
        }
    )
    maps = {MAILBOXES_MAP: ldap_map(directory_url, bind_password, "mail")}
    return PostfixConfig(main, maps)
