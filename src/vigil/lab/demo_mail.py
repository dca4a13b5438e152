"""The demo's mail steps (``vigil.lab.demo``): the mail hierarchy, what a mail client
sees, and the mail sent through the front-end and read back.

The hierarchy is created on node1 with real ``vigil`` commands::

    mail      (mail: Postfix + Dovecot, users in the directory)
     ├── mail-ip   (ip: 10.213.I.100, the service address)
     └── mail-vol  (volume: the shared disk at /srv/mail, found and made by the kit)

``Traffic`` sends messages from a lab client through the front-end (Postfix relay,
routing by each user's ``mailHost``), each with a unique subject, and at the end reads
every mailbox over IMAP through the front-end (Dovecot proxy) and counts: sent, read,
lost (accepted with 250 but not there), duplicated (there more than once).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from vigil.lab.demo_steps import (
    CLIENT,
    TAG,
    VIP_TAG,
    Demo,
    say,
    states_seen_by,
    vigil,
    where_it_runs,
)
from vigil.lab.mail import MailClientError, MailUser
from vigil.lab.mail.clients import in_netns

#: how many users the demo writes to (user001...)
USERS = 5
#: the user whose home ``vigil mail home`` shows
SHOWN_USER = "user001"
SMTP_QUIT = b"QUIT\r\n"
IMAP_LOGOUT = b"a LOGOUT\r\n"


def secrets(demo: Demo) -> dict[str, str]:
    """The passwords the commands need, and how the demo shows them: read from the
    directory's password files (mode 0600), never printed."""
    directory = demo.org.directory
    probe = demo.org.probe_user
    users_file = directory.users_password_file
    return {
        directory.bind_password: f'"$(cat {directory.bind_password_file})"',
        probe.password: f'"$(awk \'$1=="{probe.name}" {{print $2}}\' {users_file})"',
    }


def create_hierarchy(demo: Demo) -> None:
    """``mail-ip``, then ``mail`` on node1 (the kit adds the volume below it)."""
    org, directory = demo.org, demo.org.directory
    vigil(
        demo, "resource", "create", VIP_TAG, "--kit", "ip", "--server", "node1",
        "-p", f"address={demo.vip}", "-p", "prefix=24", "-p", "interface=eth0",
    )  # fmt: skip
    probe = org.probe_user
    say(
        "\nThe mail resource: where Postfix's and Dovecot's configurations are, the "
        "directory account that moves users home, the front-end to flush (ETRN), a probe "
        "mailbox for the end-to-end deep check, and the address as a child. Its queue and "
        "mailboxes are on the shared disk: the kit finds that filesystem and protects it."
    )
    vigil(
        demo, "resource", "create", TAG, "--kit", "mail", "--server", "node1",
        "-p", f"postfix_config={org.postfix_dir}", "-p", f"dovecot_config={org.dovecot_conf}",
        "-p", f'directory_urls=["{directory.url}"]', "-p", f"bind_dn={directory.bind_dn}",
        "-p", f"bind_password={directory.bind_password}",
        "-p", f"users_base_dn={directory.users_dn}",
        "-p", f'frontends=["{org.frontend.address}"]',
        "-p", f"probe_user={probe.address}", "-p", f"probe_address={probe.address}",
        "-p", f"probe_password={probe.password}", "-p", f"ip_resource={VIP_TAG}",
    )  # fmt: skip
    volume = volume_tag(demo)
    say(
        f"\nThe kit read queue_directory ({org.queue_dir}) and Dovecot's mail location "
        f"({org.vmail_dir}/...) from the running configuration, found both on the shared "
        f"disk mounted at {org.mail_root}, and created the volume resource {volume} below "
        "mail with the device, mount point and filesystem UUID it found:"
    )
    vigil(demo, "resource", "properties", volume)


def volume_tag(demo: Demo) -> str:
    """The volume resource the kit made below ``mail`` (``mail-vol``)."""
    tags = [t for t in states_seen_by(demo, "node1") if t not in (TAG, VIP_TAG)]
    return tags[0] if tags else f"{TAG}-vol"


def extend(demo: Demo, server: str, priority: int, volume: str) -> None:
    """Extend to ``server``; the volume on ``server``'s own loop device onto the disk."""
    device = f"{volume}.device={demo.org.disk.device(server)}"
    vigil(demo, "extend", TAG, "--to", server, "--priority", str(priority), "-p", device)


# --- what a client sees --------------------------------------------------------------------


def greeting(demo: Demo, address: str, port: int, goodbye: bytes, timeout: float = 5.0) -> str:
    """The first line the server at ``address:port`` sends to the lab client."""

    def talk() -> str:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            line = conn.makefile("rb").readline().decode(errors="replace").strip()
            conn.sendall(goodbye)
            return line

    try:
        line = in_netns(demo.org.netns(CLIENT), talk, timeout=timeout)
    except OSError as exc:
        return f"no answer ({exc.strerror or exc})"
    return re.sub(r"\[CAPABILITY [^]]*\]", "[CAPABILITY ...]", line) or "no greeting"


def wait_smtp_from(demo: Demo, server: str, since: float, timeout: float = 60.0) -> float:
    """Wait until the SMTP banner at the service address names ``server``; seconds since
    ``since`` (a ``time.monotonic()``)."""
    while time.monotonic() - since < timeout:
        if f" {server}." in greeting(demo, demo.vip, 25, SMTP_QUIT, timeout=1.0):
            return time.monotonic() - since
        time.sleep(0.05)
    raise SystemExit(f"demo: {server} did not answer SMTP at {demo.vip} within {timeout:g}s")


def homes(demo: Demo) -> str:
    """Where the directory homes the users (``mailHost``), by server."""
    hosts = demo.org.directory.mail_hosts()
    values = Counter(hosts.get(user.name) for user in demo.org.users)
    return ", ".join(
        f"{count} on {value} ({demo.server_of(value)})" for value, count in values.most_common()
    )


def proxied(demo: Demo, user: MailUser) -> str:
    """Log in as ``user`` over IMAP through the front-end, and where its Dovecot proxy
    sent the login (from the proxy's log)."""
    try:
        messages = len(demo.org.fetch(CLIENT, user))
    except MailClientError as exc:
        return f"refused: {exc}"
    try:
        log = demo.org.frontend.dovecot_log.read_text(errors="replace")
    except OSError:
        log = ""
    marker = f"proxy({user.address},"
    hosts = [
        line.split(marker, 1)[1].split(")", 1)[0] for line in log.splitlines() if marker in line
    ]
    if not hosts:
        return f"{messages} messages in INBOX"
    host = hosts[-1].rsplit(":", 1)[0]
    return f"proxied to {hosts[-1]} ({demo.server_of(host)}), {messages} messages in INBOX"


def front_end_queue(demo: Demo) -> list[str]:
    """What the front-end's Postfix holds: recipient and why it waits (``postqueue -j``,
    run in the front-end's network namespace)."""
    front = demo.org.frontend
    done = demo.lab.client_exec(
        front.where, ["postqueue", "-c", str(front.postfix_dir), "-j"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    held = []
    for line in done.stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        for recipient in entry.get("recipients", []):
            why = recipient.get("delay_reason", entry.get("queue_name", ""))
            held.append(f"{recipient.get('address')}: {why}")
    return held


def show_client_view(demo: Demo) -> None:
    vip, front = demo.vip, demo.org.frontend
    client = demo.lab.names.client_address(CLIENT)
    say(f"\nWhat a mail client ({CLIENT}, {client}, another network namespace) sees:")
    say(f"  SMTP at {vip}:25    {greeting(demo, vip, 25, SMTP_QUIT)}")
    imap = greeting(demo, vip, 143, IMAP_LOGOUT)
    holder = [s for s in where_it_runs(demo).split("; ") if vip in s]
    on = f"  (the address is on {holder[0].split(':')[0]})" if holder else ""
    say(f"  IMAP at {vip}:143   {imap}{on}")
    say(f"  front-end {front.address}: {greeting(demo, front.address, 25, SMTP_QUIT)}")
    user = demo.org.user(SHOWN_USER)
    say(f"  IMAP login {user.address} at the front-end: {proxied(demo, user)}")
    say(f"  users' mailHost in the directory: {homes(demo)}")
    say(f"  servers: {where_it_runs(demo)}")
    vigil(demo, "mail", "home", TAG, SHOWN_USER)


# --- mail sent and read back ------------------------------------------------------------


@dataclass
class Count:
    """The mail read back: accepted (250) and refused sends, and what came back."""

    sent: int
    refused: int
    read: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"sent {self.sent} (accepted with 250, {self.refused} refused), read back "
            f"{self.read}, lost {len(self.missing)}, duplicated {len(self.duplicated)}"
        )


class Traffic:
    """Messages from the lab client through the front-end, to ``users`` in turn."""

    def __init__(self, demo: Demo, users: list[MailUser]) -> None:
        self.demo = demo
        self.users = users
        self.run_id = uuid.uuid4().hex[:6]
        self.accepted: list[tuple[MailUser, str]] = []
        #: subject → Message-ID of each accepted message
        self.message_ids: dict[str, str] = {}
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._sent = 0

    def send_one(self, label: str) -> bool:
        user = self.users[self._sent % len(self.users)]
        subject = f"demo {self.run_id} #{self._sent} ({label})"
        self._sent += 1
        try:
            self.message_ids[subject] = self.demo.org.send(CLIENT, user, subject)
        except MailClientError as exc:
            self.refused.append(f"{subject}: {exc}")
            return False
        self.accepted.append((user, subject))
        return True

    @contextmanager
    def running(self, label: str, interval: float = 0.1) -> Iterator[Traffic]:
        """Send a message every ``interval`` seconds while the block runs."""
        before = len(self.accepted), len(self.refused)

        def loop() -> None:
            while not self._stop.is_set():
                self.send_one(label)
                self._stop.wait(interval)

        self._stop.clear()
        thread = threading.Thread(target=loop, name="demo mail traffic", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=60)
            accepted, refused = len(self.accepted) - before[0], len(self.refused) - before[1]
            say(f"(mail sent {label}: {accepted} accepted by the front-end, {refused} refused)")
            for refusal in self.refused[before[1] :][:3]:
                say(f"  refused: {refusal}")

    def count(self) -> Count:
        """Every mailbox written to, read over IMAP through the front-end."""
        found = Count(len(self.accepted), len(self.refused))
        for user in {u.name: u for u, _ in self.accepted}.values():
            wanted = [s for u, s in self.accepted if u.name == user.name]
            try:
                seen = Counter(subject for _, subject in self.demo.org.fetch(CLIENT, user))
            except MailClientError as exc:
                found.unreadable.append(f"{user.name}: {exc}")
                found.missing += wanted
                continue
            found.read += sum(min(seen[s], 1) for s in wanted)
            found.missing += [s for s in wanted if seen[s] == 0]
            found.duplicated += [s for s in wanted if seen[s] > 1]
        return found

    def why_twice(self, subject: str) -> str:
        """Why the front-end sent a message twice, from its Postfix log ("" if it does
        not say): a connection lost after the end of the message's data."""
        front = self.demo.org.frontend
        message_id = self.message_ids.get(subject, "")
        try:
            lines = front.postfix_log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        queued = {
            line.split()[5].rstrip(":") for line in lines if f"message-id={message_id}" in line
        }
        for line in lines:
            words = line.split()
            if len(words) > 5 and words[5].rstrip(":") in queued and "more than once" in line:
                return line.split("status=deferred", 1)[-1].strip(" ()")
        return ""

    def read_back(self, timeout: float) -> tuple[Count, float]:
        """Read until every accepted message is there (or ``timeout``); the count and
        the seconds it took."""
        began, told = time.monotonic(), False
        while True:
            count = self.count()
            waited = time.monotonic() - began
            if not count.missing or waited > timeout:
                return count, waited
            held = front_end_queue(self.demo) if waited > 2.0 and not told else []
            if held:
                say(f"  {len(count.missing)} not in their mailbox yet; the front-end holds:")
                for line in held[:5]:
                    say(f"    {line}")
                say(
                    "  The kit flushed the front-end with ETRN when it moved the users home "
                    "(after a message to the probe mailbox made Postfix's resolver drop the "
                    "route it keeps for 30s), and flushes it again 31s later. Waiting..."
                )
                told = True
            time.sleep(1.0)
