"""Failover race on a virtual IP: vigil against keepalived and Pacemaker + Corosync.

Usage (as root, from the repository, with its virtualenv)::

    .venv/bin/python bench/vip_failover.py [--runs 10 | --quick] [--scenarios sigkill,linkcut]
        [--tools vigil,keepalived,pacemaker] [--json FILE] [--logs DIR] [--cleanup]

One lab (``vbvip``, 10.213.70.0/24 by default; lab names start with ``vb``, subnet
indexes 70..79) with two servers and a client namespace on its bridge. For each tool and
setting, each run:

1. waits for a steady state: the tool ready on both servers, the virtual address
   (``.100``) and the sample service on exactly one server (the *active*), and the client
   answered by it without a loss for ``--settle`` seconds;
2. fails the active server: **sigkill** (SIGKILL of the manager: vigil's agent, every
   keepalived process, corosync) or **linkcut** (its host-side veth down);
3. waits until another server has answered the client without a loss for ``--hold``
   seconds (or the tool's window passes: "not recovered");
4. mends the active server (link up; the manager started again) for the next run.

Throughout, the client probe (``bench/probe.py``) polls ``GET /`` on the virtual address
every 10 ms from the client namespace, and a watcher thread per server samples whether the
address is configured there and whether the service listens there. The outage is the
client's longest time without an answer after the fault; a run counts as "two at once"
when the address or the service was seen on two servers at the same time, or the client
got answers from the failed server after the new one had answered.

Prints one table: scenario x tool x setting -> min/median/max outage, and the runs with
two servers active at once; a row says why when a tool or scenario cannot be run. Every
run stops by itself; everything is torn down at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlab
import probe
from anchors.keepalived import Keepalived
from anchors.pacemaker import Pacemaker, PacemakerCluster
from benchlab import PORT, BenchLab
from vigil_hierarchy import Vigil

from vigil.agent.config import LeaseSettings

SCENARIOS = ("sigkill", "linkcut")
TOOLS = ("vigil", "keepalived", "pacemaker")
#: vigil's fastest safe lease settings: the smallest values that pass the timing rule
#: renew_interval + 2 x request_timeout + safety_margin <= ttl (safety_margin >= 0.1)
FAST = LeaseSettings(ttl=0.4, renew_interval=0.1, request_timeout=0.1, safety_margin=0.1)
STEADY_TIMEOUT = 120.0


class Subject(Protocol):
    """A tool at one setting, as the bench drives it."""

    tool: str
    setting: str
    window: float  # seconds after the fault to wait for another server to answer

    def unsupported(self, scenario: str) -> str | None: ...
    def start(self) -> None: ...
    def ready(self) -> str | None: ...
    def kill_manager(self, server: str) -> str: ...
    def repair(self, server: str, scenario: str) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Run:
    tool: str
    setting: str
    scenario: str
    number: int
    active: str | None = None
    fault: str = ""
    outage: float | None = None
    after: str | None = None
    address_overlap: float = 0.0
    service_overlap: float = 0.0
    client_flips: int = 0
    lost: int = 0
    error: str | None = None
    diagnosis: str | None = None
    watcher_errors: list[str] = field(default_factory=list)

    @property
    def dual(self) -> bool:
        return self.address_overlap > 0 or self.service_overlap > 0 or self.client_flips > 0


@dataclass
class Row:
    scenario: str
    tool: str
    setting: str
    runs: list[Run] = field(default_factory=list)
    reason: str | None = None  # why it could not be run


# --- one run -----------------------------------------------------------------------------


def _recent(samples: list[probe.Sample], since: float) -> list[probe.Sample]:
    out = []
    for sample in reversed(samples):
        if sample.at < since:
            break
        out.append(sample)
    return out


def steady_server(
    bench: BenchLab,
    subject: Subject,
    watchers: dict[str, probe.Watcher],
    client: probe.ClientProbe,
    settle: float,
) -> str:
    """Wait for the steady state; the active server. RuntimeError after STEADY_TIMEOUT."""
    deadline = time.monotonic() + STEADY_TIMEOUT
    why = "nothing checked yet"
    while time.monotonic() < deadline:
        time.sleep(0.2)
        why = subject.ready() or ""
        if why:
            continue
        now = time.monotonic()
        since = now - settle
        recent = {s: _recent(w.samples, since) for s, w in watchers.items()}
        if any(w.error for w in watchers.values()):
            raise RuntimeError(f"watcher failed: {[w.error for w in watchers.values()]}")
        if any(
            len(r) < settle / w.interval * 0.5
            for r, w in zip(recent.values(), watchers.values(), strict=True)
        ):
            why = "watchers have too few samples yet"
            continue
        holders = {s for s, r in recent.items() if all(x.address for x in r)}
        running = {s for s, r in recent.items() if all(x.service for x in r)}
        others = {s for s, r in recent.items() if any(x.address or x.service for x in r)}
        if len(holders) != 1 or holders != running or others != holders:
            why = (
                f"address on {sorted(holders)}, service on {sorted(running)}, "
                f"seen on {sorted(others)}"
            )
            continue
        (active,) = holders
        answers = [a for a in client.answers() if a.sent >= since and a.sent < now - 0.3]
        if len(answers) < settle / client.interval * 0.5:
            why = "the client has too few answers yet"
            continue
        if any(a.who != active for a in answers):
            why = f"the client is not answered by {active} alone"
            continue
        return active
    raise RuntimeError(f"no steady state within {STEADY_TIMEOUT:.0f} s: {why}")


def recovered(client: probe.ClientProbe, failed: str, fault: float, hold: float) -> bool:
    """Whether another server than ``failed`` has answered every request for ``hold`` s."""
    answers = client.answers()
    if not answers or answers[-1].sent < fault + hold:
        return False
    end = answers[-1].sent
    for answer in reversed(answers):
        if answer.sent < fault:
            return False
        if answer.who is None or answer.who == failed:
            return False
        if end - answer.sent >= hold:
            return True
    return False


def run_once(
    bench: BenchLab, subject: Subject, scenario: str, number: int, settle: float, hold: float
) -> Run:
    run = Run(subject.tool, subject.setting, scenario, number)
    watchers = {s: probe.Watcher(s, bench.netns_path(s), bench.vip, PORT) for s in bench.servers}
    client = probe.ClientProbe(
        bench.client_enter, bench.vip, PORT, max_seconds=STEADY_TIMEOUT + 120 + subject.window
    )
    fault = None
    link_down = None
    try:
        try:
            run.active = steady_server(bench, subject, watchers, client, settle)
        except RuntimeError as exc:
            run.error = str(exc)
            return run
        fault = time.monotonic()
        if scenario == "sigkill":
            run.fault = subject.kill_manager(run.active)
        else:
            link_down = run.active
            bench.set_link(run.active, up=False)
            run.fault = f"host veth of {run.active} down"
        deadline = fault + subject.window + hold
        while time.monotonic() < deadline and not recovered(client, run.active, fault, hold):
            time.sleep(0.1)
        time.sleep(0.3)  # the last requests' answers
    finally:
        answers = client.stop()
        samples = {s: w.stop() for s, w in watchers.items()}
        if link_down:
            bench.set_link(link_down, up=True)
    run.watcher_errors = [f"{s}: {w.error}" for s, w in watchers.items() if w.error]
    outcome = probe.analyse(answers, samples, fault, run.active, client.interval)
    if outcome.outage is not None and outcome.after == run.active:
        outcome = probe.Outcome(None, *list(asdict(outcome).values())[1:])  # never moved
    run.outage = outcome.outage
    run.after = outcome.after
    run.address_overlap = round(outcome.address_overlap, 3)
    run.service_overlap = round(outcome.service_overlap, 3)
    run.client_flips = outcome.client_flips
    run.lost = outcome.lost
    if run.outage is None and hasattr(subject, "diagnose"):
        run.diagnosis = subject.diagnose()
    subject.repair(run.active, scenario)
    return run


def keep_logs(subject: Subject, run: Run, logs: Path | None) -> None:
    """Keep the tails of the subject's logs for a run that went wrong (``--logs``)."""
    if logs is None or not hasattr(subject, "logs"):
        return
    slug = re.sub(
        r"[^a-z0-9.]+", "-", f"{run.tool}-{run.setting}-{run.scenario}-{run.number}".lower()
    )
    target = logs / slug
    target.mkdir(parents=True, exist_ok=True)
    for name, path in subject.logs().items():
        with contextlib.suppress(OSError):
            lines = path.read_text(errors="replace").splitlines()[-600:]
            (target / name).write_text("\n".join(lines) + "\n")
    (target / "run.json").write_text(json.dumps(asdict(run), indent=1))
    say(f"   logs of this run kept in {target}")


# --- a subject, every scenario -----------------------------------------------------------


def bench_subject(
    bench: BenchLab,
    subject: Subject,
    scenarios: list[str],
    args: argparse.Namespace,
) -> list[Row]:
    runs, settle, hold, logs = args.runs, args.settle, args.hold, args.logs
    rows = [Row(s, subject.tool, subject.setting) for s in scenarios]
    say(f"== {subject.tool} {subject.setting}")
    try:
        subject.start()
    except Exception as exc:
        for row in rows:
            row.reason = f"could not be started: {exc}"
        say(f"   cannot start: {exc}")
        _stop(subject)
        return rows
    try:
        for row in rows:
            row.reason = subject.unsupported(row.scenario)
            if row.reason:
                say(f"   {row.scenario}: {row.reason}")
                continue
            failures = 0
            for number in range(1, runs + 1):
                run = run_once(bench, subject, row.scenario, number, settle, hold)
                row.runs.append(run)
                say(f"   {row.scenario} #{number}: {_run_text(run)}")
                if run.error or run.outage is None or (run.dual and run.tool == "vigil"):
                    keep_logs(subject, run, logs)
                failures = failures + 1 if run.error else 0
                if failures >= 2:
                    row.reason = f"stopped after two runs without a steady state: {run.error}"
                    break
    finally:
        _stop(subject)
    return rows


def _stop(subject: Subject) -> None:
    try:
        subject.stop()
    except Exception as exc:
        say(f"   stopping {subject.tool} failed: {exc}")


def _run_text(run: Run) -> str:
    if run.error:
        return f"ERROR {run.error}"
    outage = "not recovered" if run.outage is None else f"outage {run.outage:.3f}s"
    if run.diagnosis:
        outage += f" ({run.diagnosis})"
    dual = ""
    if run.dual:
        dual = (
            f"  TWO AT ONCE: address {run.address_overlap:.2f}s, service "
            f"{run.service_overlap:.2f}s, client flips {run.client_flips}"
        )
    return f"{run.active} -> {run.after}: {outage}, {run.lost} requests lost{dual}"


# --- the table ---------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    head = ("scenario", "tool", "setting", "runs", "min s", "median s", "max s", "two at once")
    lines = [head]
    notes = []
    for row in rows:
        good = [r for r in row.runs if not r.error]
        outages = [r.outage for r in good if r.outage is not None]
        if row.reason and not good:
            notes.append(
                f"[{len(notes) + 1}] {row.scenario}/{row.tool}/{row.setting}: {row.reason}"
            )
            lines.append(
                (row.scenario, row.tool, row.setting, "-", "-", "-", "-", f"not run [{len(notes)}]")
            )
            continue
        runs = f"{len(outages)}/{len(good)}"
        if outages:
            stats = (
                f"{min(outages):.3f}",
                f"{statistics.median(outages):.3f}",
                f"{max(outages):.3f}",
            )
        else:
            stats = ("-", "-", "-")
        dual = [r for r in good if r.dual]
        two = f"{len(dual)}/{len(good)}"
        if dual:
            kinds = []
            if any(r.address_overlap for r in dual):
                kinds.append(f"addr {sum(1 for r in dual if r.address_overlap)}")
            if any(r.service_overlap for r in dual):
                kinds.append(f"svc {sum(1 for r in dual if r.service_overlap)}")
            if any(r.client_flips for r in dual):
                kinds.append(f"client {sum(1 for r in dual if r.client_flips)}")
            two += f" ({', '.join(kinds)})"
        if row.reason or len(good) < len(row.runs):
            notes.append(
                f"[{len(notes) + 1}] {row.scenario}/{row.tool}/{row.setting}: "
                f"{len(row.runs) - len(good)} run(s) without a steady state"
                + (f"; {row.reason}" if row.reason else "")
            )
            two += f" [{len(notes)}]"
        lines.append((row.scenario, row.tool, row.setting, runs, *stats, two))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(str(cell).ljust(widths[j]) for j, cell in enumerate(line)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    legend = (
        "runs: recovered/steady runs (recovered: another server answered the client without "
        "a loss for the hold time). outage: the client's longest time without an answer after "
        "the fault (10 ms polls). two at once: runs where the address (addr) or the service "
        "(svc) was seen on two servers at the same time, or the client was answered by the "
        "failed server after the new one (client)."
    )
    return "\n".join([*out, "", legend, *notes])


# --- main --------------------------------------------------------------------------------

_started = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _started:7.1f}s] {message}", flush=True)


_MAIN_PID = os.getpid()


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    if os.getpid() != _MAIN_PID:  # a forked helper (pyroute2's netns helper): just end
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per scenario and setting")
    parser.add_argument("--quick", action="store_true", help="3 runs each")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--name", default="vbvip", help="lab name (starts with vb)")
    parser.add_argument("--subnet", type=int, default=70, help="subnet index, 70..79")
    parser.add_argument("--settle", type=float, default=2.0, help="steady seconds before a fault")
    parser.add_argument("--hold", type=float, default=2.0, help="seconds of answers = recovered")
    parser.add_argument("--advert-ints", default="1,0.1,0.01", help="keepalived advert_int")
    parser.add_argument("--keepalived-service", choices=["notify", "everywhere"], default="notify")
    parser.add_argument("--tokens", default="3000,1000,500", help="corosync token (ms)")
    parser.add_argument(
        "--vigil-fast",
        default=f"{FAST.ttl},{FAST.renew_interval},{FAST.request_timeout},{FAST.safety_margin}",
        help="vigil's fastest settings: ttl,renew_interval,request_timeout,safety_margin",
    )
    parser.add_argument("--json", type=Path, help="write every run here")
    parser.add_argument("--logs", type=Path, help="keep the tools' logs of odd runs here")
    parser.add_argument("--cleanup", action="store_true", help="only remove leftovers")
    args = parser.parse_args(argv)
    if not args.name.startswith("vb"):
        parser.error("the lab name must start with 'vb'")
    if not 70 <= args.subnet <= 79:
        parser.error("the subnet index must be 70..79")
    if args.quick:
        args.runs = 3
    return args


def subjects(bench: BenchLab, args: argparse.Namespace, tool: str) -> list[Subject]:
    if tool == "vigil":
        ttl, renew, timeout, margin = _floats(args.vigil_fast)
        fast = LeaseSettings(
            ttl=ttl, renew_interval=renew, request_timeout=timeout, safety_margin=margin
        )
        return [Vigil(bench, "defaults", None), Vigil(bench, "fastest safe", fast)]
    if tool == "keepalived":
        return [Keepalived(bench, a, args.keepalived_service) for a in _floats(args.advert_ints)]
    raise ValueError(tool)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not benchlab.is_root():
        print("the bench needs root (namespaces, bridge, mounts)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    if args.cleanup:
        problems = benchlab.tear_down(None, args.name, args.subnet)
        print("\n".join(problems) or "clean")
        return 1 if problems else 0
    tools = [t for t in args.tools.split(",") if t]
    scenarios = [s for s in args.scenarios.split(",") if s]
    rows: list[Row] = []
    bench = None
    exit_code = 0
    try:
        say(f"building lab {args.name} (subnet index {args.subnet})")
        bench = benchlab.build(args.name, args.subnet)
        say(f"virtual address {bench.vip}, client {bench.client_enter}")
        for tool in tools:
            if tool == "pacemaker":
                rows += bench_pacemaker(bench, args, scenarios)
                continue
            for subject in subjects(bench, args, tool):
                rows += bench_subject(bench, subject, scenarios, args)
    except KeyboardInterrupt:
        say("interrupted: tearing down")
        exit_code = 130
    finally:
        problems = benchlab.tear_down(bench, args.name, args.subnet)
        for problem in problems:
            say(f"teardown: {problem}")
    elapsed = time.monotonic() - _started
    print()
    print(table(rows))
    print(f"\ntotal runtime {elapsed:.0f} s ({args.runs} runs per row)")
    if args.json:
        data = [
            {
                **{k: v for k, v in asdict(row).items() if k != "runs"},
                "runs": [asdict(r) for r in row.runs],
            }
            for row in rows
        ]
        args.json.write_text(json.dumps(data, indent=1))
    return exit_code


def bench_pacemaker(bench: BenchLab, args: argparse.Namespace, scenarios: list[str]) -> list[Row]:
    cluster = PacemakerCluster(bench)
    why = cluster.unavailable()
    tokens = [int(t) for t in _floats(args.tokens)]
    if why:
        say(f"== pacemaker: {why}")
        return [Row(s, "pacemaker", f"token {t} ms", reason=why) for t in tokens for s in scenarios]
    rows: list[Row] = []
    try:
        cluster.prepare()
        for token in tokens:
            rows += bench_subject(bench, Pacemaker(cluster, token), scenarios, args)
    finally:
        cluster.unprepare()
    return rows


if __name__ == "__main__":
    sys.exit(main())
