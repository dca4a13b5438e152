"""Re-homing 10,000 users during a mail failover, and a directory killed half-way.

Usage (as root, from the repository, with its virtualenv)::

    .venv/bin/python bench/rehome.py [--runs 5] [--users 10000] [--fault-runs 1]

One lab of ``tests.mail_lab`` (``brehome``, 10.213.67.0/24, embedded store) whose
directory holds ``--users`` users (``Lab.add_mail_org``, loaded with slapadd), all homed
on node1's value; ``mail`` created on node1, extended to node2 and node3.

**Failover runs** (``--runs``, default 5): from a steady state, SIGKILL of the owner's
agent; the next server takes over and the mail kit moves every user home there in its
restore, after Postfix and Dovecot are up. Measured:

* **kit**: the kit's own time to move them (its ``mail-users-moved`` event: one paged
  search, then the modifies in batches over a few connections), and how many it moved;
* **directory**: what the directory shows, polled every 50 ms from the host (two indexed
  searches, size limit 1): from the first user with the new home to the moment no user
  has an old one, and from the fault to that moment;
* **restore started, restored**: the new server's events, from the fault (read from the
  event log afterwards: the agents are not asked anything during the failover).

The failed agent is started again and the next run fails the new owner (node1 -> node2
-> node1 ...).

**Fault runs** (``--fault-runs``, default 1): the same failover, but slapd is SIGKILLed
(the lab's process) as soon as the user in the middle of the directory has the new home.
The failed-users log (``GET /v1/mail/mail/failed-users``, from the server in service) is
read as soon as it is written, the directory's data read offline with ``slapcat`` while
slapd is down, and every user counted: moved (new home), in the log, both (its change
may have been made when the connection broke: the retry settles it), or **unaccounted**
(neither: must be 0). Then slapd starts again and the time until the kit's background
retry has emptied the log is measured (it retries 2 s after the failure, then 4, 8, ...
s later), and every user must then be home.

Prints two tables; the lab is torn down at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import functools
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ldap3

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mailbench
from mailbench import event_after, fail, mend, next_owner, say, spread, steady, table, wall
from tests.faults.cluster import Cluster, wait_until
from tests.mail_lab import TAG, mail_cluster, protect

from vigil.lab.mail import MailOrgInfo
from vigil.lab.mail import directory as lab_directory

LAB = ("brehome", 67)
MOVED = re.compile(r"moved (\d+) users to (\S+) in ([\d.]+)s")


class HomeWatch:
    """Polls the directory every ``interval`` s: when a user first has ``new`` as its
    home, and when, after that, no user has any of ``old`` any more."""

    def __init__(self, org: MailOrgInfo, new: str, old: list[str], interval: float = 0.05):
        self.org, self.interval = org, interval
        self.new_filter = f"(mailHost={new})"
        self.old_filter = "(|" + "".join(f"(mailHost={v})" for v in old) + ")"
        self.first: float | None = None
        self.done: float | None = None
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="home watch", daemon=True)

    def __enter__(self) -> HomeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _any(self, conn: ldap3.Connection, search: str) -> bool:
        conn.search(
            self.org.directory.users_dn, search, ldap3.LEVEL,
            attributes=[ldap3.NO_ATTRIBUTES], size_limit=1,
        )  # fmt: skip
        return any(e.get("type") == "searchResEntry" for e in conn.response or [])

    def _run(self) -> None:
        try:
            with self.org.directory.connect() as conn:
                while not self._stop.is_set() and self.done is None:
                    now = time.monotonic()
                    if self.first is None and self._any(conn, self.new_filter):
                        self.first = now
                    if self.first is not None and not self._any(conn, self.old_filter):
                        self.done = time.monotonic()
                    self._stop.wait(self.interval)
        except Exception as exc:  # the directory went away: what was seen stays
            self.error = f"{type(exc).__name__}: {exc}"


@dataclass
class Move:
    number: int
    old: str
    new: str
    moved: int = 0
    kit: float | None = None
    first: float | None = None  # fault -> first user with the new home
    done: float | None = None  # fault -> no user with an old home
    started: float | None = None  # fault -> the new server's restore started
    in_service: float | None = None  # fault -> restored
    error: str = ""

    def text(self) -> str:
        def num(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}s"

        span = self.done - self.first if self.done and self.first else None
        return (
            f"{self.old} -> {self.new}: kit moved {self.moved} users in {num(self.kit)}; "
            f"directory: first {num(self.first)}, all home {num(self.done)} after the fault "
            f"({num(span)}); restore started {num(self.started)}, done {num(self.in_service)}"
            + (f"; ERROR {self.error}" if self.error else "")
        )


def failover(cluster: Cluster, org: MailOrgInfo, number: int, owner: str) -> Move:
    move = Move(number, owner, next_owner(owner))
    steady(cluster, owner)
    mark = cluster.mark()
    old = [org.home_value(s) for s in org.servers if s != move.new]
    events: dict[str, dict[str, Any]] = {}
    with HomeWatch(org, org.home_value(move.new), old) as watch:
        fault = fail(cluster, owner, "sigkill")
        try:  # the directory alone is watched meanwhile; the event log is read afterwards
            wait_until(lambda: watch.done or watch.error, 300, "every user home")
            for kind in ("restore-started", "restored", "mail-users-moved"):
                find = functools.partial(event_after, cluster, mark, kind, move.new)
                events[kind] = wait_until(find, 120, kind)
        except AssertionError as exc:
            move.error = f"{exc} (watch: {watch.error or 'ok'})"
        finally:
            mend(cluster, owner, "sigkill")
    at = wall(fault)
    found = MOVED.search(events["mail-users-moved"]["message"]) if len(events) == 3 else None
    if found:
        move.moved, move.kit = int(found[1]), float(found[3])
        move.started = events["restore-started"]["at"] - at
        move.in_service = events["restored"]["at"] - at
    move.first = watch.first - fault if watch.first else None
    move.done = watch.done - fault if watch.done else None
    return move


# --- the directory killed half-way ----------------------------------------------------------


def slapd_pid(cluster: Cluster) -> int:
    names = cluster.lab.names
    record = lab_directory.reload_state(names).mail
    assert record is not None, "the lab has no mail organisation"
    pid = lab_directory.running_pid(names, record.directory)
    assert pid is not None, "slapd does not run"
    return pid


def slapcat_homes(org: MailOrgInfo) -> dict[str, str | None]:
    """DN (lower case) -> mailHost of every mail user, read offline by ``slapcat``."""
    done = subprocess.run(
        ["slapcat", "-f", str(org.directory.config_file), "-o", "ldif_wrap=no",
         "-a", "(objectClass=inetLocalMailRecipient)"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    homes: dict[str, str | None] = {}
    dn = ""
    for line in done.stdout.splitlines():
        if line.startswith("dn:: "):
            dn = base64.b64decode(line[5:]).decode().lower()
        elif line.startswith("dn: "):
            dn = line[4:].lower()
        if dn:
            homes.setdefault(dn, None)
        if line.startswith("mailHost: "):
            homes[dn] = line[10:]
    return homes


def kill_half_way(cluster: Cluster, org: MailOrgInfo, owner: str) -> dict[str, Any]:
    """One failover with slapd SIGKILLed half-way through the re-homing; what was counted."""
    new = next_owner(owner)
    steady(cluster, owner)
    to, middle = org.home_value(new), org.users[len(org.users) // 2]
    killed: dict[str, float] = {}

    def kill_when_middle_moves() -> None:
        with org.directory.connect() as conn:
            while time.monotonic() < began + 300:
                conn.search(middle.dn, "(objectClass=*)", ldap3.BASE, attributes=["mailHost"])
                if conn.response and conn.response[0]["attributes"].get("mailHost") == [to]:
                    os.kill(slapd_pid(cluster), signal.SIGKILL)
                    killed["at"] = time.monotonic()
                    return
                time.sleep(0.005)

    began = time.monotonic()
    killer = threading.Thread(target=kill_when_middle_moves, name="killer", daemon=True)
    killer.start()
    fault = fail(cluster, owner, "sigkill")
    try:
        killer.join(timeout=300)
        assert "at" in killed, "the middle user never moved: slapd not killed"
        log = wait_until(
            lambda: cluster.ok("GET", f"/v1/mail/{TAG}/failed-users")["users"], 60, "a log"
        )
        log_seen = time.monotonic() - killed["at"]
        homes = slapcat_homes(org)
        org.directory.stop()  # slapd is dead already: forget its pid
        org.directory.start()
        started = time.monotonic()
        wait_until(
            lambda: not cluster.ok("GET", f"/v1/mail/{TAG}/failed-users")["users"],
            300, "the failed-users log to empty",
        )  # fmt: skip
        emptied = time.monotonic() - started
        left = [u for u, h in org.directory.mail_hosts().items() if h != to]
    finally:
        mend(cluster, owner, "sigkill")
    logged = {e["dn"].lower() for e in log if not e.get("whole_base")}
    moved = {dn for dn, home in homes.items() if home == to}
    return {
        "direction": f"{owner} -> {new}", "users": len(homes),
        "killed": killed["at"] - fault, "moved": len(moved), "logged": len(logged),
        "both": len(moved & logged), "whole_base": any(e.get("whole_base") for e in log),
        "unaccounted": len([dn for dn in homes if dn not in moved and dn not in logged]),
        "log_seen": log_seen, "emptied": emptied, "not_home_after": len(left),
    }  # fmt: skip


# --- main ----------------------------------------------------------------------------------


def report(moves: list[Move], faults: list[dict[str, Any]], users: int) -> str:
    good = [m for m in moves if not m.error]
    span = [m.done - m.first for m in good if m.done and m.first]
    head = (
        "users", "runs", "moved (kit)", "kit min", "median", "max",
        "directory first->all min", "median", "max", "fault->restore started",
        "fault->all home", "fault->restored",
    )  # fmt: skip
    moved = sorted({str(m.moved) for m in good})
    row = (
        f"{users:,}", f"{len(good)}/{len(moves)}", "/".join(moved) or "-",
        *spread([m.kit for m in good if m.kit is not None]), *spread(span),
        spread([m.started for m in good if m.started])[1],
        spread([m.done for m in good if m.done])[1],
        spread([m.in_service for m in good if m.in_service])[1],
    )  # fmt: skip
    out = [
        "Re-homing during a failover (SIGKILL of the owner's agent), seconds (the fault-> "
        "columns: medians; restore started/restored: the new server's events)",
        "",
    ]
    out += [table(head, [row]), ""]
    head2 = (
        "direction", "users", "killed after", "moved", "in log", "both", "unaccounted",
        "log read after", "log empty after restart", "not home at the end",
    )  # fmt: skip
    rows2 = [_fault_row(f) for f in faults]
    out += ["slapd SIGKILLed half-way through the re-homing (after the failover's fault)", ""]
    out += [table(head2, rows2) if rows2 else "(no fault run)"]
    return "\n".join(out)


def _fault_row(f: dict[str, Any]) -> tuple[str, ...]:
    return (
        f["direction"], f"{f['users']:,}", f"{f['killed']:.2f}s", str(f["moved"]),
        str(f["logged"]) + (" +base" if f["whole_base"] else ""), str(f["both"]),
        str(f["unaccounted"]), f"{f['log_seen']:.2f}s", f"{f['emptied']:.2f}s",
        str(f["not_home_after"]),
    )  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="failovers timed (5)")
    parser.add_argument("--users", type=int, default=10_000, help="users in the directory")
    parser.add_argument("--fault-runs", type=int, default=1, help="directory killed half-way")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mailbench.on_sigterm()
    say(mailbench.vigil_version())
    moves: list[Move] = []
    faults: list[dict[str, Any]] = []
    code = 0
    name, subnet = LAB
    try:
        say(f"building lab {name} (10.213.{subnet}.0/24) with {args.users:,} users")
        with mail_cluster(name, subnet, users=args.users) as (cluster, org):
            protect(cluster, org)
            owner = "node1"
            for number in range(1, args.runs + 1):
                moves.append(failover(cluster, org, number, owner))
                say(f"failover #{number}: {moves[-1].text()}")
                if moves[-1].error:  # back to a known state
                    mailbench.back_to(cluster, "node1")
                owner = cluster.hierarchy(TAG)["active_server"] or next_owner(owner)
            for _ in range(args.fault_runs):
                faults.append(kill_half_way(cluster, org, owner))
                say(f"directory killed half-way: {faults[-1]}")
                owner = next_owner(owner)
    except KeyboardInterrupt:
        say("interrupted: the lab is torn down")
        code = 130
    except Exception:
        say(f"bench failed (the lab is torn down):\n{traceback.format_exc()}")
        code = 1
    print()
    print(report(moves, faults, args.users))
    print(f"\n{mailbench.vigil_version()}")
    return code


if __name__ == "__main__":
    sys.exit(main())
