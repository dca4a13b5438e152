"""The fault campaign's writer of acknowledged records (standard library only: it runs
inside a lab server, as the app kit's commands of a resource on top of a shared volume).

    python campaign_writer.py start  --pidfile P --file F --acks A --lost L [--interval S]
    python campaign_writer.py stop   --pidfile P
    python campaign_writer.py status --pidfile P
    python campaign_writer.py check  --file F --count N

``run`` (started by ``start`` as a daemon in a session of its own, output to ``P.log``)
numbers its records from the last number in the ack log ``A`` + 1: record ``i`` (64
bytes: its number and a digest of it) is written at offset ``i * 64`` of ``F`` with
``pwrite``, made durable with ``fdatasync``, and only then acknowledged: the line
``i server pid epoch time`` appended to ``A`` (a file outside the volume, on the host's
filesystem that every server of the lab sees). An acknowledged record must survive
anything the campaign does. Before its first write, ``run`` reads back every record the
ack log acknowledges: each one missing or wrong is reported on a line of ``L`` (and the
writer goes on). It stops at the first write error (the volume went away under it).

``start`` exits 0 once the writer runs (also when it already ran) and has acknowledged a
record, 1 when it died or acknowledged nothing within 10 s; ``stop`` exits 0 once it is
gone; ``status`` exits 0 when it runs, 7 when it does not (the app kit's exit codes).
``check`` prints the numbers of the records ``0..N-1`` of ``F`` that are missing or wrong
and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SIZE = 64
EXIT_OK, EXIT_FAILED, EXIT_NOT_RUNNING = 0, 1, 7
_MARKER = b"campaign_writer.py"


def record(number: int) -> bytes:
    """Record ``number``: 64 bytes, its number and a digest of it, ending in a newline."""
    head = f"{number:012d} "
    digest = hashlib.sha256(head.encode()).hexdigest()[: SIZE - len(head) - 1]
    return f"{head}{digest}\n".encode()


def last_acked(acks: Path) -> int:
    """The number on the last complete line of the ack log (-1: none)."""
    try:
        with open(acks, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 4096))
            tail = handle.read()
    except FileNotFoundError:
        return -1
    lines = [line for line in tail.split(b"\n")[:-1] if line.strip()]
    return int(lines[-1].split()[0]) if lines else -1


def bad_records(path: Path, count: int) -> list[int]:
    """Numbers of the records ``0..count-1`` of ``path`` that are missing or wrong."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(count * SIZE)
    except FileNotFoundError:
        data = b""
    return [n for n in range(count) if data[n * SIZE : (n + 1) * SIZE] != record(n)]


def run(args: argparse.Namespace) -> int:
    server = os.environ.get("VIGIL_SERVER", "?")
    epoch = os.environ.get("VIGIL_EPOCH", "?")
    first = last_acked(args.acks) + 1
    bad = bad_records(args.file, first)
    if bad:
        shown = " ".join(str(n) for n in bad[:50]) + (" ..." if len(bad) > 50 else "")
        line = (
            f"{time.time():.3f} {server} pid {os.getpid()}: {len(bad)} of the {first} "
            f"acknowledged records missing or wrong: {shown}\n"
        )
        with open(args.lost, "a") as lost:
            lost.write(line)
        print(line, end="", flush=True)
    fd = os.open(args.file, os.O_RDWR | os.O_CREAT, 0o644)
    directory = os.open(args.file.parent, os.O_RDONLY)
    os.fsync(directory)
    os.close(directory)
    ack = os.open(args.acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    print(f"writing from record {first} on {server} (epoch {epoch})", flush=True)
    number = first
    while True:
        try:
            os.pwrite(fd, record(number), number * SIZE)
            os.fdatasync(fd)
        except OSError as exc:
            print(f"stopped at record {number}: {exc}", flush=True)
            return EXIT_FAILED
        os.write(ack, f"{number} {server} {os.getpid()} {epoch} {time.time():.3f}\n".encode())
        number += 1
        time.sleep(args.interval)


def _pid(pidfile: Path) -> int | None:
    """The writer's pid from ``pidfile`` if that process runs (and is a writer)."""
    try:
        pid = int(pidfile.read_text().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read()
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except (OSError, ValueError):
        return None
    if _MARKER not in cmdline or stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X"):
        return None
    return pid


def start(args: argparse.Namespace) -> int:
    if _pid(args.pidfile) is not None:
        return EXIT_OK
    argv = [sys.executable, os.path.abspath(__file__), "run", *_run_options(args)]
    log = open(f"{args.pidfile}.log", "ab")  # noqa: SIM115 (the daemon's, not ours)
    child = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
    )
    log.close()
    args.pidfile.write_text(f"{child.pid}\n")
    marker = f" {child.pid} ".encode()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if child.poll() is not None:
            print(f"the writer exited with {child.returncode}; see {args.pidfile}.log")
            return EXIT_FAILED
        with contextlib.suppress(FileNotFoundError), open(args.acks, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4096))
            if marker in handle.read():
                return EXIT_OK
        time.sleep(0.05)
    print("the writer acknowledged no record within 10 s")
    return EXIT_FAILED


def _run_options(args: argparse.Namespace) -> list[str]:
    return [
        f"--file={args.file}",
        f"--acks={args.acks}",
        f"--lost={args.lost}",
        f"--interval={args.interval}",
    ]


def stop(args: argparse.Namespace) -> int:
    pid = _pid(args.pidfile)
    if pid is None:
        return EXIT_OK
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    while _pid(args.pidfile) is not None:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="campaign_writer.py")
    parser.add_argument("command", choices=["start", "stop", "status", "run", "check"])
    parser.add_argument("--pidfile", type=Path)
    parser.add_argument("--file", type=Path)
    parser.add_argument("--acks", type=Path)
    parser.add_argument("--lost", type=Path)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    if args.command == "start":
        return start(args)
    if args.command == "stop":
        return stop(args)
    if args.command == "status":
        return EXIT_OK if _pid(args.pidfile) is not None else EXIT_NOT_RUNNING
    bad = bad_records(args.file, args.count)
    print(" ".join(str(n) for n in bad))
    return EXIT_FAILED if bad else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
