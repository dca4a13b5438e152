"""Dovecot configurations of the lab's mail organisation: the front-end proxy and each
server. Pure text generation, no I/O.

Both check passwords by binding to the directory as the user (``auth_bind``), so no
password hash is ever read, and accept plaintext logins without TLS (a lab network).
A login without a domain gets ``@lab.example`` (``auth_default_realm``): ``user001`` and
``user001@lab.example`` are the same user, with one mailbox.

**The proxy** (front-end) looks the user up as the service account, takes ``mailHost``
as the host to proxy to (``pass_attrs = mail=user, mailHost=host, =proxy=y``) and
forwards the login, with the password the client gave, to that host's IMAP or POP3 port.
Nothing is cached: a re-homed user's next login goes to the new home at once.

**A server** binds the user's DN directly (``auth_bind_userdn``), stores every mailbox
under one numeric uid/gid (a static userdb; no /etc/passwd entry is needed) on the
shared disk, ``maildir:/srv/mail/vmail/DOMAIN/USER`` with its index and control files
there too, and listens for LMTP on a unix socket only Postfix may use.
"""

from __future__ import annotations

from pathlib import Path

from vigil.lab.mail.paths import (
    DEDUP_SIEVE,
    DOMAIN,
    DOVECOT_BASE_DIR,
    DOVECOT_LOG,
    DOVECOT_STATE_DIR,
    MAIL_GID,
    MAIL_UID,
    SERVICE_DN,
    USERS_DN,
    VMAIL_DIR,
)

#: seconds the proxy waits for a home server's connection before failing the login
PROXY_TIMEOUT = 5
_MAILDIR = f"{VMAIL_DIR}/%d/%n"
#: where each user's mail, index and control files are (all on the shared disk)
MAIL_LOCATION = f"maildir:{_MAILDIR}:INDEX={_MAILDIR}:CONTROL={_MAILDIR}"

_NO_TLS_LISTENERS = (
    "service imap-login {\n  inet_listener imaps {\n    port = 0\n  }\n}\n"
    "service pop3-login {\n  inet_listener pop3s {\n    port = 0\n  }\n}\n"
)


def _common(
    *, protocols: str, listen: str, base_dir: Path, state_dir: Path, log_file: Path, name: str
) -> str:
    return (
        "# written by the vigil lab\n"
        f"protocols = {protocols}\n"
        f"listen = {listen}\n"
        f"base_dir = {base_dir}\n"
        f"state_dir = {state_dir}\n"
        f"instance_name = {name}\n"
        f"log_path = {log_file}\n"
        "ssl = no\n"
        "disable_plaintext_auth = no\n"
        "auth_mechanisms = plain login\n"
        f"auth_default_realm = {DOMAIN}\n"
    )


def _passdb(ldap_file: Path) -> str:
    return f"passdb {{\n  driver = ldap\n  args = {ldap_file}\n}}\n"


def proxy(
    *, address: str, base_dir: Path, state_dir: Path, log_file: Path, ldap_file: Path, name: str
) -> str:
    """The front-end proxy's ``dovecot.conf`` (IMAP and POP3 on ``address``)."""
    return (
        _common(
            protocols="imap pop3",
            listen=address,
            base_dir=base_dir,
            state_dir=state_dir,
            log_file=log_file,
            name=name,
        )
        + _passdb(ldap_file)
        # a proxy never opens a mailbox, but Dovecot wants a userdb
        + "userdb {\n  driver = static\n  args = allow_all_users=yes\n}\n"
        + _NO_TLS_LISTENERS
    )


def proxy_ldap(directory_url: str, bind_password: str) -> str:
    """The proxy's LDAP passdb: find the user as the service account, bind as the user,
    proxy to its ``mailHost``."""
    return (
        f"uris = {directory_url}\n"
        "ldap_version = 3\n"
        f"dn = {SERVICE_DN}\n"
        f"dnpass = {bind_password}\n"
        "auth_bind = yes\n"
        f"base = {USERS_DN}\n"
        "scope = onelevel\n"
        "pass_filter = (&(objectClass=inetLocalMailRecipient)(mail=%u))\n"
        f"pass_attrs = mail=user, mailHost=host, =proxy=y, =proxy_timeout={PROXY_TIMEOUT}\n"
    )


def server(*, ldap_file: Path, frontend_address: str) -> str:
    """A lab server's ``dovecot.conf`` (IMAP, POP3 and LMTP); logins from the front-end
    proxy carry the client's own address (``login_trusted_networks``)."""
    return (
        _common(
            protocols="imap pop3 lmtp",
            listen="*",
            base_dir=DOVECOT_BASE_DIR,
            state_dir=DOVECOT_STATE_DIR,
            log_file=DOVECOT_LOG,
            name="vigil-mail",
        )
        + f"login_trusted_networks = {frontend_address}\n"
        + f"mail_location = {MAIL_LOCATION}\n"
        + f"first_valid_uid = {MAIL_UID}\nlast_valid_uid = {MAIL_UID}\n"
        + f"first_valid_gid = {MAIL_GID}\nlast_valid_gid = {MAIL_GID}\n"
        + _passdb(ldap_file)
        + "userdb {\n  driver = static\n"
        + f"  args = uid={MAIL_UID} gid={MAIL_GID} home={_MAILDIR} allow_all_users=yes\n}}\n"
        + "service lmtp {\n  unix_listener lmtp {\n"
        + "    user = postfix\n    group = postfix\n    mode = 0600\n  }\n}\n"
        + f"protocol lmtp {{\n  postmaster_address = postmaster@{DOMAIN}\n"
        + "  mail_plugins = $mail_plugins sieve\n}\n"
        + f"plugin {{\n  sieve_before = {DEDUP_SIEVE}\n}}\n"
        + _NO_TLS_LISTENERS
    )


#: the Sieve script every delivery runs first: a message whose Message-ID this mailbox
#: has had already is discarded (RFC 7352 duplicate; the record is kept in the user's home
#: on the mail store, so it moves with the hierarchy). SMTP has a window in which a message
#: is queued on the server but its 250 never reaches the sender (the server was fenced
#: right then): the sender sends it again, and without this the user would get it twice.
DEDUP_SCRIPT = """require ["duplicate"];
if duplicate {
  discard;
  stop;
}
"""


def server_ldap(directory_url: str) -> str:
    """A server's LDAP passdb: bind as the user's DN (no search, no service account)."""
    return (
        f"uris = {directory_url}\n"
        "ldap_version = 3\n"
        "auth_bind = yes\n"
        f"auth_bind_userdn = uid=%n,{USERS_DN}\n"
        f"base = {USERS_DN}\n"
    )
