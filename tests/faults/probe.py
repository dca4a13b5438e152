"""The dual-active probe: proof that a protected service never runs on two servers at once.

A background thread samples every server of a lab every ``interval`` (20 ms): in one
round it sends ``GET /`` to the service's port on every server at once (non-blocking
sockets, one ``selectors`` loop, a short deadline), then scans ``/proc`` for the service's
processes and maps each to its server by its network namespace (``/proc/PID/ns/net``
against ``/run/netns/NAME``: every lab process is visible from the host). A process counts
as the service from the moment its ``start`` command runs (the shell of a restore
included) until it is gone or a zombie.

Every sample is kept. ``check()`` fails if, in any sample, the service answered on two
servers, or its processes ran on two servers, and prints the offending samples. A test
that starts a second copy by hand on purpose says so with ``probe.ignore(server)``; the
copy is left out of the check while the block runs.

Used as a context manager (``with DualActiveProbe(info, [8080]) as probe:``) it checks on
exit; the ``probe`` fixture of ``tests/faults/conftest.py`` does the same for each test.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vigil.lab.info import LabInfo

NETNS_DIR = Path("/run/netns")
#: the sample service's start command (and the shell running it), with its port
_START = re.compile(rb"vigil\.kits\.app\.sample_service[ \x00]+start[ \x00].*?--port[ \x00=]+(\d+)")


@dataclass(frozen=True)
class Sample:
    """What one round saw. ``at``: monotonic time the round began; ``took``: its length.
    ``answering``: port -> {server: first line of its answer}; ``running``: port ->
    {server: pids}; ``ignored``: servers left out of the check at that moment."""

    at: float
    took: float
    answering: dict[int, dict[str, str]]
    running: dict[int, dict[str, tuple[int, ...]]]
    ignored: frozenset[str] = frozenset()

    def answered(self, port: int) -> set[str]:
        return set(self.answering.get(port, {}))

    def ran(self, port: int) -> set[str]:
        return set(self.running.get(port, {}))

    def dual(self) -> list[str]:
        """What makes this sample a violation (empty: none)."""
        problems = []
        for port, seen in self.answering.items():
            servers = sorted(set(seen) - self.ignored)
            if len(servers) > 1:
                problems.append(f"port {port} answered on {', '.join(servers)}")
        for port, seen in self.running.items():
            servers = sorted(set(seen) - self.ignored)
            if len(servers) > 1:
                where = ", ".join(f"{s} (pids {list(seen[s])})" for s in servers)
                problems.append(f"port {port} service process on {where}")
        return problems


@dataclass
class _Request:
    server: str
    port: int
    sock: socket.socket
    sent: bool = False
    data: bytearray = field(default_factory=bytearray)


def ns_key(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def alive(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X", b"")


class DualActiveProbe:
    """Samples ``ports`` on every server of ``info`` until ``stop()``."""

    def __init__(
        self,
        info: LabInfo,
        ports: Iterable[int],
        *,
        interval: float = 0.02,
        timeout: float = 0.15,
    ) -> None:
        self.info = info
        self.ports = sorted(set(ports))
        self.interval = interval
        self.timeout = timeout
        self.addresses = {s.name: s.address for s in info.servers}
        self.netns = {
            key: s.name for s in info.servers if (key := ns_key(NETNS_DIR / s.netns)) is not None
        }
        self.samples: list[Sample] = []
        self.started = 0.0
        self._ignored: set[str] = set()
        self._lock = threading.Lock()
        self._new = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> DualActiveProbe:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="dual-active probe", daemon=True)
        self._thread.start()
        self.wait(lambda s: True, 10, "a first sample")
        return self

    def stop(self) -> None:
        """Stop sampling (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._new:
            self._new.notify_all()

    def __enter__(self) -> DualActiveProbe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.check()

    def add_port(self, port: int) -> None:
        """Watch one more port from the next round on."""
        with self._lock:
            if port not in self.ports:
                self.ports = sorted({*self.ports, port})

    @contextlib.contextmanager
    def ignore(self, server: str) -> Iterator[None]:
        """Leave ``server`` out of the dual check while the block runs (a copy the test
        started there by hand, on purpose)."""
        with self._lock:
            self._ignored.add(server)
        try:
            yield
        finally:
            with self._lock:
                self._ignored.discard(server)

    # --- results ----------------------------------------------------------------------------

    def violations(self) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if s.dual()]

    def check(self) -> None:
        """Fail (AssertionError) if the service was ever up on two servers at one instant."""
        if self._error is not None:
            raise AssertionError(f"the dual-active probe crashed: {self._error!r}")
        bad = self.violations()
        if not bad:
            return
        lines = [
            f"DUAL ACTIVE in {len(bad)} of {len(self.samples)} samples "
            f"(times in s since the probe started):"
        ]
        for sample in bad[:25]:
            lines.append(f"  t={sample.at - self.started:8.3f}: {'; '.join(sample.dual())}")
        if len(bad) > 25:
            lines.append(f"  ... and {len(bad) - 25} more")
        raise AssertionError("\n".join(lines))

    def latest(self) -> Sample:
        with self._lock:
            return self.samples[-1]

    def wait(
        self, condition: Callable[[Sample], object], timeout: float = 30.0, what: str = "condition"
    ) -> Sample:
        """Wait for the first *new* sample that satisfies ``condition``; return it."""
        deadline = time.monotonic() + timeout
        with self._new:
            seen = len(self.samples)
            while True:
                for sample in self.samples[seen:]:
                    if condition(sample):
                        return sample
                seen = len(self.samples)
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    last = self.samples[-1] if self.samples else None
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; last sample: {last}"
                    )
                self._new.wait(min(left, 0.5))

    def where(self, port: int) -> set[str]:
        """Servers where ``port`` answered in the latest sample."""
        return self.latest().answered(port)

    def answering_only(self, port: int, server: str | None, timeout: float = 30.0) -> Sample:
        """Wait until ``port`` answers on ``server`` alone (None: nowhere) and its
        processes run nowhere else."""
        want = {server} if server else set()
        return self.wait(
            lambda s: s.answered(port) == want and s.ran(port) <= want,
            timeout,
            f"port {port} up on {server or 'no server'} only",
        )

    def steady(self, port: int, server: str | None, seconds: float) -> None:
        """Assert that for ``seconds`` every sample shows ``port`` answering on ``server``
        alone (None: nowhere)."""
        want = {server} if server else set()
        end = time.monotonic() + seconds
        with self._new:
            seen = len(self.samples)
        while time.monotonic() < end:
            time.sleep(0.1)
            with self._lock:
                fresh = self.samples[seen:]
                seen = len(self.samples)
            for sample in fresh:
                assert sample.answered(port) == want, (
                    f"port {port} expected up on {server or 'no server'} only, "
                    f"at t={sample.at - self.started:.3f}: {sample}"
                )

    # --- sampling ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            next_at = time.monotonic()
            while not self._stop.is_set():
                began = time.monotonic()
                with self._lock:
                    ports = list(self.ports)
                    ignored = frozenset(self._ignored)
                answering = self._http_round(ports)
                running = self._processes(ports)
                with self._lock:
                    # a server ignored at any moment of the sample: a copy started by the
                    # test just after the sample began must not count as a dual activity
                    ignored |= self._ignored
                sample = Sample(began, time.monotonic() - began, answering, running, ignored)
                with self._new:
                    self.samples.append(sample)
                    self._new.notify_all()
                next_at = max(next_at + self.interval, time.monotonic())
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:  # reported by check()
            self._error = exc
            raise

    def _http_round(self, ports: list[int]) -> dict[int, dict[str, str]]:
        """GET / on every (server, port) at once; who answered 200, and the first line."""
        answers: dict[int, dict[str, str]] = {port: {} for port in ports}
        selector = selectors.DefaultSelector()
        pending: list[_Request] = []
        try:
            for server, address in self.addresses.items():
                for port in ports:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    code = sock.connect_ex((address, port))
                    if code not in (0, errno.EINPROGRESS):
                        sock.close()
                        continue
                    request = _Request(server, port, sock)
                    pending.append(request)
                    selector.register(sock, selectors.EVENT_WRITE, request)
            deadline = time.monotonic() + self.timeout
            while selector.get_map() and (left := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(left):
                    request = key.data
                    done = self._step(selector, request)
                    if done is not None:
                        selector.unregister(request.sock)
                        if done:
                            answers[request.port][request.server] = done
        finally:
            selector.close()
            for request in pending:
                request.sock.close()
        return answers

    def _step(self, selector: selectors.BaseSelector, request: _Request) -> str | None:
        """Advance one request; None: not finished, "": failed, else the answer's first line."""
        sock = request.sock
        if not request.sent:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                return ""
            try:
                sock.send(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")
            except OSError:
                return ""
            request.sent = True
            selector.modify(sock, selectors.EVENT_READ, request)
            return None
        try:
            chunk = sock.recv(4096)
        except BlockingIOError:
            return None
        except OSError:
            return ""
        if chunk:
            request.data += chunk
            return None
        head, _, body = bytes(request.data).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or head.split(b" ", 2)[1:2] != [b"200"]:
            return ""
        return body.decode(errors="replace").split("\n", 1)[0].strip() or "?"

    def _processes(self, ports: list[int]) -> dict[int, dict[str, tuple[int, ...]]]:
        """port -> server -> pids of the service's processes (its start command included)."""
        found: dict[int, dict[str, list[int]]] = {port: {} for port in ports}
        for entry in os.scandir("/proc"):
            pid = entry.name
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    cmdline = handle.read()
            except OSError:
                continue
            match = _START.search(cmdline)
            if match is None or int(match.group(1)) not in found or not alive(pid):
                continue
            server = self.netns.get(ns_key(f"/proc/{pid}/ns/net") or (0, 0))
            if server is not None:
                found[int(match.group(1))].setdefault(server, []).append(int(pid))
        return {port: {s: tuple(p) for s, p in seen.items()} for port, seen in found.items()}
