"""Mail clients that stand inside a lab namespace: SMTP, ETRN, IMAP and POP3.

A lab client (``clientK``) or a lab server (``nodeK``) is a network namespace; a client
there is a thread of this process that first entered it (``setns``: network namespaces
are per thread) and then speaks with the standard library's ``smtplib``, ``imaplib`` and
``poplib``. The rest of the process stays where it was; the thread ends with its call.

Every failure is a ``MailClientError`` (a ``LabError``) carrying the server's reply.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import email.policy
import imaplib
import os
import poplib
import smtplib
import threading
from collections.abc import Callable
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TypeVar

from vigil.errors import LabError
from vigil.lab.mail.paths import DOMAIN

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
#: seconds one client call (connect, talk, close) may take
TIMEOUT = 30.0
#: how a client names itself in HELO
CLIENT_NAME = f"client.{DOMAIN}"


class MailClientError(LabError):
    """A mail server refused or failed a request; ``reply`` is what it said."""

    def __init__(self, message: str, reply: str = "") -> None:
        super().__init__(message)
        self.reply = reply


def _setns(path: Path) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(netns: Path, action: Callable[[], T], timeout: float = TIMEOUT) -> T:
    """Run ``action()`` on a new thread that entered the network namespace ``netns``
    (a file under ``/run/netns``); returns its result or raises its exception."""
    values: list[T] = []
    errors: list[BaseException] = []

    def main() -> None:
        try:
            _setns(netns)
            values.append(action())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=main, name=f"mail client in {netns.name}", daemon=True)
    thread.start()
    thread.join(timeout + 5.0)
    if thread.is_alive():
        raise MailClientError(f"a mail client in {netns.name} got no answer in {timeout:g}s")
    if errors:
        raise errors[0]
    return values[0]


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


def _expect(code: int, reply: bytes, wanted: int, what: str, where: str) -> str:
    text = _text(reply)
    if code != wanted:
        raise MailClientError(f"{where} refused {what}: {code} {text}", f"{code} {text}")
    return text


def message(
    sender: str, to: list[str], subject: str, body: str, message_id: str | None = None
) -> EmailMessage:
    """A plain text message with ``message_id`` (default: a fresh ``Message-ID``)."""
    made = EmailMessage()
    made["From"] = sender
    made["To"] = ", ".join(to)
    made["Subject"] = subject
    made["Date"] = formatdate(localtime=False)
    made["Message-ID"] = message_id or make_msgid(domain=DOMAIN)
    made.set_content(body)
    return made


def send(
    netns: Path,
    *,
    via: str,
    port: int,
    sender: str,
    to: list[str],
    subject: str,
    body: str,
    timeout: float = TIMEOUT,
    message_id: str | None = None,
) -> tuple[str, str]:
    """Send one message over SMTP to ``via:port`` from inside ``netns``; returns its
    ``Message-ID`` and the server's final reply (``250 2.0.0 Ok: queued as ...``).
    ``MailClientError`` unless every step (MAIL, each RCPT, DATA) got 250."""
    made = message(sender, to, subject, body, message_id)
    where = f"{via}:{port}"

    def talk() -> str:
        with smtplib.SMTP(via, port, local_hostname=CLIENT_NAME, timeout=timeout) as smtp:
            smtp.ehlo()
            _expect(*smtp.mail(sender), 250, f"MAIL FROM:<{sender}>", where)
            for recipient in to:
                _expect(*smtp.rcpt(recipient), 250, f"RCPT TO:<{recipient}>", where)
            data = made.as_bytes(policy=email.policy.SMTP)
            return _expect(*smtp.data(data), 250, "the message (DATA)", where)

    reply = _run(netns, talk, f"SMTP to {where}", timeout)
    return str(made["Message-ID"]), f"250 {reply}"


def etrn(netns: Path, *, via: str, port: int, domain: str, timeout: float = TIMEOUT) -> str:
    """Ask the SMTP server at ``via:port`` to deliver its deferred mail for ``domain``
    now (``ETRN``); returns its reply (``250 Queuing started``)."""
    where = f"{via}:{port}"

    def talk() -> str:
        with smtplib.SMTP(via, port, local_hostname=CLIENT_NAME, timeout=timeout) as smtp:
            smtp.ehlo()
            return _expect(*smtp.docmd("ETRN", domain), 250, f"ETRN {domain}", where)

    return "250 " + _run(netns, talk, f"ETRN to {where}", timeout)


def _headers(raw: bytes) -> tuple[str, str]:
    parsed = BytesHeaderParser(policy=email.policy.default).parsebytes(raw)
    return str(parsed.get("Message-ID", "")).strip(), str(parsed.get("Subject", "")).strip()


def fetch(
    netns: Path, *, via: str, port: int, login: str, password: str, timeout: float = TIMEOUT
) -> list[tuple[str, str]]:
    """Log in over IMAP at ``via:port`` and list the INBOX: (Message-ID, Subject) of each
    message, oldest first. ``MailClientError`` if the login or a command fails."""
    where = f"{via}:{port}"

    def talk() -> list[tuple[str, str]]:
        with imaplib.IMAP4(via, port, timeout=timeout) as imap:
            try:
                imap.login(login, password)
                _, counts = imap.select("INBOX", readonly=True)
                if int(counts[0] or 0) == 0:
                    return []
                _, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID SUBJECT)])")
            except imaplib.IMAP4.error as exc:
                raise MailClientError(f"IMAP at {where} refused {login}: {exc}", str(exc)) from exc
            return [_headers(part[1]) for part in data if isinstance(part, tuple)]

    return _run(netns, talk, f"IMAP to {where}", timeout)


def pop3_list(
    netns: Path, *, via: str, port: int, login: str, password: str, timeout: float = TIMEOUT
) -> list[tuple[str, str]]:
    """Log in over POP3 at ``via:port`` and list the maildrop: (Message-ID, Subject) of
    each message (``TOP n 0``), without deleting anything."""
    where = f"{via}:{port}"

    def talk() -> list[tuple[str, str]]:
        pop = poplib.POP3(via, port, timeout=timeout)
        try:
            pop.user(login)
            pop.pass_(password)
            count, _ = pop.stat()
            found = []
            for number in range(1, count + 1):
                _, lines, _ = pop.top(number, 0)
                found.append(_headers(b"\r\n".join(lines)))
            pop.quit()  # nothing was marked for deletion: QUIT changes nothing
            return found
        except poplib.error_proto as exc:
            raise MailClientError(f"POP3 at {where} refused {login}: {exc}", str(exc)) from exc
        finally:
            pop.close()

    return _run(netns, talk, f"POP3 to {where}", timeout)


def _run(netns: Path, talk: Callable[[], T], what: str, timeout: float) -> T:
    """``in_netns``, with network errors turned into ``MailClientError``."""
    try:
        return in_netns(netns, talk, timeout)
    except MailClientError:
        raise
    except (OSError, smtplib.SMTPException, imaplib.IMAP4.error, poplib.error_proto) as exc:
        raise MailClientError(f"{what} from {netns.name} failed: {exc}", str(exc)) from exc
