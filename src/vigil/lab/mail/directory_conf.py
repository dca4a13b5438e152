"""What the lab's directory server holds: ``slapd.conf`` and the LDIF of its entries.

Pure text generation, no I/O. The tree (base ``dc=lab,dc=example``)::

    dc=lab,dc=example
      cn=admin                      the rootdn (not an entry: slapd.conf's rootdn/rootpw)
      ou=people
        uid=user001 ...             inetOrgPerson + inetLocalMailRecipient: mail, mailHost
        uid=vigil-probe             the mail kit's probe mailbox, like any user
      ou=services
        cn=vigil                    the service account (applicationProcess +
                                    simpleSecurityObject)

Access: password hashes are for binding only (anonymous may ``auth``; a user may change
their own); the service account writes ``mailHost`` and reads everything else; a bound
user reads the directory but writes nothing else; anonymous reads nothing. Logins are
checked by binding as the user, so no program needs to read a hash: the service account
is not given them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from vigil.lab.mail.paths import ADMIN_DN, BASE_DN, DOMAIN, SERVICE_DN, SERVICES_DN, USERS_DN

SCHEMA_DIR = Path("/etc/ldap/schema")
#: misc: inetLocalMailRecipient and mailHost; the others are what inetOrgPerson needs
SCHEMAS = ("core", "cosine", "inetorgperson", "misc")
MODULE_DIR = Path("/usr/lib/ldap")
#: the mdb map's size limit (sparse: a lab with 10,000 users uses a few MB of it)
MDB_MAXSIZE = 1 << 30


def new_password() -> str:
    """A fresh random password (96 bits, URL-safe)."""
    return secrets.token_urlsafe(12)


def ssha(password: str) -> str:
    """``password`` hashed as OpenLDAP's ``{SSHA}`` (salted SHA-1): what slapd checks a
    bind against."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def user_uid(number: int, count: int) -> str:
    """The uid of user ``number`` of ``count``: ``user001``, or as many digits as the
    largest number needs (``user00001`` in a directory of 10,000)."""
    return f"user{number:0{max(3, len(str(count)))}d}"


def user_dn(uid: str) -> str:
    return f"uid={uid},{USERS_DN}"


def user_address(uid: str) -> str:
    return f"{uid}@{DOMAIN}"


def slapd_conf(directory: Path, admin_password: str) -> str:
    """``slapd.conf`` for a directory whose files live in ``directory`` (data in
    ``directory/data``)."""
    includes = "".join(f"include {SCHEMA_DIR / name}.schema\n" for name in SCHEMAS)
    return (
        "# the vigil lab's directory (OpenLDAP, static configuration)\n"
        f"{includes}"
        f"pidfile {directory / 'slapd.pid'}\n"
        f"argsfile {directory / 'slapd.args'}\n"
        f"modulepath {MODULE_DIR}\n"
        "moduleload back_mdb\n"
        "\n"
        "database mdb\n"
        f'suffix "{BASE_DN}"\n'
        f'rootdn "{ADMIN_DN}"\n'
        f"rootpw {ssha(admin_password)}\n"
        f"directory {directory / 'data'}\n"
        f"maxsize {MDB_MAXSIZE}\n"
        "index objectClass eq\n"
        "index uid,mail,mailHost eq\n"
        # the kit reads every user at once (10,000 in a bench): no size limit for it
        f'limits dn.exact="{SERVICE_DN}" size=unlimited time=unlimited\n'
        "\n"
        "access to attrs=userPassword\n"
        "  by self write\n"
        "  by anonymous auth\n"
        "  by * none\n"
        "access to attrs=mailHost\n"
        f'  by dn.exact="{SERVICE_DN}" write\n'
        "  by users read\n"
        "  by * none\n"
        "access to *\n"
        f'  by dn.exact="{SERVICE_DN}" read\n'
        "  by users read\n"
        "  by * none\n"
    )


def _entry(dn: str, attributes: Iterable[tuple[str, str]]) -> str:
    return f"dn: {dn}\n" + "".join(f"{name}: {value}\n" for name, value in attributes) + "\n"


def base_entries(service_password: str) -> str:
    """The suffix, ``ou=people``, ``ou=services`` and the service account."""
    return (
        _entry(
            BASE_DN,
            [
                ("objectClass", "dcObject"),
                ("objectClass", "organization"),
                ("dc", "lab"),
                ("o", DOMAIN),
            ],
        )
        + _entry(USERS_DN, [("objectClass", "organizationalUnit"), ("ou", "people")])
        + _entry(SERVICES_DN, [("objectClass", "organizationalUnit"), ("ou", "services")])
        + _entry(
            SERVICE_DN,
            [
                ("objectClass", "applicationProcess"),
                ("objectClass", "simpleSecurityObject"),
                ("cn", "vigil"),
                ("description", "vigil's mail kit: reads users, re-homes them (mailHost)"),
                ("userPassword", ssha(service_password)),
            ],
        )
    )


def user_entry(uid: str, password: str, mail_host: str) -> str:
    """One mail user: an ``inetOrgPerson`` with ``mail`` and ``mailHost``."""
    return _entry(
        user_dn(uid),
        [
            ("objectClass", "inetOrgPerson"),
            ("objectClass", "inetLocalMailRecipient"),
            ("uid", uid),
            ("cn", uid),
            ("sn", uid),
            ("mail", user_address(uid)),
            ("mailHost", mail_host),
            ("userPassword", ssha(password)),
        ],
    )


def ldif(
    accounts: Iterable[tuple[str, str]], service_password: str, mail_host: str
) -> Iterator[str]:
    """The whole directory as LDIF, in pieces (parents first, as ``slapadd`` wants):
    ``accounts`` are (uid, password) of the mail users, the probe user among them."""
    yield base_entries(service_password)
    for uid, password in accounts:
        yield user_entry(uid, password, mail_host)
