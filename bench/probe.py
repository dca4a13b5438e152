"""What the failover bench sees: the client's probe and the host's per-server watchers.

* The **client probe** (``python bench/probe.py client ...``, started inside the client
  namespace) opens a new TCP connection to ``HOST:PORT`` every ``interval`` (10 ms, on a
  fixed cadence, never drifting), sends ``GET /`` and reads the answer: the sample
  service answers its server's name. Each request has ``timeout`` seconds; requests
  overlap when the server is slow. One line per request goes to stdout: send time
  (CLOCK_MONOTONIC, system-wide, so the bench can compare it with its own clock),
  ``1``/``0`` and the server that answered (``-`` for none). It stops by itself after
  ``max_seconds``, or when its stdin closes.
* A **watcher** thread per server enters that server's network namespace (``setns`` only
  changes the calling thread) and samples every ``interval``: is the virtual address
  configured there (binding a socket to it succeeds only for a local address), and is
  anything listening on the service's port (``sock_diag`` dump of listening TCP sockets:
  one netlink round trip, no traffic, nothing in the service's log).
* ``analyse`` turns both into one run's outcome: the client's outage (its longest time
  without an answer), the takeover time (until another server answered), and whether
  the address, the service, or the client's answers were on two servers at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import itertools
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
TCP_LISTEN = 10


# --- the client probe (runs in the client namespace) -------------------------------------


async def _one_request(host: str, port: int, timeout: float) -> str | None:
    """The first line of what ``GET /`` answers, or None (refused, timed out, garbled)."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            sock = writer.get_extra_info("socket")
            # close with RST: no TIME_WAIT pile-up on the client at 100 connections/s
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.write(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = await reader.read()  # HTTP/1.0: the server closes after its answer
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return None
    finally:
        if writer is not None:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
        return None
    line = body.decode(errors="replace").strip().splitlines()
    return line[0].strip() if line and line[0].strip() else None


async def _client(host: str, port: int, interval: float, timeout: float, seconds: float) -> None:
    out = sys.stdout
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(0, 4096) else None)

    async def request(sent: float) -> None:
        who = await _one_request(host, port, timeout)
        out.write(f"{sent:.6f} {int(who is not None)} {who or '-'}\n")
        out.flush()

    pending: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    k = 0
    while not stop.is_set() and time.monotonic() - start < seconds:
        sent = time.monotonic()
        task = asyncio.create_task(request(sent))
        pending.add(task)
        task.add_done_callback(pending.discard)
        k += 1
        delay = start + k * interval - time.monotonic()
        if delay < 0:  # fell behind (a stall): skip the missed slots, keep the cadence
            k += int(-delay / interval) + 1
            delay = start + k * interval - time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(delay, 0.0))
    if pending:
        await asyncio.wait(pending, timeout=timeout + 1.0)


# --- the client probe, seen from the bench -----------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One probe request: when it was sent, and who answered (None: nobody in time)."""

    sent: float
    who: str | None


class ClientProbe:
    """Runs the client probe in a namespace (``enter``: the ``nsenter ... --`` prefix) and
    collects its answers in a thread."""

    def __init__(
        self,
        enter: list[str],
        host: str,
        port: int,
        *,
        interval: float = 0.01,
        timeout: float = 0.25,
        max_seconds: float = 300.0,
    ) -> None:
        self.interval = interval
        argv = [
            *enter,
            sys.executable,
            str(Path(__file__).resolve()),
            "client",
            f"--host={host}",
            f"--port={port}",
            f"--interval={interval}",
            f"--timeout={timeout}",
            f"--max-seconds={max_seconds}",
        ]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self._lock = threading.Lock()
        self._answers: list[Answer] = []
        self._reader = threading.Thread(target=self._read, name="client-probe", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = line.split()
            if len(parts) != 3:
                continue
            answer = Answer(float(parts[0]), parts[2] if parts[1] == "1" else None)
            with self._lock:
                self._answers.append(answer)

    def answers(self) -> list[Answer]:
        """Every answer so far, by send time."""
        with self._lock:
            return sorted(self._answers, key=lambda a: a.sent)

    def stop(self) -> list[Answer]:
        """Stop the probe (closing its stdin; SIGKILL if it lingers); every answer."""
        if self._proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self._proc.stdin is not None
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._reader.join(timeout=5)
        return self.answers()


# --- the watchers (threads in the servers' network namespaces) ---------------------------


def _setns(path: Path) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def _address_here(address: str) -> bool:
    """Whether ``address`` is configured in this thread's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def _listening_ports(diag: socket.socket, seq: int) -> set[int]:
    """TCP ports with a listening IPv4 socket in this namespace (one sock_diag dump)."""
    sockid = bytes(48)
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
    request += sockid
    header = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY,
                         NLM_F_REQUEST | NLM_F_DUMP, seq, 0)  # fmt: skip
    diag.send(header + request)
    ports = set()
    while True:
        data = diag.recv(65536)
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if kind in (NLMSG_DONE, NLMSG_ERROR):
                return ports
            if kind == SOCK_DIAG_BY_FAMILY:
                (sport,) = struct.unpack_from("!H", data, offset + 16 + 4)
                ports.add(sport)
            offset += (length + 3) & ~3
            if length == 0:
                return ports


@dataclass(frozen=True)
class Sample:
    at: float
    address: bool
    service: bool


@dataclass
class Watcher:
    """Samples one server: the virtual address and the service's listening socket."""

    server: str
    netns_path: Path
    address: str
    port: int
    interval: float = 0.01
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.server}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            _setns(self.netns_path)  # this thread only
            with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as diag:
                diag.settimeout(1.0)
                seq = 0
                while not self._stop.is_set():
                    seq += 1
                    at = time.monotonic()
                    sample = Sample(
                        at, _address_here(self.address), self.port in _listening_ports(diag, seq)
                    )
                    self.samples.append(sample)
                    self._stop.wait(max(0.0, at + self.interval - time.monotonic()))
        except Exception as exc:  # reported by the bench with the run
            self.error = f"{type(exc).__name__}: {exc}"

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(timeout=5)
        return list(self.samples)


# --- analysis ----------------------------------------------------------------------------


def up_intervals(samples: list[Sample], what: str) -> list[tuple[float, float]]:
    """Spans [first, last] of consecutive samples where ``what`` (address, service) held."""
    spans: list[tuple[float, float]] = []
    start = last = None
    for sample in samples:
        if getattr(sample, what):
            if start is None:
                start = sample.at
            last = sample.at
        elif start is not None:
            assert last is not None
            spans.append((start, last))
            start = last = None
    if start is not None and last is not None:
        spans.append((start, last))
    return spans


def overlap(per_server: dict[str, list[Sample]], what: str) -> float:
    """Longest time two servers both had ``what`` (seconds; 0.0: never at once).

    Only certain overlaps count: both servers were seen with it at the start and at the
    end of the overlap, with nothing else seen in between."""
    spans = {server: up_intervals(samples, what) for server, samples in per_server.items()}
    servers = sorted(spans)
    longest = 0.0
    for i, one in enumerate(servers):
        for other in servers[i + 1 :]:
            for a0, a1 in spans[one]:
                for b0, b1 in spans[other]:
                    start, end = max(a0, b0), min(a1, b1)
                    if end >= start:
                        longest = max(longest, end - start + 1e-9)
    return longest


@dataclass(frozen=True)
class Outcome:
    """One failover run, as the client and the watchers saw it."""

    outage: float | None  # seconds without an answer; None: not recovered in the window
    takeover: float | None  # seconds from the fault to the first answer by another server
    before: str | None  # who answered before the fault
    after: str | None  # who answered at the end
    address_overlap: float  # longest time the address was on two servers at once
    service_overlap: float  # same for the service's listening socket
    client_flips: int  # answers from a server other than the last one, after a takeover
    lost: int  # requests without an answer after the fault

    @property
    def dual(self) -> bool:
        return self.address_overlap > 0 or self.service_overlap > 0 or self.client_flips > 0


def outage_of(answers: list[Answer], fault: float, interval: float) -> float | None:
    """The client's longest time without an answer after ``fault``.

    Measured between the send times of the answered requests around the gap, minus one
    poll interval (so no loss reads 0.00). None when nothing answered after the fault."""
    answered = [a.sent for a in answers if a.who is not None]
    before = [t for t in answered if t < fault]
    after = [t for t in answered if t >= fault]
    if not after:
        return None
    times = ([before[-1]] if before else [fault]) + after
    gap = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    return max(0.0, gap - interval)


def takeover_of(answers: list[Answer], fault: float, failed: str) -> float | None:
    """Seconds from ``fault`` to the send time of the first request another server than
    ``failed`` answered (None: none did)."""
    for answer in answers:
        if answer.sent >= fault and answer.who is not None and answer.who != failed:
            return max(0.0, answer.sent - fault)
    return None


def client_flips(answers: list[Answer], fault: float, failed: str) -> int:
    """Answers from the failed server after the client had already seen another one
    answer (after the fault): the client talking to two servers in turn."""
    seen_other = False
    flips = 0
    for answer in answers:
        if answer.sent < fault or answer.who is None:
            continue
        if answer.who != failed:
            seen_other = True
        elif seen_other:
            flips += 1
    return flips


def analyse(
    answers: list[Answer],
    samples: dict[str, list[Sample]],
    fault: float,
    failed: str,
    interval: float,
) -> Outcome:
    """The outcome of one run whose fault hit ``failed`` at ``fault`` (monotonic)."""
    before = [a.who for a in answers if a.sent < fault and a.who]
    after = [a.who for a in answers if a.sent >= fault and a.who]
    return Outcome(
        outage=outage_of(answers, fault, interval),
        takeover=takeover_of(answers, fault, failed),
        before=before[-1] if before else None,
        after=after[-1] if after else None,
        address_overlap=overlap(samples, "address"),
        service_overlap=overlap(samples, "service"),
        client_flips=client_flips(answers, fault, failed),
        lost=sum(1 for a in answers if a.sent >= fault and a.who is None),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    client = sub.add_parser("client", help="poll GET / on HOST:PORT; one line per request")
    client.add_argument("--host", required=True)
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--interval", type=float, default=0.01)
    client.add_argument("--timeout", type=float, default=0.25)
    client.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        asyncio.run(_client(args.host, args.port, args.interval, args.timeout, args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
