"""Mail failover from a client's point of view: server death -> first SMTP 250 and first
IMAP login at the service address, with every message counted.

Usage (as root, from the repository, with its virtualenv)::

    .venv/bin/python bench/mail_failover.py [--runs 10] [--scenarios sigkill,linkcut]

Two labs of ``tests.mail_lab`` (three servers, the mail organisation: directory, front-end,
``mail`` with its address ``mail-ip`` created on node1 and extended to node2 and node3),
at vigil's default lease settings:

* **sigkill** (lab ``bmfail``, 10.213.65.0/24, embedded store): SIGKILL of the owner's
  agent; its fence guard takes the mail service down when the lease runs out and the next
  server takes over;
* **linkcut** (lab ``bmfaile``, 10.213.66.0/24, a 3-member etcd): the owner's host-side
  veth down; it loses the store and fences itself, the next server takes over.

Each run starts from a steady state (``mailbench.steady``: in service on the owner alone,
ready standbys, SMTP at the service address answered by the owner and an IMAP login
there accepted), sends mail through the front-end (``MailTraffic``, one message every
0.1 s from ``client1``) from 1 s before the fault until 1 s after the takeover, and
from ``client1`` starts, every 50 ms, an SMTP transaction (EHLO .. DATA, 2 s deadline) and
an IMAP login at the **service address itself** (``mail-ip``, not the front-end), each on
its own thread. Measured from the fault:

* **SMTP 250**: the first message accepted (250 after DATA) by the new server (its EHLO
  names it);
* **IMAP login**: the first login accepted on a connection opened after the failed
  server's mail processes were gone (a sampler reads, every 50 ms, which servers run
  Postfix's ``master`` or ``dovecot``: the same sampler counts samples with the mail
  service on two servers, "two at once");
* **in service**: the new server's ``restored`` event (every resource in service there;
  read from the event log afterwards: nothing asks the agents during a failover).

Then the failed server is mended (agent started again, link up) and the next run fails
the new owner, so the direction alternates (node1 -> node2 -> node1 ...). After each run
every message that got a 250, through the front-end and at the service address, is read
back over IMAP through the front-end: lost and duplicated messages (both must be 0; all
runs are counted again at the end, to catch a late duplicate). Prints one table (min /
median / max per scenario); the labs are torn down at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import email.policy
import shutil
import smtplib
import sys
import threading
import time
import traceback
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mailbench
from mailbench import event_after, fail, mend, next_owner, say, spread, steady, table, wall
from tests.faults.cluster import Cluster, wait_until
from tests.mail_lab import TAG, Delivery, MailDualActive, MailTraffic, mail_cluster, protect, vip

from vigil.lab.mail import MailOrgInfo, MailUser, clients

#: scenario -> (lab name, subnet index, store, etcd members)
LABS = {"sigkill": ("bmfail", 65, "embedded", 1), "linkcut": ("bmfaile", 66, "etcd", 3)}
CLIENT = "client1"
LEGEND = """\
Seconds from the fault (SIGKILL of the owner's agent; the owner's link cut, 3-member etcd)
to the first SMTP 250 from the new server and the first IMAP login accepted after the
failed server's mail service was gone, both at the service address, from a lab client (a
new attempt of each every 50 ms); restore started, in service: the new server's events.
mail accepted: messages that got a 250, through the front-end during the runs and at the
service address by the probe; lost / duplicated: of those, not readable over IMAP
afterwards / readable twice. two at once: runs with the mail service seen on two servers."""


@dataclass
class Attempt:
    kind: str  # smtp | imap
    started: float
    ended: float = 0.0
    ok: bool = False
    server: str = ""  # smtp: the server its EHLO named


class VipProbe:
    """An SMTP transaction and an IMAP login at ``address`` every ``interval`` s from a
    lab client, each on a thread of its own with ``timeout`` per step."""

    def __init__(
        self, org: MailOrgInfo, address: str, smtp_to: MailUser, imap_as: MailUser,
        interval: float = 0.05, timeout: float = 2.0,
    ) -> None:  # fmt: skip
        self.org, self.address = org, address
        self.smtp_to, self.imap_as = smtp_to, imap_as
        self.interval, self.timeout = interval, timeout
        self.netns = org.netns(CLIENT)
        self.run_id = uuid.uuid4().hex[:8]
        self.attempts: list[Attempt] = []
        self.accepted: list[tuple[MailUser, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop = threading.Thread(target=self._run, name="vip probe", daemon=True)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._stop.set()
        self._loop.join()
        for thread in self._threads:
            thread.join(timeout=5 * self.timeout + 10)

    def _run(self) -> None:
        tick, number = time.monotonic(), 0
        while not self._stop.is_set():
            for kind in ("smtp", "imap"):
                thread = threading.Thread(target=self._attempt, args=(kind, number), daemon=True)
                thread.start()
                self._threads.append(thread)
            number += 1
            tick += self.interval
            self._stop.wait(max(0.0, tick - time.monotonic()))

    def _attempt(self, kind: str, number: int) -> None:
        attempt = Attempt(kind, time.monotonic())
        try:
            if kind == "smtp":
                attempt.server = self.smtp(number)
            else:
                clients.fetch(
                    self.netns, via=self.address, port=self.org.frontend.imap_port,
                    login=self.imap_as.address, password=self.imap_as.password,
                    timeout=self.timeout,
                )  # fmt: skip
            attempt.ok = True
        except Exception:  # a probe: a failure is a data point (ok stays False)
            pass
        attempt.ended = time.monotonic()
        with self._lock:
            self.attempts.append(attempt)

    def smtp(self, number: int) -> str:
        """One message to ``smtp_to`` at the service address; the server that took it."""
        sender, to = f"bench@{self.org.domain}", self.smtp_to.address
        subject = f"vip probe {self.run_id} {number}"
        data = clients.message(sender, [to], subject, subject).as_bytes(policy=email.policy.SMTP)

        def talk() -> str:
            with smtplib.SMTP(
                self.address, self.org.frontend.smtp_port,
                local_hostname=clients.CLIENT_NAME, timeout=self.timeout,
            ) as smtp:  # fmt: skip
                host = _ok("EHLO", *smtp.ehlo()).splitlines()[0].strip()
                _ok("MAIL", *smtp.mail(sender))
                _ok("RCPT", *smtp.rcpt(to))
                _ok("DATA", *smtp.data(data))
                return host.split(".")[0]

        server = clients.in_netns(self.netns, talk, self.timeout * 5)
        with self._lock:
            self.accepted.append((self.smtp_to, subject))
        return server

    def first(self, kind: str, since: float, server: str = "") -> Attempt | None:
        """The first accepted attempt of ``kind`` started at or after ``since`` (by
        ``server`` for smtp), by the time it was answered."""
        with self._lock:
            good = [
                a for a in self.attempts
                if a.kind == kind and a.ok and a.started >= since
                and (not server or a.server == server)
            ]  # fmt: skip
        return min(good, key=lambda a: a.ended, default=None)


def _ok(step: str, code: int, reply: bytes) -> str:
    if code != 250:
        raise clients.MailClientError(f"{step}: {code} {reply!r}")
    return reply.decode(errors="replace")


class Sampler(AbstractContextManager["Sampler"]):
    """Which servers run the mail service (``MailDualActive.running``), every 50 ms."""

    def __init__(self, cluster: Cluster, interval: float = 0.05) -> None:
        self.watch = MailDualActive(cluster)
        self.interval = interval
        self.samples: list[tuple[float, frozenset[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mail sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            running = frozenset(self.watch.running())
            self.samples.append((time.monotonic(), running))
            self._stop.wait(self.interval)

    def gone(self, server: str, since: float) -> float | None:
        """When ``server`` was first seen without the mail service for good after ``since``."""
        after = [(t, s) for t, s in list(self.samples) if t >= since]
        seen = [i for i, (_, s) in enumerate(after) if server in s]
        index = seen[-1] + 1 if seen else 0
        return after[index][0] if index < len(after) else None

    def two_at_once(self) -> int:
        return sum(1 for _, s in list(self.samples) if len(s) > 1)


@dataclass
class Run:
    scenario: str
    number: int
    old: str
    new: str
    smtp: float | None = None
    imap: float | None = None
    started: float | None = None  # the new server's restore started
    in_service: float | None = None
    stopped: float | None = None  # the failed server's mail service gone
    two_at_once: int = 0
    mark: str = ""  # the newest event before the fault
    mail: list[MailTraffic] = field(default_factory=list)
    delivered: list[Delivery] = field(default_factory=list)
    error: str | None = None

    def text(self) -> str:
        def num(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}s"

        if self.error:
            return f"{self.old} -> {self.new}: ERROR {self.error}"
        sent = sum(d.accepted for d in self.delivered)
        lost = sum(d.lost for d in self.delivered)
        dup = sum(d.duplicates for d in self.delivered)
        return (
            f"{self.old} -> {self.new}: SMTP 250 {num(self.smtp)}, IMAP login {num(self.imap)}, "
            f"restore {num(self.started)}..{num(self.in_service)} (stopped on {self.old} "
            f"{num(self.stopped)}); "
            f"mail {sent} accepted, {lost} lost, {dup} twice"
            + (f"; TWO AT ONCE in {self.two_at_once} samples" if self.two_at_once else "")
        )


def answered_by(cluster: Cluster, org: MailOrgInfo, owner: str) -> bool:
    """SMTP at the service address answered by ``owner`` and an IMAP login accepted there."""
    probe = VipProbe(org, vip(cluster), org.users[5], org.users[6])
    assert probe.smtp(0) == owner, f"SMTP at {vip(cluster)} not answered by {owner}"
    clients.fetch(
        probe.netns, via=vip(cluster), port=org.frontend.imap_port, login=org.users[6].address,
        password=org.users[6].password, timeout=5,
    )  # fmt: skip
    probe.accepted.clear()  # one message of the steady check: not the run's
    return True


def run_once(
    cluster: Cluster, org: MailOrgInfo, scenario: str, number: int, owner: str, window: float
) -> Run:
    run = Run(scenario, number, owner, next_owner(owner))
    steady(cluster, owner)
    wait_until(lambda: answered_by(cluster, org, owner), 60, f"mail answered by {owner}")
    traffic = MailTraffic(org, org.users[:5])
    probe = VipProbe(org, vip(cluster), org.users[5], org.users[6])
    run.mail = [traffic]
    mark = run.mark = cluster.mark()
    with Sampler(cluster) as sampler, traffic.running():
        time.sleep(1.0)
        probe.start()
        time.sleep(0.2)
        fault = fail(cluster, owner, scenario)
        try:
            deadline = fault + window
            while time.monotonic() < deadline and None in (run.smtp, run.imap):
                first_smtp = probe.first("smtp", fault, run.new)
                gone = sampler.gone(owner, fault)
                run.stopped = gone - fault if gone is not None else None
                first_imap = probe.first("imap", gone) if gone is not None else None
                run.smtp = first_smtp.ended - fault if first_smtp else None
                run.imap = first_imap.ended - fault if first_imap else None
                time.sleep(0.05)  # (the agents are not asked anything meanwhile)
            time.sleep(1.0)
            restored = wait_until(
                lambda: event_after(cluster, mark, "restored", run.new), window, "restored"
            )
            started = event_after(cluster, mark, "restore-started", run.new)
            run.in_service = restored["at"] - wall(fault)
            run.started = started["at"] - wall(fault) if started else None
        except AssertionError as exc:  # the mail sent is still counted below
            run.error = str(exc)[:300]
        finally:
            probe.stop()
            mend(cluster, owner, scenario)
    run.two_at_once = sampler.two_at_once()
    vip_mail = MailTraffic(org, [org.users[5]])
    vip_mail.accepted.extend(probe.accepted)
    run.mail.append(vip_mail)
    run.delivered = [m.settle(150) for m in run.mail]
    if None in (run.smtp, run.imap, run.in_service) and not run.error:
        run.error = f"no takeover seen within {window:.0f} s ({run.text()})"
    return run


def bench_scenario(scenario: str, args: argparse.Namespace) -> list[Run]:
    name, subnet, store, members = LABS[scenario]
    say(f"== {scenario}: building lab {name} (10.213.{subnet}.0/24, {store} store)")
    runs: list[Run] = []
    with mail_cluster(name, subnet, store=store, store_members=members) as (cluster, org):
        protect(cluster, org)
        owner = "node1"
        for number in range(1, args.runs + 1):
            try:
                run = run_once(cluster, org, scenario, number, owner, args.window)
            except (AssertionError, RuntimeError, OSError) as exc:
                run = Run(scenario, number, owner, next_owner(owner), error=str(exc)[:500])
                say(traceback.format_exc(limit=3))
            runs.append(run)
            say(f"{scenario} #{number}: {run.text()}")
            for delivered in run.delivered:
                for line in mailbench.explain(org, delivered):
                    say(f"   {line}")
            if run.error or any(d.lost or d.duplicates for d in run.delivered):
                keep_logs(cluster, f"{name}-{number}")
            if sum(1 for r in runs[-2:] if r.error) >= 2:
                say(f"{scenario}: two runs in a row failed; stopping this scenario")
                break
            if run.error:  # what the cluster did, then back to a known state
                for event in cluster.events(run.mark)[:30] if run.mark else []:
                    say(f"   event {event['server']} {event['kind']}: {event['message'][:300]}")
                try:
                    mailbench.back_to(cluster, "node1")
                except AssertionError as exc:
                    say(f"{scenario}: no way back to a steady state ({exc}); stopping")
                    break
            with contextlib.suppress(AssertionError, KeyError):  # where it is now
                owner = cluster.hierarchy(TAG)["active_server"] or owner
        for run in runs:  # counted again at the end: a late duplicate shows here
            run.delivered = [m.settle(60) for m in run.mail]
    return runs


def keep_logs(cluster: Cluster, run: str) -> None:
    """Copy every server's agent log (and its mail logs) of a run that went wrong to
    ``/tmp/vigil-bench-logs/RUN`` before the lab is torn down: what the agents did is the
    first thing to read."""
    where = Path("/tmp/vigil-bench-logs") / run
    where.mkdir(parents=True, exist_ok=True)
    for server in cluster.info.servers:
        directory = cluster.root / server.name
        for log in directory.glob("**/*.log"):
            if log.is_file():
                target = where / server.name / log.relative_to(directory)
                target.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    shutil.copyfile(log, target)
    say(f"   logs kept in {where}")


def report(runs: dict[str, list[Run]]) -> str:
    head = (
        "scenario", "runs", "SMTP 250 min", "median", "max", "IMAP login min", "median", "max",
        "restore started median", "in service median", "mail accepted", "lost", "duplicated",
        "two at once",
    )  # fmt: skip
    rows = []
    for scenario, done in runs.items():
        good = [r for r in done if not r.error]
        smtp = [r.smtp for r in good if r.smtp is not None]
        imap = [r.imap for r in good if r.imap is not None]
        up = [r.in_service for r in good if r.in_service is not None]
        begun = [r.started for r in good if r.started is not None]
        delivered = [d for r in done for d in r.delivered]
        rows.append((
            scenario, f"{len(good)}/{len(done)}",
            *spread(smtp), *spread(imap), spread(begun)[1], spread(up)[1],
            str(sum(d.accepted for d in delivered)), str(sum(d.lost for d in delivered)),
            str(sum(d.duplicates for d in delivered)),
            str(sum(1 for r in done if r.two_at_once)),
        ))  # fmt: skip
    return table(head, rows) + "\n\n" + LEGEND


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per scenario (10)")
    parser.add_argument("--scenarios", default="sigkill,linkcut")
    parser.add_argument("--window", type=float, default=60.0, help="seconds to wait for a takeover")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios.split(",")) - set(LABS)
    if unknown or args.runs < 1:
        parser.error(f"scenarios are {', '.join(LABS)}; runs >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mailbench.on_sigterm()
    say(mailbench.vigil_version())
    runs: dict[str, list[Run]] = {}
    code = 0
    try:
        for scenario in args.scenarios.split(","):
            runs[scenario] = []
            runs[scenario] = bench_scenario(scenario, args)
    except KeyboardInterrupt:
        say("interrupted: the labs are torn down")
        code = 130
    except Exception:
        say(f"bench failed (the labs are torn down):\n{traceback.format_exc()}")
        code = 1
    print()
    print(report(runs))
    print(f"\n{args.runs} runs per scenario; {mailbench.vigil_version()}")
    return code


if __name__ == "__main__":
    sys.exit(main())
