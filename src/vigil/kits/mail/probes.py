"""Talking to the mail services as their clients do: greetings, and a message end to end.

``greeting`` opens a connection and reads the first line: an SMTP or LMTP server says
``220``, an IMAP server ``* OK``, a POP3 server ``+OK``. ``round_trip`` is the deep check
no other HA tool does: a probe message submitted over SMTP must reach the probe mailbox
(through Postfix, LMTP and Dovecot) and be read back over IMAP, then deleted; a failure
names the hop (SMTP, delivery, IMAP). Temporary failures caused by the directory (a
``4xx`` lookup failure, an IMAP ``[UNAVAILABLE]``) are reported as such: a directory
outage is not a reason to restart or move the mail service.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import email.utils
import imaplib
import os
import smtplib
import time
import uuid
from dataclasses import dataclass

__all__ = ["Greeting", "ProbeResult", "greeting", "round_trip"]

#: seconds a greeting may take
GREETING_TIMEOUT = 5.0
#: subject prefix of probe messages (older ones left by an interrupted check are deleted too)
PROBE_SUBJECT = "vigil end-to-end probe"


@dataclass(frozen=True)
class Greeting:
    """What a listener said first: ``ok`` when it is the expected greeting."""

    ok: bool
    detail: str


async def greeting(
    expect: str, host: str | None = None, port: int = 0, path: str | None = None
) -> Greeting:
    """Connect to ``host:port`` (or the unix socket ``path``) and read the first line;
    ``ok`` when it starts with ``expect`` (``220``, ``* OK``, ``+OK``)."""
    where = path or f"{host}:{port}"
    try:
        async with asyncio.timeout(GREETING_TIMEOUT):
            if path is not None:
                reader, writer = await asyncio.open_unix_connection(path)
            else:
                reader, writer = await asyncio.open_connection(host, port)
            try:
                line = (await reader.readline()).decode(errors="replace").strip()
            finally:
                writer.close()
                await _closed(writer)
    except TimeoutError:
        return Greeting(False, f"{where}: no greeting within {GREETING_TIMEOUT:g}s")
    except OSError as exc:
        # asyncio's "Connect call failed (...)" hides the reason: errno tells it
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return Greeting(False, f"{where}: {reason}")
    if line.startswith(expect):
        return Greeting(True, f"{where}: {line[:80]}")
    return Greeting(False, f"{where}: unexpected greeting {line[:80]!r}")


async def _closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        await writer.wait_closed()


@dataclass(frozen=True)
class ProbeResult:
    """How a round trip went: ``ok``; else which ``hop`` failed and whether it was a
    temporary failure of the directory (``directory``), not of the mail service."""

    ok: bool
    detail: str
    hop: str = ""
    directory: bool = False


@dataclass(frozen=True)
class Probe:
    """Where and as whom the round trip runs."""

    host: str
    smtp_port: int
    imap_port: int
    user: str
    address: str
    password: str
    wait: float = 20.0


async def round_trip(probe: Probe) -> ProbeResult:
    """Submit, wait for delivery, fetch and delete one probe message (in a thread: the
    standard library's SMTP and IMAP clients block)."""
    return await asyncio.to_thread(_round_trip, probe)


def _round_trip(probe: Probe) -> ProbeResult:
    token = uuid.uuid4().hex
    subject = f"{PROBE_SUBJECT} {token}"
    began = time.monotonic()
    sent = _submit(probe, subject)
    if sent is not None:
        return sent
    return _read_back(probe, token, began)


def _submit(probe: Probe, subject: str) -> ProbeResult | None:
    message = email.message.EmailMessage()
    message["From"] = probe.address
    message["To"] = probe.address
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate()
    message["Message-ID"] = email.utils.make_msgid("vigil-probe")
    message.set_content("vigil checks that mail flows: SMTP -> LMTP -> IMAP.\n")
    where = f"SMTP {probe.host}:{probe.smtp_port}"
    try:
        with smtplib.SMTP(probe.host, probe.smtp_port, timeout=GREETING_TIMEOUT * 2) as smtp:
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()))
        reply = text.decode(errors="replace")
        return ProbeResult(
            False, f"{where} refused the probe recipient: {code} {reply}", "smtp", code < 500
        )
    except smtplib.SMTPResponseException as exc:
        error = exc.smtp_error
        reply = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
        temporary = 400 <= exc.smtp_code < 500
        return ProbeResult(False, f"{where}: {exc.smtp_code} {reply}", "smtp", temporary)
    except (OSError, smtplib.SMTPException) as exc:
        return ProbeResult(False, f"{where}: {exc}", "smtp")
    return None


def _read_back(probe: Probe, token: str, began: float) -> ProbeResult:
    where = f"IMAP {probe.host}:{probe.imap_port}"
    try:
        with imaplib.IMAP4(probe.host, probe.imap_port, timeout=GREETING_TIMEOUT * 2) as imap:
            try:
                imap.login(probe.user, probe.password)
            except imaplib.IMAP4.error as exc:
                text = str(exc)
                unavailable = "UNAVAILABLE" in text.upper() or "TEMPORARY" in text.upper()
                return ProbeResult(False, f"{where}: login failed: {text}", "imap", unavailable)
            return _find_and_delete(imap, token, began, probe.wait, where)
    except (OSError, imaplib.IMAP4.error) as exc:
        return ProbeResult(False, f"{where}: {exc}", "imap")


def _find_and_delete(
    imap: imaplib.IMAP4, token: str, began: float, wait: float, where: str
) -> ProbeResult:
    while True:
        imap.select("INBOX")
        _, found = imap.search(None, "SUBJECT", f'"{token}"')
        if found and found[0].split():
            break
        if time.monotonic() - began > wait:
            return ProbeResult(
                False,
                f"the probe message was accepted over SMTP but not in the mailbox after "
                f"{wait:g}s: delivery (Postfix -> LMTP -> Dovecot) is stuck; see Postfix's "
                "queue (postqueue -p) and log",
                "delivery",
            )
        time.sleep(0.2)
    # this probe's message and any left behind by an interrupted earlier probe
    _, stale = imap.search(None, "SUBJECT", f'"{PROBE_SUBJECT}"')
    for number in (stale[0] or b"").split():
        imap.store(number.decode(), "+FLAGS", "\\Deleted")
    imap.expunge()
    elapsed = time.monotonic() - began
    return ProbeResult(
        True, f"probe message delivered and read back over {where} in {elapsed:.2f}s"
    )
