"""The directory duties: users follow their mail server (the seed's Active Directory work).

Through ldap3 (a maintained, pure-Python LDAP client; never by parsing ``ldapsearch``):

* ``rehome`` moves every user whose home attribute (``mailHost``) names one of the
  hierarchy's other servers to this server's value: one paged search for exactly those
  users (a user already home is not even read), then the modifies in parallel batches over
  a few connections. A user that cannot be moved is **reported, not fatal**: the caller
  keeps the mail service up and records it in the failed-users log (the seed's
  FailedExUsers.log). When no directory server answers, the whole base is reported as
  unreachable.
* ``home_of``, ``move_user``: one user (the seed's LKExADUtil /MSU, and "which server is
  a user's mailbox on").
* ``check_account``: the service account can bind and read the users (create, extend, and
  "Manage User" check it before they accept it).

Every call is blocking (ldap3 is synchronous) and bounded by timeouts: callers run it in a
thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from vigil.kits.mail.properties import MailProperties

__all__ = [
    "DirectoryUnavailable",
    "FailedUser",
    "Rehomed",
    "check_account",
    "home_of",
    "move_user",
    "rehome",
]

#: seconds to open a connection to one directory server
CONNECT_TIMEOUT = 3
#: seconds to wait for one answer (ldap3 wants an int: a float fails at connect)
RECEIVE_TIMEOUT = 10
#: users read per page of the search
PAGE_SIZE = 500
#: connections that modify users in parallel, and users per batch
CONNECTIONS = 4
BATCH = 250


class DirectoryUnavailable(Exception):
    """No directory server of ``directory_urls`` could be reached or bound to."""


@dataclass(frozen=True)
class FailedUser:
    """A user that could not be moved (``dn`` may be the base: the whole base failed)."""

    dn: str
    reason: str
    at: float = field(default_factory=time.time)
    whole_base: bool = False


@dataclass(frozen=True)
class Rehomed:
    """What ``rehome`` did: users moved, users that failed, and how long it took."""

    moved: int = 0
    failed: tuple[FailedUser, ...] = ()
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failed


def connect(props: MailProperties) -> ldap3.Connection:
    """A bound connection to the first directory server that answers."""
    servers = [
        ldap3.Server(url, connect_timeout=CONNECT_TIMEOUT, get_info=ldap3.NONE)
        for url in props.directory_urls
    ]
    pool = ldap3.ServerPool(servers, ldap3.FIRST, active=1, exhaust=True)
    try:
        return ldap3.Connection(
            pool,
            user=props.bind_dn,
            password=props.bind_password.get_secret_value(),
            auto_bind=ldap3.AUTO_BIND_NO_TLS,
            receive_timeout=RECEIVE_TIMEOUT,
            raise_exceptions=False,
            read_only=False,
        )
    except LDAPException as exc:
        urls = ", ".join(props.directory_urls)
        raise DirectoryUnavailable(
            f"no directory server answered or accepted {props.bind_dn} ({urls}): {exc}"
        ) from exc


def users_filter(props: MailProperties, homes: Iterable[str]) -> str:
    """The users of ``props.user_filter`` whose home attribute is one of ``homes``."""
    attribute = props.home_attribute
    wanted = "".join(f"({attribute}={escape_filter_chars(home)})" for home in sorted(set(homes)))
    return f"(&{props.user_filter}(|{wanted}))"


def find_users(
    connection: ldap3.Connection, props: MailProperties, homes: Iterable[str]
) -> list[str]:
    """DNs of the users homed on any of ``homes`` (paged search)."""
    entries = connection.extend.standard.paged_search(
        props.users_base_dn,
        users_filter(props, homes),
        search_scope=ldap3.SUBTREE,
        attributes=[props.home_attribute],
        paged_size=PAGE_SIZE,
        generator=True,
    )
    found = []
    for entry in entries:
        if entry.get("type") == "searchResEntry":
            found.append(entry["dn"])
    if connection.result and connection.result.get("result", 0) not in (0,):
        raise DirectoryUnavailable(
            f"search of {props.users_base_dn} failed: {connection.result.get('description')} "
            f"{connection.result.get('message', '')}".strip()
        )
    return found


def rehome(props: MailProperties, to: str, away: Sequence[str]) -> Rehomed:
    """Move every user homed on one of ``away`` to ``to``. Never raises for a directory
    problem: the users (or the base) that could not be moved are in ``failed``."""
    began = time.monotonic()
    homes = [home for home in away if home and home != to]
    if not homes:
        return Rehomed(seconds=time.monotonic() - began)
    try:
        with connect(props) as connection:
            dns = find_users(connection, props, homes)
    except (DirectoryUnavailable, LDAPException) as exc:
        base = FailedUser(props.users_base_dn, f"directory unreachable: {exc}", whole_base=True)
        return Rehomed(0, (base,), time.monotonic() - began)
    batches = [dns[i : i + BATCH] for i in range(0, len(dns), BATCH)]
    moved, failed = 0, list[FailedUser]()
    with ThreadPoolExecutor(max_workers=CONNECTIONS) as pool:
        for done, problems in pool.map(lambda batch: _move_batch(props, batch, to), batches):
            moved += done
            failed += problems
    return Rehomed(moved, tuple(failed), time.monotonic() - began)


def _move_batch(props: MailProperties, dns: list[str], to: str) -> tuple[int, list[FailedUser]]:
    """Modify each user of ``dns`` on one connection of its own."""
    try:
        connection = connect(props)
    except DirectoryUnavailable as exc:
        return 0, [FailedUser(dn, f"directory unreachable: {exc}") for dn in dns]
    moved, failed = 0, []
    with connection:
        for index, dn in enumerate(dns):
            try:
                ok = connection.modify(dn, {props.home_attribute: [(ldap3.MODIFY_REPLACE, [to])]})
            except LDAPException as exc:
                # the connection is gone: every user left in this batch failed the same way
                failed += [FailedUser(d, f"directory connection lost: {exc}") for d in dns[index:]]
                break
            if ok:
                moved += 1
            else:
                result = connection.result or {}
                failed.append(
                    FailedUser(dn, f"{result.get('description')}: {result.get('message', '')}")
                )
    return moved, failed


def home_of(props: MailProperties, user: str) -> tuple[str, str | None]:
    """(DN, home value) of a user given by uid, mail address or DN. ``LookupError`` when
    there is no such user; ``DirectoryUnavailable`` when the directory cannot be asked."""
    if "=" in user and "," in user:
        search_filter = "(objectClass=*)"
        base, scope = user, ldap3.BASE
    else:
        value = escape_filter_chars(user)
        search_filter = f"(&{props.user_filter}(|(uid={value})(mail={value})))"
        base, scope = props.users_base_dn, ldap3.SUBTREE
    with connect(props) as connection:
        connection.search(base, search_filter, scope, attributes=[props.home_attribute])
        entries = [e for e in connection.response or [] if e.get("type") == "searchResEntry"]
    if not entries:
        raise LookupError(f"no mail user {user!r} under {props.users_base_dn}")
    if len(entries) > 1:
        raise LookupError(f"{user!r} names {len(entries)} users: give the DN or the address")
    values = entries[0]["attributes"].get(props.home_attribute) or []
    value = values[0] if isinstance(values, list) and values else (values or None)
    return entries[0]["dn"], value


def move_user(props: MailProperties, dn: str, to: str) -> None:
    """Set one user's home to ``to``; ``DirectoryUnavailable`` naming the refusal."""
    with connect(props) as connection:
        ok = connection.modify(dn, {props.home_attribute: [(ldap3.MODIFY_REPLACE, [to])]})
        if not ok:
            result = connection.result or {}
            raise DirectoryUnavailable(
                f"the directory refused to change {props.home_attribute} of {dn}: "
                f"{result.get('description')} {result.get('message', '')}".strip()
            )


def check_account(props: MailProperties) -> list[str]:
    """Problems with the service account: it must bind and find users under the base."""
    try:
        with connect(props) as connection:
            connection.search(
                props.users_base_dn, props.user_filter, ldap3.SUBTREE,
                attributes=[props.home_attribute], size_limit=1,
            )  # fmt: skip
            result = connection.result or {}
    except DirectoryUnavailable as exc:
        return [str(exc)]
    if result.get("result") not in (0, 4):  # 4: size limit exceeded (there are users)
        return [
            f"{props.bind_dn} cannot search {props.users_base_dn}: "
            f"{result.get('description')} {result.get('message', '')}".strip()
        ]
    return []
