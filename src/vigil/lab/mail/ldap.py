"""Talking to the lab's directory with ldap3: bind, read and set users' ``mailHost``.

Every call opens its own connection and closes it (the lab's directory is on the same
machine; a test may stop and start it between two calls). ldap3's exceptions become
``LabError`` with what was asked of which server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ldap3
from ldap3.core.exceptions import LDAPException

from vigil.errors import LabError
from vigil.lab.mail.directory_conf import user_dn
from vigil.lab.mail.paths import USERS_DN

#: seconds to connect, and to wait for one answer
CONNECT_TIMEOUT = 5.0
#: (an int: ldap3 packs it into SO_RCVTIMEO as one)
RECEIVE_TIMEOUT = 10
#: users read per page by ``mail_hosts``
PAGE_SIZE = 1000


class LdapRefused(LabError):
    """The directory answered, and said no (``result`` is its LDAP result code)."""

    def __init__(self, message: str, result: int) -> None:
        super().__init__(message)
        self.result = result


@contextmanager
def connection(
    url: str, dn: str | None = None, password: str | None = None
) -> Iterator[ldap3.Connection]:
    """A connection to ``url`` bound as ``dn`` (anonymous without one), closed on exit.
    ``LabError`` if the directory cannot be reached, ``LdapRefused`` if the bind fails."""
    server = ldap3.Server(url, connect_timeout=CONNECT_TIMEOUT, get_info=ldap3.NONE)
    conn = ldap3.Connection(
        server,
        user=dn,
        password=password,
        receive_timeout=RECEIVE_TIMEOUT,
        auto_referrals=False,
        raise_exceptions=False,
    )
    try:
        if not conn.bind():
            result = conn.result or {}
            raise LdapRefused(
                f"the directory {url} refused the bind as {dn or 'anonymous'}: "
                f"{result.get('description')} {result.get('message', '')}".strip(),
                int(result.get("result", -1)),
            )
        yield conn
    except LDAPException as exc:
        raise LabError(f"the directory {url} could not be reached or failed: {exc}") from exc
    finally:
        conn.unbind()


def answers(url: str) -> bool:
    """Whether a directory answers at ``url`` (an anonymous bind succeeds)."""
    try:
        with connection(url):
            return True
    except LabError:
        return False


def mail_host(conn: ldap3.Connection, uid: str) -> str | None:
    """``mailHost`` of user ``uid`` (``None`` if it has none); ``LabError`` if there is
    no such user."""
    found = conn.search(
        user_dn(uid), "(objectClass=*)", search_scope=ldap3.BASE, attributes=["mailHost"]
    )
    if not found or not conn.entries:
        raise LabError(f"the directory has no user {uid!r} ({user_dn(uid)}): {conn.result}")
    values = conn.entries[0].entry_attributes_as_dict.get("mailHost") or []
    return str(values[0]) if values else None


def set_mail_host(conn: ldap3.Connection, uid: str, value: str) -> None:
    """Set ``mailHost`` of user ``uid`` to ``value``; ``LdapRefused`` if the directory
    refuses (for instance a user without the right: insufficientAccessRights, 50)."""
    if not conn.modify(user_dn(uid), {"mailHost": [(ldap3.MODIFY_REPLACE, [value])]}):
        result = conn.result or {}
        raise LdapRefused(
            f"the directory refused to set mailHost of {uid} as {conn.user}: "
            f"{result.get('description')} {result.get('message', '')}".strip(),
            int(result.get("result", -1)),
        )


def mail_hosts(conn: ldap3.Connection) -> dict[str, str | None]:
    """uid → ``mailHost`` of every mail user (paged: any number of users)."""
    found: dict[str, str | None] = {}
    entries = conn.extend.standard.paged_search(
        USERS_DN,
        "(objectClass=inetLocalMailRecipient)",
        search_scope=ldap3.LEVEL,
        attributes=["uid", "mailHost"],
        paged_size=PAGE_SIZE,
        generator=True,
    )
    for entry in entries:
        if entry.get("type") != "searchResEntry":
            continue
        attributes = entry["attributes"]
        hosts = attributes.get("mailHost") or []
        found[str(attributes["uid"][0])] = str(hosts[0]) if hosts else None
    return found
