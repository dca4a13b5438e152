"""Failover race on a virtual IP: vigil against keepalived and Pacemaker + Corosync.

Usage (as root, from the repository, with its virtualenv)::

    .venv/bin/python bench/vip_failover.py [--runs 10 | --quick] [--scenarios sigkill,linkcut]
        [--tools vigil,keepalived,pacemaker] [--json FILE] [--logs DIR] [--cleanup]

One lab (``vbvip``, 10.213.90.0/24 by default; lab names start with ``vb``, subnet
indexes 70..79 or 90..99; the etcd lab takes the next index) with two servers and a
client namespace on its bridge. For each tool and setting, each run:

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
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlab
from anchors.keepalived import Keepalived
from anchors.pacemaker import Pacemaker, PacemakerCluster
from benchlab import BenchLab
from report import Row, run_text, table
from runs import Run, Subject, keep_logs, run_once
from vigil_hierarchy import Vigil

from vigil.agent.config import LeaseSettings
from vigil.errors import LabError
from vigil.lab.lab import Lab

SCENARIOS = ("sigkill", "linkcut")
TOOLS = ("vigil", "keepalived", "pacemaker")
#: vigil's fastest safe lease settings: within the timing rule renew_interval + 2 x
#: request_timeout + safety_margin <= ttl (safety_margin >= 0.1), with 0.05 s to spare
FAST = LeaseSettings(ttl=0.3, renew_interval=0.05, request_timeout=0.05, safety_margin=0.1)
#: and the ip resource's duplicate-address probe at its shortest useful wait on a LAN (ARP
#: answers come within a millisecond or two; the kit's default is 0.1 s)
FAST_PROBE = 0.05


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
            row.note = subject.note(row.scenario) if hasattr(subject, "note") else None
            row.reason = subject.unsupported(row.scenario)
            if row.reason:
                say(f"   {row.scenario}: {row.reason}")
                continue
            failures = 0
            for number in range(1, runs + 1):
                try:
                    run = run_once(bench, subject, row.scenario, number, settle, hold)
                except Exception as exc:  # one broken run must not end the bench
                    run = Run(subject.tool, subject.setting, row.scenario, number)
                    run.error = f"bench error: {type(exc).__name__}: {exc}"
                row.runs.append(run)
                say(f"   {row.scenario} #{number}: {run_text(run)}")
                odd = run.error or run.outage is None or (run.dual and run.tool == "vigil")
                odd = odd or args.all_logs
                if odd and logs is not None:
                    say(f"   logs of this run kept in {keep_logs(subject, run, logs)}")
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


# --- main --------------------------------------------------------------------------------

_started = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _started:7.1f}s] {message}", flush=True)


_MAIN_PID = os.getpid()


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    if os.getpid() != _MAIN_PID:  # a forked helper (pyroute2's netns helper): just end
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def vigil_version() -> str:
    """The commit of vigil under test, and whether src/ differs from it."""
    repo = Path(__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "src"], capture_output=True, text=True
    ).stdout.splitlines()
    dirty = f", {len(changed)} uncommitted change(s) under src/" if changed else ""
    return f"vigil at commit {head or 'unknown'}{dirty}"


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per scenario and setting")
    parser.add_argument("--quick", action="store_true", help="3 runs each")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--name", default="vbvip", help="lab name (starts with vb)")
    parser.add_argument("--subnet", type=int, default=90, help="subnet index, 70..79 or 90..99")
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
    parser.add_argument(
        "--vigil-fast-probe",
        type=float,
        default=FAST_PROBE,
        help="the ip resource's probe_wait in vigil's fastest setting",
    )
    parser.add_argument("--json", type=Path, help="write every run here")
    parser.add_argument("--logs", type=Path, help="keep the tools' logs of odd runs here")
    parser.add_argument("--all-logs", action="store_true", help="with --logs: of every run")
    parser.add_argument("--cleanup", action="store_true", help="only remove leftovers")
    args = parser.parse_args(argv)
    if not args.name.startswith("vb"):
        parser.error("the lab name must start with 'vb'")
    if not (70 <= args.subnet <= 79 or 90 <= args.subnet <= 99):
        parser.error("the subnet index must be 70..79 or 90..99")
    if args.quick:
        args.runs = 3
    return args


def vigil_subjects(bench: BenchLab, args: argparse.Namespace, store: str) -> list[Subject]:
    ttl, renew, timeout, margin = _floats(args.vigil_fast)
    fast = LeaseSettings(
        ttl=ttl, renew_interval=renew, request_timeout=timeout, safety_margin=margin
    )
    suffix = "" if store == "embedded" else f", {store} store"
    return [
        Vigil(bench, f"defaults{suffix}", None, store),
        Vigil(bench, f"fastest safe{suffix}", fast, store, args.vigil_fast_probe),
    ]


def bench_vigil(bench: BenchLab, args: argparse.Namespace, scenarios: list[str]) -> list[Row]:
    """vigil on the embedded store (the lab's); its link cuts on an etcd lab if the lab
    can build one (``Lab.up(store="etcd")``), as the embedded store cannot show them."""
    rows: list[Row] = []
    for subject in vigil_subjects(bench, args, "embedded"):
        rows += bench_subject(bench, subject, scenarios, args)
    if "linkcut" not in scenarios:
        return rows
    if "store" not in inspect.signature(Lab.up).parameters:
        say("== vigil on etcd: Lab.up has no store option yet; link cuts not measured")
        return rows
    name = f"{args.name}e"
    subnet = args.subnet + 1 if args.subnet % 10 < 9 else args.subnet - 1
    etcd_bench = None
    try:
        say(f"building lab {name} (subnet index {subnet}) on an etcd store")
        etcd_bench = benchlab.build(name, subnet, store="etcd")
        for subject in vigil_subjects(etcd_bench, args, "etcd"):
            rows += bench_subject(etcd_bench, subject, ["linkcut"], args)
    except LabError as exc:
        rows.append(Row("linkcut", "vigil", "etcd store", reason=f"no etcd lab: {exc}"))
    finally:
        for problem in benchlab.tear_down(etcd_bench, name, subnet):
            say(f"teardown: {problem}")
    return rows


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
        say(vigil_version())
        say(f"building lab {args.name} (subnet index {args.subnet})")
        bench = benchlab.build(args.name, args.subnet)
        say(f"virtual address {bench.vip}, client {bench.client_enter}")
        for tool in tools:
            if tool == "pacemaker":
                rows += bench_pacemaker(bench, args, scenarios)
                continue
            if tool == "vigil":
                rows += bench_vigil(bench, args, scenarios)
                continue
            for advert_int in _floats(args.advert_ints):
                keepalived = Keepalived(bench, advert_int, args.keepalived_service)
                rows += bench_subject(bench, keepalived, scenarios, args)
    except KeyboardInterrupt:
        say("interrupted: tearing down")
        exit_code = 130
    except Exception:
        say(f"bench failed, tearing down:\n{traceback.format_exc()}")
        exit_code = 1
    finally:
        problems = benchlab.tear_down(bench, args.name, args.subnet)
        for problem in problems:
            say(f"teardown: {problem}")
    elapsed = time.monotonic() - _started
    print()
    print(table(rows))
    print(f"\ntotal runtime {elapsed:.0f} s ({args.runs} runs per row); {vigil_version()}")
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
