"""The fixed names of the lab's mail organisation: domain, DNs, hosts, paths, ports.

Every lab server sees its own mail files at the same paths, as separate machines would:
``/etc/vigil-mail``, ``/var/lib/vigil-mail``, ``/var/log/vigil-mail`` and
``/run/vigil-mail`` are bind mounts, inside that server's mount namespace only, of its
directories ``ROOT/nodeK/mail/{etc,lib,log,run}``. The queue and the mailboxes live on
the shared disk, mounted at ``/srv/mail`` on the server that has the mail service.
"""

from __future__ import annotations

from pathlib import Path

DOMAIN = "lab.example"
BASE_DN = "dc=lab,dc=example"
USERS_DN = f"ou=people,{BASE_DN}"
SERVICES_DN = f"ou=services,{BASE_DN}"
ADMIN_DN = f"cn=admin,{BASE_DN}"
#: the service account: reads the directory, writes users' ``mailHost`` (the kit's)
SERVICE_DN = f"cn=vigil,{SERVICES_DN}"
#: the mailbox the mail kit's deep check sends to and reads
PROBE_UID = "vigil-probe"

#: the lab clients (namespaces of their own on the lab bridge) of the directory and the
#: front-end; BIND's default is client50
DIRECTORY_HOST = "client49"
FRONTEND_HOST = "client48"

LDAP_PORT = 389
SMTP_PORT = 25
IMAP_PORT = 143
POP3_PORT = 110

#: the one owner of every mailbox (no /etc/passwd entry: Dovecot's static userdb
#: takes the number, and nothing else needs a name for it)
MAIL_UID = 5000
MAIL_GID = 5000

# -- inside every lab server ------------------------------------------------------------
ETC_DIR = Path("/etc/vigil-mail")
LIB_DIR = Path("/var/lib/vigil-mail")
LOG_DIR = Path("/var/log/vigil-mail")
RUN_DIR = Path("/run/vigil-mail")
#: private directory name (under ``ROOT/nodeK/mail/``) → where the server sees it
PRIVATE_DIRS = {"etc": ETC_DIR, "lib": LIB_DIR, "log": LOG_DIR, "run": RUN_DIR}

POSTFIX_DIR = ETC_DIR / "postfix"
DOVECOT_DIR = ETC_DIR / "dovecot"
DOVECOT_CONF = DOVECOT_DIR / "dovecot.conf"
#: the Sieve script that discards a second copy of a message (see dovecot_conf)
DEDUP_SIEVE = DOVECOT_DIR / "dedup.sieve"
POSTFIX_DATA_DIR = LIB_DIR / "postfix"
DOVECOT_STATE_DIR = LIB_DIR / "dovecot"
DOVECOT_BASE_DIR = RUN_DIR / "dovecot"
LMTP_SOCKET = DOVECOT_BASE_DIR / "lmtp"
POSTFIX_LOG = LOG_DIR / "postfix.log"
DOVECOT_LOG = LOG_DIR / "dovecot.log"

#: the shared disk's mount point, and what lives on it
MAIL_ROOT = Path("/srv/mail")
QUEUE_DIR = MAIL_ROOT / "spool"
VMAIL_DIR = MAIL_ROOT / "vmail"

#: LDAP map files in a Postfix configuration directory
RECIPIENTS_MAP = "ldap-recipients.cf"
TRANSPORT_MAP = "ldap-transport.cf"
MAILBOXES_MAP = "ldap-mailboxes.cf"
DOVECOT_LDAP = "dovecot-ldap.conf.ext"


def server_commands() -> dict[str, list[list[str]]]:
    """The commands that start and stop the mail services inside a lab server, as an
    administrator types them. ``start``: Dovecot first, so its LMTP socket is there when
    Postfix delivers; ``stop``: Postfix first, so nothing is accepted that cannot be
    delivered."""
    postfix = ["postfix", "-c", str(POSTFIX_DIR)]
    dovecot = ["dovecot", "-c", str(DOVECOT_CONF)]
    return {
        "start": [dovecot, [*postfix, "start"]],
        "stop": [[*postfix, "stop"], [*dovecot, "stop"]],
    }
