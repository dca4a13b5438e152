"""The mirror kit's cost and its resyncs: fio on a local disk against the mirror in sync
and async mode, partial resync time against dirty size, full resyncs after a switchover
and a failover.

Usage (as root, from the repository, with its virtualenv)::

    .venv/bin/python bench/mirror.py [--reps 3] [--runtime 8] [--resync-mb 8,32,128,256]
        [--disk-mb 1024] [--json FILE] [--cleanup]

One lab (``bmirror``, 10.213.114.0/24) of two servers, each with its own disk of
``--disk-mb`` MiB (``Lab.add_local_disks``: a sparse image on the host's disk, attached to
a loop device in direct-I/O mode), agents on the embedded store, in ONE run:

1. **local**: ext4 made on node1's own disk and mounted in node1 (not mirrored): the
   baseline, the same device, the same filesystem, the same mount options;
2. **alone**: the mirror ``data`` created on that same disk (a new ext4), mode ``sync``,
   before it has any target: the same fio jobs through FUSE, the mirror process and its
   disk writers, with nothing replicated (what the device path itself costs);
3. **sync**: the mirror extended to node2 (initial full synchronization, timed): the same
   fio jobs, every write now also on node2's disk before it is acknowledged;
4. **resync**: for each size N of ``--resync-mb``: after 3 s without writes (so the
   activity log, which a pause adds to the map, holds nothing), node2 paused, N MiB
   written by fio in 1 MiB blocks at random places of a file (each block once), node2
   continued; the time from ``continue`` to Mirroring, the regions the source's map
   had, and the resync the source recorded (kind, regions, bytes, seconds);
5. **switchover** to node2 and back, and a **failover** (SIGKILL of node1's agent and its
   mirror process right after a write; node2 takes over; node1's agent started again, it
   comes back as a target), then back to node1: every resync recorded meanwhile is
   counted by kind (a full resync there is a failure of the kit);
6. **async**: ``mode`` set to async (``PATCH`` of the property, then the hierarchy out
   of service and in service on node1 again: the mirror process starts with the new
   mode), the same fio jobs; the resyncs recorded meanwhile count how often node2's queue
   went past its high-water mark (``async_queue_mb``: the target is Paused, then
   resynchronized partially), so the async rows show the source's speed with a target
   that fell behind, not a target that kept up.

The fio jobs, the same in every case (``fio`` 3.33 from Debian, run inside node1, on a
file of ``--file-mb`` MiB on the mounted filesystem that fio lays out once by writing it,
so every timed write overwrites allocated blocks: no block allocation or
unwritten-extent conversion in the journal)::

    sequential: --rw=write     --bs=1M --iodepth=16 --numjobs=1
    random:     --rw=randwrite --bs=4k --iodepth=32 --numjobs=1 --norandommap
    each with:  --ioengine=libaio --direct=1 --time_based --runtime=R --ramp_time=1

``--direct=1``: every write fio counts was completed by the device under ext4, the same
condition in every case: on the local disk once the (direct-I/O) loop device wrote it to
the image; on the mirror once the mirror process answered the kernel, which in sync mode
is once the write is on the source's disk *and* on every Mirroring target's disk
(``docs/kits/mirror.md``), in async mode once it is on the source's disk. One difference
remains, the kit's own choice: the source writes pieces under 64 KiB (fio's 4 KiB ones)
into its disk's page cache, a write cache as a disk's own, made durable by the next
flush (fsync on the filesystem flushes the source's disk and every target's); the local
loop device and the targets write them through. No fsync per write (that would measure
the flush path, not the write path); buffered writes would measure the page cache.
Each job runs ``--reps`` times; the table shows min / median / max and the ratio of each
median to the local median (alone and async too: where the time goes). The issue's
targets: sync sequential >= 70 % of local, sync 4 KiB random >= 50 % of local.

Around each run the bench reads the CPU time of the mirror's source and target processes
(``/proc/PID/stat``) and of the whole machine (``/proc/stat``, every process and the
kernel, other labs included): the table shows them, and the mirror processes' CPU per
write, to say where the time goes.

Prints progress lines, then the tables; the lab is torn down at the end, on error, on
Ctrl-C and on SIGTERM (``--cleanup`` only removes leftovers of a killed run).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.helpers import Api
from tests.integration.mirror_lab import MOUNT, TAG, MirrorLab, state_dir, wait

from vigil.lab.lab import Lab

NAME, SUBNET = "bmirror", 114
LOCAL_MOUNT = "/srv/local"
TARGETS = {"seq": 0.70, "rand": 0.50}
JOBS: dict[str, list[str]] = {
    "seq": ["--rw=write", "--bs=1M", "--iodepth=16"],
    "rand": ["--rw=randwrite", "--bs=4k", "--iodepth=32", "--norandommap", "--randrepeat=0"],
}
#: seconds without writes before a pause (the activity log rotates every second)
IDLE = 3.0
COMMON = ["--ioengine=libaio", "--direct=1", "--numjobs=1", "--time_based", "--ramp_time=1"]

_started = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _started:7.1f}s] {message}", flush=True)


_MAIN_PID = os.getpid()


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Measure:
    """One fio job on one subject: MB/s (seq) or IOPS (rand) of each repetition."""

    subject: str
    job: str
    values: list[float] = field(default_factory=list)
    #: CPU of each run, % of one core: the mirror's source and target processes, and the
    #: whole machine (every process and the kernel: 100 % per core)
    cpu_source: list[float] = field(default_factory=list)
    cpu_target: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --- CPU accounting ----------------------------------------------------------------------

_HZ = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds ``pid`` has used (every thread, user and system); 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _HZ


def machine_cpu() -> tuple[float, float]:
    """(all, busy) CPU seconds of the machine so far (busy: not idle, not iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return sum(values) / _HZ, (sum(values) - values[3] - values[4]) / _HZ


def mirror_pids(m: MirrorLab) -> dict[str, int]:
    """The mirror's source process (node1) and target process (node2), where they run."""
    found = {}
    for role, server in (("source", "node1"), ("target", "node2")):
        path = state_dir(m.info, server) / "status.json"
        try:
            status = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if status.get("role") == role and Path(f"/proc/{status.get('pid')}").exists():
            found[role] = int(status["pid"])
    return found


@dataclass
class Resync:
    mib: int
    dirty_regions: int = 0
    kind: str = ""
    regions: int = 0
    nbytes: int = 0
    seconds: float = 0.0  # as the source recorded it
    wall: float = 0.0  # continue -> Mirroring, seen through the API


@dataclass
class Results:
    measures: list[Measure] = field(default_factory=list)
    resyncs: list[Resync] = field(default_factory=list)
    initial_sync: dict[str, Any] = field(default_factory=dict)
    moves: dict[str, dict[str, int]] = field(default_factory=dict)  # what -> kind -> count
    notes: list[str] = field(default_factory=list)


# --- fio ---------------------------------------------------------------------------------


def fio(m: MirrorLab, server: str, argv: list[str], timeout: float) -> dict[str, Any]:
    done = m.lab.exec(
        server,
        ["fio", "--output-format=json", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"fio {' '.join(argv)}: {done.stderr.strip()[-800:]}")
    out = done.stdout
    data: dict[str, Any] = json.loads(out[out.index("{") :])  # fio may print notes first
    return data


def lay_out(m: MirrorLab, server: str, path: str, mib: int) -> None:
    """The file written once in full (sequential 1 MiB direct writes) and synced."""
    fio(
        m,
        server,
        [
            "--name=layout", f"--filename={path}", f"--size={mib}M", "--rw=write", "--bs=1M",
            "--ioengine=libaio", "--iodepth=8", "--direct=1", "--end_fsync=1",
        ],
        timeout=600,
    )  # fmt: skip


def run_jobs(
    m: MirrorLab, subject: str, mount: str, args: argparse.Namespace, results: Results
) -> None:
    path = f"{mount}/fio.dat"
    say(f"== {subject}: laying out {args.file_mb} MiB at {path}")
    lay_out(m, "node1", path, args.file_mb)
    pids = mirror_pids(m) if subject != "local" else {}
    cores = os.cpu_count() or 1
    for job, options in JOBS.items():
        measure = Measure(subject, job)
        results.measures.append(measure)
        for rep in range(1, args.reps + 1):
            began, (all0, busy0) = time.monotonic(), machine_cpu()
            used0 = {role: process_cpu(pid) for role, pid in pids.items()}
            data = fio(
                m,
                "node1",
                [
                    f"--name={job}", f"--filename={path}", f"--size={args.file_mb}M",
                    f"--runtime={args.runtime}", *COMMON, *options,
                ],
                timeout=args.runtime * 4 + 60,
            )  # fmt: skip
            wall, (all1, busy1) = time.monotonic() - began, machine_cpu()
            used = {
                role: (process_cpu(pid) - used0[role]) / wall * 100 for role, pid in pids.items()
            }
            measure.busy.append((busy1 - busy0) / max(all1 - all0, 1e-9) * 100 * cores)
            if "source" in used:
                measure.cpu_source.append(used["source"])
            if "target" in used:
                measure.cpu_target.append(used["target"])
            write = data["jobs"][0]["write"]
            value = write["bw_bytes"] / 1e6 if job == "seq" else write["iops"]
            measure.values.append(value)
            lat = write.get("clat_ns", {}).get("mean", 0) / 1000
            unit = "MB/s" if job == "seq" else "IOPS"
            cpu = ", ".join(f"{role} {pct:.0f}%" for role, pct in used.items())
            say(
                f"   {job} #{rep}: {value:,.1f} {unit} (mean completion latency {lat:,.0f} us; "
                f"CPU {cpu + ', ' if cpu else ''}machine {measure.busy[-1]:.0f}% of "
                f"{cores * 100}%)"
            )


# --- the lab -----------------------------------------------------------------------------


def build(args: argparse.Namespace) -> MirrorLab:
    lab = Lab(NAME, subnet_index=SUBNET)
    lab.down()
    info = lab.up(2)
    disks = {s: d.device for s, d in lab.add_local_disks(args.disk_mb).items()}
    api = Api(info)
    a1, a2 = info.server("node1").address, info.server("node2").address
    body = {"local": "node1", "local_address": a1, "remote": "node2", "remote_address": a2}
    api.ok("POST", "/v1/commpaths", body)
    return MirrorLab(lab, info, api, disks)


def bench_local(m: MirrorLab, args: argparse.Namespace, results: Results) -> None:
    disk = m.disks["node1"]
    m.make_filesystem("node1")
    m.sh("node1", f"mkdir -p {LOCAL_MOUNT} && mount -t ext4 {disk} {LOCAL_MOUNT}")
    try:
        run_jobs(m, "local", LOCAL_MOUNT, args, results)
    finally:
        m.sh("node1", f"umount {LOCAL_MOUNT}")


def create_mirror(m: MirrorLab, args: argparse.Namespace, results: Results) -> None:
    say("== creating the mirror on node1 (sync), no target yet")
    m.create(mode="sync")
    if "alone" not in args.skip:
        run_jobs(m, "alone", MOUNT, args, results)
    say("== extending the mirror to node2 (initial synchronization)")
    began = time.monotonic()
    m.extend("node2")
    m.wait_mirroring("node2", timeout=600)
    wall = time.monotonic() - began
    first = m.resyncs()[-1]
    results.initial_sync = {**first, "wall": round(wall, 2)}
    say(
        f"   initial {first['kind']} sync: {first['regions']} regions, "
        f"{first['bytes'] / 2**20:.0f} MiB in {first['seconds']:.2f} s "
        f"({first['bytes'] / 1e6 / max(first['seconds'], 1e-3):.0f} MB/s); extend to "
        f"Mirroring {wall:.1f} s"
    )


def bench_resync(m: MirrorLab, args: argparse.Namespace, results: Results) -> None:
    path = f"{MOUNT}/resync.dat"
    file_mb = max(args.resync_sizes) * 2
    say(f"== partial resyncs: laying out {file_mb} MiB at {path}")
    lay_out(m, "node1", path, file_mb)
    for mib in args.resync_sizes:
        row = Resync(mib)
        # idle first: the activity log (regions written in the last second or two, which
        # a pause adds to the target's map as possibly in flight) forgets the layout
        time.sleep(IDLE)
        m.api.ok("POST", f"/v1/mirror/{TAG}/pause", {"target": "node2"})
        wait(lambda: m.server("node2")["state"] == "Paused", 30, "node2 Paused")
        fio(
            m,
            "node1",
            [
                "--name=dirty", f"--filename={path}", f"--size={file_mb}M",
                f"--io_size={mib}M", "--rw=randwrite", "--bs=1M", "--ioengine=libaio",
                "--iodepth=8", "--direct=1", "--randrepeat=0", "--end_fsync=1",
            ],
            timeout=600,
        )  # fmt: skip
        row.dirty_regions = wait(
            partial(_dirty, m, mib), 30, "the source's map of node2 to show the regions written"
        )
        before = len(m.resyncs())
        began = time.monotonic()
        m.api.ok("POST", f"/v1/mirror/{TAG}/continue", {"target": "node2"})
        m.wait_mirroring("node2", timeout=600)
        row.wall = time.monotonic() - began
        found = [r for r in m.resyncs()[before:] if r["target"] == "node2"]
        if found:
            last = found[-1]
            row.kind, row.regions = last["kind"], last["regions"]
            row.nbytes, row.seconds = last["bytes"], last["seconds"]
        results.resyncs.append(row)
        say(
            f"   {mib} MiB written while paused: {row.dirty_regions} dirty regions; "
            f"{row.kind or '?'} resync of {row.regions} regions ({row.nbytes / 2**20:.0f} MiB) "
            f"in {row.seconds:.2f} s; continue -> Mirroring {row.wall:.2f} s"
        )


def _dirty(m: MirrorLab, at_least: int) -> int:
    """The regions the source's map of node2 holds, 0 while fewer than ``at_least``."""
    count = int(m.status()["targets"]["node2"]["dirty_regions"])
    return count if count >= at_least else 0


def _count(m: MirrorLab, before: int) -> dict[str, int]:
    kinds: dict[str, int] = {"full": 0, "partial": 0}
    for record in m.resyncs()[before:]:
        kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
    return kinds


def _in_service(m: MirrorLab, server: str, other: str) -> None:
    m.api.ok("POST", f"/v1/hierarchies/{TAG}/in-service", {"server": server})
    wait(lambda: m.states().get(server) == "ISP", 120, f"{server} in service")
    m.wait_mirroring(other, timeout=300)


def bench_moves(m: MirrorLab, results: Results) -> None:
    say("== switchover to node2 and back")
    before = len(m.resyncs())
    m.write("node1", "before-switchover", 8)
    _in_service(m, "node2", "node1")
    m.write("node2", "on-node2", 8)
    _in_service(m, "node1", "node2")
    results.moves["switchover (both ways)"] = _count(m, before)
    say(f"   resyncs: {results.moves['switchover (both ways)']}")

    say("== failover: SIGKILL of node1's agent and mirror process after a write")
    before = len(m.resyncs())
    m.write("node1", "before-failover", 8)
    status = json.loads((state_dir(m.info, "node1") / "status.json").read_text())
    agent = m.lab.agent_pid("node1")
    assert agent is not None and status["role"] == "source", status
    m.use("node2")
    began = time.monotonic()
    os.kill(int(status["pid"]), signal.SIGKILL)
    os.kill(agent, signal.SIGKILL)
    wait(lambda: m.states().get("node2") == "ISP", 120, "node2 in service after the failover")
    say(f"   node2 in service {time.monotonic() - began:.1f} s after the kill")
    m.checksum("node2", "before-failover")
    m.lab.start_agent("node1")
    m.wait_mirroring("node1", timeout=300)
    say(f"   node1 back as a Mirroring target {time.monotonic() - began:.1f} s after the kill")
    results.moves["failover, old source back"] = _count(m, before)
    say(f"   resyncs: {results.moves['failover, old source back']}")
    before = len(m.resyncs())
    _in_service(m, "node1", "node2")
    m.use("node1")
    results.moves["switchback to node1"] = _count(m, before)
    say(f"   switchback to node1, resyncs: {results.moves['switchback to node1']}")


def switch_to_async(m: MirrorLab) -> None:
    say("== mode async: property set, hierarchy out of service and in service on node1")
    m.api.ok("PATCH", f"/v1/resources/{TAG}/properties", {"properties": {"mode": "async"}})
    m.api.ok("POST", f"/v1/hierarchies/{TAG}/out-of-service", {})
    wait(lambda: set(m.states().values()) == {"OSU"}, 120, "out of service")

    def last_source() -> bool:
        row = m.server("node1")
        return bool(row["eligible"]) and "last source" in str(row["eligibility"])

    wait(last_source, 60, "node1 eligible as the last source")
    _in_service(m, "node1", "node2")
    mode = m.status().get("mode")
    if mode != "async":
        raise RuntimeError(f"the mirror's mode is {mode!r} after the change, not async")


# --- report ------------------------------------------------------------------------------


def _fmt(value: float | None, job: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if job == "rand" or value >= 100 else f"{value:,.1f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}%"


def report(results: Results, args: argparse.Namespace) -> str:
    lines = [
        f"fio on node1, {args.file_mb} MiB file on ext4, --direct=1 libaio, {args.runtime} s "
        f"per run, {args.reps} runs; seq = 1 MiB writes iodepth 16 (MB/s), rand = 4 KiB "
        "random writes iodepth 32 (IOPS); CPU: medians, % of one core, of the mirror's "
        f"source and target processes and of the whole machine ({os.cpu_count()} cores, "
        "every process and the kernel, other labs included); core-us/write: the two mirror "
        "processes' CPU per write",
        "",
        f"{'job':5} {'subject':7} {'min':>9} {'median':>9} {'max':>9} {'vs local':>9} "
        f"{'target':>12} {'CPU src':>8} {'CPU tgt':>8} {'machine':>8} {'core-us/write':>14}",
    ]
    local = {m.job: m.median for m in results.measures if m.subject == "local"}
    for job in JOBS:
        for measure in [m for m in results.measures if m.job == job]:
            values = measure.values
            ratio, target = "", ""
            base = local.get(job)
            if measure.subject != "local" and base and measure.median is not None:
                ratio = f"{measure.median / base:.0%}"
                if measure.subject == "sync":
                    met = measure.median / base >= TARGETS[job]
                    target = f">={TARGETS[job]:.0%} {'met' if met else 'MISSED'}"
            src, tgt, busy = (
                _median(measure.cpu_source), _median(measure.cpu_target), _median(measure.busy)
            )  # fmt: skip
            per_write = ""
            if src is not None and measure.median:
                # CPU of the mirror's processes per write fio made (1 MiB or 4 KiB)
                writes = measure.median * 1e6 / 2**20 if job == "seq" else measure.median
                per_write = f"{((src + (tgt or 0)) / 100) / writes * 1e6:,.0f}"
            lines.append(
                f"{job:5} {measure.subject:7} {_fmt(min(values, default=None), job):>9} "
                f"{_fmt(measure.median, job):>9} {_fmt(max(values, default=None), job):>9} "
                f"{ratio:>9} {target:>12} {_pct(src):>8} {_pct(tgt):>8} {_pct(busy):>8} "
                f"{per_write:>14}"
            )
    if results.initial_sync:
        s = results.initial_sync
        lines += [
            "",
            f"initial sync ({s['kind']}): {s['regions']} regions, {s['bytes'] / 2**20:.0f} "
            f"MiB in {s['seconds']:.2f} s ({s['bytes'] / 1e6 / max(s['seconds'], 1e-3):.0f} "
            f"MB/s); extend -> Mirroring {s['wall']:.1f} s",
        ]
    if results.resyncs:
        lines += [
            "",
            "partial resync after a pause: N MiB written in 1 MiB blocks at random places",
            f"{'written':>8} {'dirty':>6} {'kind':>8} {'copied':>7} {'MiB':>6} "
            f"{'resync s':>9} {'s/region':>9} {'to Mirroring s':>15}",
        ]
        for r in results.resyncs:
            per = r.seconds / r.regions * 1000 if r.regions else 0
            lines.append(
                f"{r.mib:>5} MiB {r.dirty_regions:>6} {r.kind or '?':>8} {r.regions:>7} "
                f"{r.nbytes / 2**20:>6.0f} {r.seconds:>9.2f} {per:>7.1f}ms {r.wall:>15.2f}"
            )
    if results.moves:
        lines += ["", "resyncs recorded by kind"]
        for what, kinds in results.moves.items():
            shown = ", ".join(f"{n} {k}" for k, n in kinds.items())
            lines.append(f"  {what:28} {shown}")
    for note in results.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def vigil_version() -> str:
    repo = Path(__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "src/vigil/kits/mirror"],
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    dirty = f", {len(changed)} uncommitted change(s) in the mirror kit" if changed else ""
    return f"vigil at commit {head or 'unknown'}{dirty}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="runs of each fio job")
    parser.add_argument("--runtime", type=int, default=8, help="seconds per fio run")
    parser.add_argument("--file-mb", type=int, default=256, help="size of fio's file")
    parser.add_argument("--disk-mb", type=int, default=1024, help="each server's disk")
    parser.add_argument("--resync-mb", default="8,32,128,256", help="MiB written while paused")
    parser.add_argument("--skip", default="", help="comma-separated: alone,resync,moves,async")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--cleanup", action="store_true", help="only remove leftovers")
    args = parser.parse_args(argv)
    args.resync_sizes = [int(x) for x in args.resync_mb.split(",") if x.strip()]
    args.skip = {s for s in args.skip.split(",") if s}
    if args.reps < 1 or args.runtime < 1 or not args.resync_sizes:
        parser.error("reps and runtime >= 1, at least one resync size")
    if max(args.resync_sizes) * 2 + args.file_mb + 64 > args.disk_mb:
        parser.error("--disk-mb too small for fio's file and twice the largest resync size")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("the bench needs root (namespaces, loop devices, FUSE, mounts)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    if args.cleanup:
        Lab(NAME, subnet_index=SUBNET).down()
        print("clean")
        return 0
    results = Results()
    exit_code = 0
    mirror: MirrorLab | None = None
    try:
        say(vigil_version())
        say(f"building lab {NAME} (10.213.{SUBNET}.0/24): 2 servers, {args.disk_mb} MiB disks")
        mirror = build(args)
        bench_local(mirror, args, results)
        create_mirror(mirror, args, results)
        run_jobs(mirror, "sync", MOUNT, args, results)
        if "resync" not in args.skip:
            bench_resync(mirror, args, results)
        if "moves" not in args.skip:
            bench_moves(mirror, results)
        if "async" not in args.skip:
            switch_to_async(mirror)
            before = len(mirror.resyncs())
            run_jobs(mirror, "async", MOUNT, args, results)
            # a target whose queue passed the high-water mark was Paused, then resynced
            mirror.wait_mirroring("node2", timeout=300)
            results.moves["async runs (queue overflows)"] = _count(mirror, before)
            say(
                f"   resyncs during the async runs: {results.moves['async runs (queue overflows)']}"
            )
    except KeyboardInterrupt:
        say("interrupted: tearing down")
        exit_code = 130
    except Exception:
        say(f"bench failed, tearing down:\n{traceback.format_exc()}")
        if mirror is not None:
            say(mirror.logs(15))
        exit_code = 1
    finally:
        if mirror is not None:
            mirror.api.close()
        try:
            Lab(NAME, subnet_index=SUBNET).down()
        except Exception as exc:
            say(f"teardown: {exc}")
    print()
    print(report(results, args))
    print(f"\ntotal runtime {time.monotonic() - _started:.0f} s; {vigil_version()}")
    if args.json:
        data = {
            "measures": [{**m.__dict__, "median": m.median} for m in results.measures],
            "resyncs": [r.__dict__ for r in results.resyncs],
            "initial_sync": results.initial_sync,
            "moves": results.moves,
        }
        args.json.write_text(json.dumps(data, indent=1))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
