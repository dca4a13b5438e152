"""The directory duties: users follow their mail server (the seed's Active Directory work).

Through ldap3 (a maintained, pure-Python LDAP client; never by parsing ``ldapsearch``):

* ``rehome`` moves every user whose home attribute (``mailHost``) names one of the
  hierarchy's other servers to this server's value: one paged search for exactly those
  users (a user already home is not even read; only DNs come back), then the modifies in
  parallel batches over a few connections. Each batch is one **LDAP transaction** (RFC
  5805) where the directory offers them: OpenLDAP then commits the batch in one database
  write, a third of its work per user (10,000 users: 1 s of slapd's CPU instead of 3).
  A directory without transactions gets one modify per user; so does a batch whose
  transaction the directory refused (one of its users was refused: each user then gets
  its own answer). A user that cannot be moved is **reported, not fatal**: the caller
  keeps the mail service up and records it in the failed-users log (the seed's
  FailedExUsers.log); a batch whose connection was lost before the directory answered its
  commit is reported whole (its users may or may not have moved: the retry settles it).
  When no directory server answers, the whole base is reported as unreachable. Nothing
  that goes wrong with the directory makes ``rehome`` raise.
* ``home_of``, ``move_user``: one user (the seed's LKExADUtil /MSU, and "which server is
  a user's mailbox on").
* ``check_account``: the service account can bind and read the users (create, extend, and
  "Manage User" check it before they accept it).

Every call is blocking (ldap3 is synchronous) and bounded by timeouts: callers run it in a
thread. Connections are used through ``session`` (closed at the end whatever happened),
never through ldap3's own ``with connection``, which leaves open a connection that was
bound on entry and reopens one lost inside the block (raising from ``__exit__`` when the
directory is gone).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from pyasn1.codec.der import encoder
from pyasn1.type import namedtype, univ

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
#: connections that modify users in parallel, and users per batch (per transaction)
CONNECTIONS = 4
BATCH = 250
#: LDAP transactions (RFC 5805): Start and End (extended operations), and the control
#: that puts an update in the transaction
TXN_START = "1.3.6.1.1.21.1"
TXN_END = "1.3.6.1.1.21.3"
TXN_SPECIFICATION = "1.3.6.1.1.21.2"
#: result codes of a directory that does not do transactions (protocolError for an
#: unknown extended operation, unavailableCriticalExtension, unwillingToPerform)
NO_TRANSACTIONS = frozenset({2, 12, 53})


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


def connect(props: MailProperties, *, check_names: bool = True) -> ldap3.Connection:
    """A bound connection to the first directory server of ``directory_urls`` that answers
    and accepts the account, each tried once, in order. (Not an ldap3 ``ServerPool``: it
    sleeps 10 s after trying every server in vain, so a directory that is down cost every
    connection 10 s.) ``check_names``: ldap3 parses each DN given (off for DNs the
    directory returned itself)."""
    problems = []
    for url in props.directory_urls:
        server = ldap3.Server(url, connect_timeout=CONNECT_TIMEOUT, get_info=ldap3.NONE)
        try:
            return ldap3.Connection(
                server,
                user=props.bind_dn,
                password=props.bind_password.get_secret_value(),
                auto_bind=ldap3.AUTO_BIND_NO_TLS,
                receive_timeout=RECEIVE_TIMEOUT,
                raise_exceptions=False,
                read_only=False,
                check_names=check_names,
            )
        except LDAPException as exc:
            problems.append(f"{url}: {exc}")
    raise DirectoryUnavailable(
        f"no directory server answered or accepted {props.bind_dn}: {'; '.join(problems)}"
    )


@contextlib.contextmanager
def session(props: MailProperties, *, check_names: bool = True) -> Iterator[ldap3.Connection]:
    """``connect``; the connection is closed when the block ends, and a connection that
    fails inside it is ``DirectoryUnavailable``."""
    connection = connect(props, check_names=check_names)
    try:
        yield connection
    except LDAPException as exc:
        raise DirectoryUnavailable(f"the directory connection failed: {exc}") from exc
    finally:
        try:
            connection.unbind()
        except LDAPException:  # the connection is gone already: close the socket
            with contextlib.suppress(LDAPException, OSError):
                connection.strategy.close()


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
        attributes=ldap3.NO_ATTRIBUTES,
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
        with session(props, check_names=False) as connection:
            dns = find_users(connection, props, homes)
    except DirectoryUnavailable as exc:
        base = FailedUser(props.users_base_dn, f"directory unreachable: {exc}", whole_base=True)
        return Rehomed(0, (base,), time.monotonic() - began)
    batches = [dns[i : i + BATCH] for i in range(0, len(dns), BATCH)]
    moved, failed = 0, list[FailedUser]()
    learnt = _Learnt()
    with ThreadPoolExecutor(max_workers=CONNECTIONS) as pool:
        for done, problems in pool.map(lambda b: _move_reported(props, b, to, learnt), batches):
            moved += done
            failed += problems
    return Rehomed(moved, tuple(failed), time.monotonic() - began)


@dataclass
class _Learnt:
    """What the batches of one ``rehome`` learn about the directory as they go."""

    #: set once the directory refused a transaction: the other batches go one by one
    plain: threading.Event = field(default_factory=threading.Event)
    #: why no directory server could be reached: the batches after it do not try again
    unreachable: str = ""


def _move_reported(
    props: MailProperties, dns: list[str], to: str, learnt: _Learnt
) -> tuple[int, list[FailedUser]]:
    """``_move_batch``, and a batch that fails in a way nobody foresaw is reported whole
    (its users in the failed-users log, retried), never lost with the others."""
    try:
        return _move_batch(props, dns, to, learnt)
    except Exception as exc:
        reason = f"unexpected error moving a batch of {len(dns)} users: {exc!r}"
        return 0, [FailedUser(dn, reason) for dn in dns]


def _move_batch(
    props: MailProperties, dns: list[str], to: str, learnt: _Learnt
) -> tuple[int, list[FailedUser]]:
    """Move the users of ``dns`` on a connection of their own: in one transaction unless
    the directory does not do them, else one modify each."""
    if not learnt.unreachable:
        try:
            with session(props, check_names=False) as connection:
                if not learnt.plain.is_set():
                    done = _move_in_transaction(connection, props, dns, to, learnt.plain)
                    if done is not None:
                        return done
                return _move_one_by_one(connection, props, dns, to)
        except DirectoryUnavailable as exc:  # no connection (each step catches its own errors)
            learnt.unreachable = f"directory unreachable: {exc}"
    return 0, [FailedUser(dn, learnt.unreachable) for dn in dns]


class _TxnEndRequest(univ.Sequence):  # type: ignore[misc]  # pyasn1 has no types
    """RFC 5805: txnEndReq ::= SEQUENCE { commit BOOLEAN DEFAULT TRUE, identifier OCTET
    STRING }"""

    componentType = namedtype.NamedTypes(
        namedtype.DefaultedNamedType("commit", univ.Boolean(True)),
        namedtype.NamedType("identifier", univ.OctetString()),
    )


def _txn_end(identifier: bytes, commit: bool) -> bytes:
    request = _TxnEndRequest()
    request["commit"] = commit
    request["identifier"] = identifier
    return bytes(encoder.encode(request))


def _move_in_transaction(
    connection: ldap3.Connection,
    props: MailProperties,
    dns: list[str],
    to: str,
    plain: threading.Event,
) -> tuple[int, list[FailedUser]] | None:
    """Every user of ``dns`` in one transaction: (moved, failed), or None when the
    directory would not take it (every user is then moved on its own). The directory
    applies a transaction whole or not at all; a connection lost before it answered the
    commit fails every user of the batch."""
    change = {props.home_attribute: [(ldap3.MODIFY_REPLACE, [to])]}
    try:
        if not connection.extended(TXN_START):
            if (connection.result or {}).get("result") in NO_TRANSACTIONS:
                plain.set()  # this directory does not do transactions: one by one
            return None
        identifier = (connection.result or {}).get("responseValue") or b""
        control = [(TXN_SPECIFICATION, True, identifier)]
        for dn in dns:
            if not connection.modify(dn, change, controls=control):  # refused at once
                if (connection.result or {}).get("result") in NO_TRANSACTIONS:
                    plain.set()  # e.g. a backend without transactions
                connection.extended(TXN_END, _txn_end(identifier, commit=False))
                return None
        committed = connection.extended(TXN_END, _txn_end(identifier, commit=True))
    except LDAPException as exc:
        reason = (
            f"directory connection lost in a transaction of {len(dns)} users (all or none "
            f"of them moved): {exc}"
        )
        return 0, [FailedUser(dn, reason) for dn in dns]
    # not committed: a user was refused and the directory undid them all; each on its own
    return (len(dns), []) if committed else None


def _move_one_by_one(
    connection: ldap3.Connection, props: MailProperties, dns: list[str], to: str
) -> tuple[int, list[FailedUser]]:
    """One modify per user of ``dns``, each with its own outcome."""
    moved, failed = 0, []
    change = {props.home_attribute: [(ldap3.MODIFY_REPLACE, [to])]}
    for index, dn in enumerate(dns):
        try:
            ok = connection.modify(dn, change)
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
    with session(props) as connection:
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
    with session(props) as connection:
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
        with session(props) as connection:
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
