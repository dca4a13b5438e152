"""What the mail benches (``mail_failover.py``, ``rehome.py``) share: the progress log,
Ctrl-C and SIGTERM, the faults on the mail hierarchy's owner and their repair, the steady
state a run starts from, and the table.

The labs, the hierarchy and the mail traffic are ``tests.mail_lab``'s (imported, not
copied): three servers, ``mail`` created on node1 and extended to node2 and node3.
"""

from __future__ import annotations

import email.policy
import imaplib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from email.parser import BytesHeaderParser
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests

from tests.faults.cluster import Cluster, wait_until
from tests.mail_lab import TAG, Delivery, MailDualActive, hierarchy_tags, wait_in_service

import vigil
from vigil.lab.mail import MailOrgInfo, clients

#: seconds to wait for a steady state before a run
STEADY_TIMEOUT = 180.0

_started = time.monotonic()
_MAIN_PID = os.getpid()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _started:7.1f}s] {message}", flush=True)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    if os.getpid() != _MAIN_PID:  # a forked helper: just end
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def on_sigterm() -> None:
    """SIGTERM ends the bench as Ctrl-C does: through every ``finally`` (lab down)."""
    signal.signal(signal.SIGTERM, _interrupt)


def vigil_version() -> str:
    """The commit under test, and whether src/ differs from it (of the vigil imported)."""
    repo = Path(vigil.__file__).resolve().parent.parent.parent
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "src"], capture_output=True, text=True
    ).stdout.splitlines()
    dirty = f", {len(changed)} uncommitted change(s) under src/" if changed else ""
    return f"vigil at commit {head or 'unknown'}{dirty} ({repo})"


# --- faults --------------------------------------------------------------------------------


def fail(cluster: Cluster, owner: str, fault: str) -> float:
    """Fail ``owner``: ``sigkill`` (its agent) or ``linkcut`` (its host-side veth down);
    the monotonic time of the fault."""
    if fault == "sigkill":
        at = time.monotonic()
        cluster.kill_agent(owner)  # sends SIGKILL at once, then waits until it is gone
        return at
    cluster.down.add(owner)
    cluster.link(owner, up=False)
    return time.monotonic()


def mend(cluster: Cluster, owner: str, fault: str) -> None:
    """Undo ``fail``: the agent started again, or the link up again."""
    if fault == "sigkill":
        cluster.start_agent(owner)
    else:
        cluster.link(owner, up=True)
        cluster.down.discard(owner)


def event_after(cluster: Cluster, mark: str, kind: str, server: str) -> dict[str, Any] | None:
    """The first event of ``kind`` recorded by ``server`` after the event ``mark``."""
    for event in cluster.events(mark):
        if event["kind"] == kind and event["server"] == server:
            return event
    return None


def wall(monotonic: float) -> float:
    """A ``time.monotonic()`` instant as ``time.time()`` (events carry the latter)."""
    return time.time() - (time.monotonic() - monotonic)


def next_owner(owner: str) -> str:
    """Where the hierarchy goes when ``owner`` fails: node1 <-> node2 (priorities 1, 10)."""
    return "node2" if owner == "node1" else "node1"


def back_to(cluster: Cluster, server: str) -> None:
    """After a run that went wrong: ``mail`` switched over to ``server`` (a new intent
    also clears the failures (OSF) a standby reported for the old one)."""
    cluster.ok("POST", f"/v1/hierarchies/{TAG}/in-service", {"server": server})
    wait_in_service(cluster, server, STEADY_TIMEOUT)


def steady(cluster: Cluster, owner: str, timeout: float = STEADY_TIMEOUT) -> None:
    """Wait until ``mail`` is in service on ``owner`` alone, every other server a ready
    standby (OSU), the engine's plan for ``owner``'s death is ``next_owner(owner)``, no
    user waits in the failed-users log and the mail service runs on ``owner`` only."""
    deadline = time.monotonic() + timeout
    wait_in_service(cluster, owner, timeout)
    tags = hierarchy_tags(cluster)
    others = [s.name for s in cluster.info.servers if s.name != owner]

    def standbys() -> bool:
        states = {t: cluster.states(t) for t in tags}
        bad = {(t, s): states[t].get(s) for t in tags for s in others if states[t].get(s) != "OSU"}
        assert not bad, f"not ready standbys: {bad}"
        return True

    def plan() -> bool:
        answer = cluster.ok("GET", f"/v1/plan?fail={owner}")
        targets = {p["hierarchy"]: p["target"] for p in answer}
        assert targets.get(TAG) == next_owner(owner), f"plan if {owner} dies: {answer}"
        return True

    def quiet() -> bool:
        failed = cluster.ok("GET", f"/v1/mail/{TAG}/failed-users")["users"]
        assert not failed, f"{len(failed)} entries in the failed-users log"
        running = MailDualActive(cluster).running()
        assert running == {owner}, f"mail service running on {sorted(running)}"
        return True

    for check, what in ((standbys, "ready standbys"), (plan, "the plan"), (quiet, "quiet")):
        left = max(1.0, deadline - time.monotonic())
        wait_until(check, left, f"steady state on {owner}: {what}")


# --- what went wrong with a message -----------------------------------------------------------


def copies(org: MailOrgInfo, user: str, subject: str, client: str = "client1") -> list[str]:
    """The ``Received`` trail of each copy of ``subject`` in ``user``'s INBOX (read over
    IMAP through the front-end): which hop delivered a message twice."""
    who = org.user(user)

    def talk() -> list[str]:
        with imaplib.IMAP4(org.frontend.address, org.frontend.imap_port, timeout=30) as imap:
            imap.login(who.address, who.password)
            imap.select("INBOX", readonly=True)
            _, found = imap.search(None, "SUBJECT", f'"{subject}"')
            trails = []
            for number in found[0].split():
                _, parts = imap.fetch(number, "(BODY.PEEK[HEADER])")
                raw = next(p[1] for p in parts if isinstance(p, tuple))
                headers = BytesHeaderParser(policy=email.policy.default).parsebytes(raw)
                hops = [" ".join(str(r).split()) for r in headers.get_all("Received", [])]
                trails.append(" <- ".join(hops))
            return trails

    return clients.in_netns(org.netns(client), talk)


def explain(org: MailOrgInfo, delivered: Delivery) -> list[str]:
    """Lines naming each message lost or delivered twice, with the trails of the copies."""
    lines = [
        f"lost: {user}: {subject}" for user, lost in delivered.missing.items() for subject in lost
    ]
    for user, twice in delivered.duplicated.items():
        for subject in twice:
            lines.append(f"twice: {user}: {subject}")
            try:
                lines += [
                    f"  copy {i}: {trail}" for i, trail in enumerate(copies(org, user, subject), 1)
                ]
            except Exception as exc:  # a diagnosis: never the end of the bench
                lines.append(f"  (copies not read: {exc})")
    return lines


# --- the table -------------------------------------------------------------------------------


def spread(values: Sequence[float]) -> tuple[str, str, str]:
    """min, median, max with 3 decimals (dashes when there is nothing)."""
    if not values:
        return ("-", "-", "-")
    return (f"{min(values):.3f}", f"{statistics.median(values):.3f}", f"{max(values):.3f}")


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    lines = [list(head), *(list(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(line)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
