"""Mail in flight when the last server died: delivered once, not twice.

A server fenced in the middle of a delivery may have handed a message to Dovecot over LMTP
(saved in the mailbox) before its Postfix recorded the recipient as done in the queue
file, which lives on the hierarchy's volume. The next server's Postfix would deliver it
again. Dovecot's own duplicate record (Sieve ``duplicate``) is written after the delivery
and may be lost with it, so it does not close this window.

Before Postfix starts on the new server (Dovecot already runs), every message of the
``active`` queue (the ones being delivered when Postfix stopped) is read with ``postcat``:
when every recipient still pending already has a message with the same ``Message-ID`` in
their mailbox (``doveadm search``), the message was delivered and is removed from the
queue. Anything uncertain (no Message-ID, a search that fails, some
recipients without it) keeps the message: a duplicate is better than a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vigil.kits.base import KitContext
from vigil.kits.mail.properties import MailProperties
from vigil.kits.process import run_command

__all__ = ["QueuedMessage", "parse_postcat", "settle_in_flight"]

#: seconds one postcat, doveadm or postsuper may take
COMMAND_TIMEOUT = 30.0
#: their output stays out of the agent log (the result is logged once)
_LOG = logging.getLogger("vigil.kit.mail.inflight")
_LOG.setLevel(logging.WARNING)
_FOUND = re.compile(r"[0-9a-f]{32} [0-9]+")


@dataclass(frozen=True)
class QueuedMessage:
    """What the queue file says: its Message-ID and the recipients not delivered yet."""

    queue_id: str
    message_id: str
    pending: tuple[str, ...]


def parse_postcat(queue_id: str, text: str) -> QueuedMessage:
    """The Message-ID and the pending recipients of ``postcat -q`` output (delivered ones
    are ``done_recipient`` records)."""
    message_id, pending, in_headers = "", [], False
    for line in text.splitlines():
        if line.startswith("*** MESSAGE CONTENTS"):
            in_headers = True
        elif line.startswith("*** "):
            in_headers = False
        elif line.startswith("recipient: "):
            pending.append(line.split(": ", 1)[1].strip())
        elif in_headers and not message_id and line.lower().startswith("message-id:"):
            message_id = line.split(":", 1)[1].strip()
    return QueuedMessage(queue_id, message_id, tuple(dict.fromkeys(pending)))


async def settle_in_flight(ctx: KitContext[MailProperties]) -> list[str]:
    """Remove from the queue the in-flight messages already in every recipient's mailbox;
    returns their queue ids. Postfix must be stopped and Dovecot running."""
    props = ctx.properties
    if not props.setting("postfix:virtual_transport").startswith("lmtp:"):
        return []  # delivered by something else: nothing vigil can look at
    queue = props.setting("postfix:queue_directory")
    active = Path(queue) / "active" if queue else None
    if active is None:
        return []
    queue_ids = await asyncio.to_thread(_queue_files, active)
    removed = []
    for queue_id in queue_ids:
        message = await _read(props, queue_id)
        if message is None or not message.message_id or not message.pending:
            continue
        found = [await _in_mailbox(props, r, message.message_id) for r in message.pending]
        if all(found) and await asyncio.to_thread(_delete, Path(queue), queue_id):
            removed.append(queue_id)
    if removed:
        await ctx.event(
            "mail-in-flight-settled",
            f"{ctx.tag} on {ctx.server}: {len(removed)} message(s) delivered just before the "
            f"last server stopped were still queued; removed, not delivered twice "
            f"({', '.join(removed)})",
        )
    return removed


def _queue_files(active: Path) -> list[str]:
    try:
        return sorted(
            entry.name for entry in os.scandir(active) if entry.is_file(follow_symlinks=False)
        )
    except OSError:
        return []


async def _read(props: MailProperties, queue_id: str) -> QueuedMessage | None:
    argv = ["postcat", "-c", props.postfix_config, "-e", "-h", "-q", queue_id]
    result = await run_command(argv, log=_LOG, timeout=COMMAND_TIMEOUT, name="postcat")
    return parse_postcat(queue_id, result.output) if result.ok else None


async def _in_mailbox(props: MailProperties, recipient: str, message_id: str) -> bool:
    argv = [
        "doveadm", "-c", props.dovecot_config, "search", "-u", recipient,
        "mailbox", "*", "HEADER", "Message-ID", message_id,
    ]  # fmt: skip
    result = await run_command(argv, log=_LOG, timeout=COMMAND_TIMEOUT, name="doveadm search")
    # only a found message's "<mailbox guid> <uid>" line counts: a warning doveadm prints
    # (merged into the output) must never pass for a delivery, or the mail would be lost
    return result.ok and any(_FOUND.fullmatch(line.strip()) for line in result.output.splitlines())


def _delete(queue: Path, queue_id: str) -> bool:
    """Remove the queue file and its delivery logs. Not ``postsuper -d``: with Postfix
    stopped it fails to write its own log line after deleting (``maillog_file`` is
    written by postlogd when Postfix runs). Postfix is stopped: nothing else touches them."""
    try:
        (queue / "active" / queue_id).unlink()
    except FileNotFoundError:
        return False
    for log_dir in ("defer", "bounce", "trace"):
        for path in (queue / log_dir).glob(f"**/{queue_id}"):
            with contextlib.suppress(OSError):
                path.unlink()
    return True
