"""Failover time from a client's point of view: fault -> first good answer from the new server.

Usage (as root, from the repository, with its virtualenv)::

    .venv/bin/python bench/failover.py [--runs 10] [--stores embedded,etcd]
        [--scenarios service-kill,agent-kill,link-cut] [--check-interval 0.5]

It builds its own lab (``bench``, subnet 10.213.59.0/24; on etcd ``bench-e``, 10.213.58.0/24)
of three servers and a client
namespace (``client1``) on the lab's bridge, protects the app kit's sample HTTP service
(port 8080; created on node1, extended to node2 and node3), and for each store and
scenario runs ``--runs`` times:

* **service-kill**: SIGKILL of the service on node1; local recovery brings it back there
  (the "new server" is node1 itself; ``recovery_limit`` is raised so that every run
  recovers locally; checks every ``--check-interval`` seconds);
* **agent-kill**: SIGKILL of node1's agent; its fence guard stops the service there,
  node2 takes over;
* **link-cut**: node1's host-side veth set down; node1 loses the store, fences itself,
  node2 takes over. Only on etcd: a link cut does not cut a server off the embedded
  store, a file on the same machine.

A client process in ``client1`` sends ``GET /`` to every server's address every 10 ms
(fixed cadence, non-blocking, each request with its own 1 s deadline) and reports each
answer with its send time (CLOCK_MONOTONIC, shared by every namespace). A run's figure is
the time from the fault to the send time of the first good answer from the new server.
A run counts as "two at once" when the client got answers from two servers for one tick,
or when the host-side dual-active probe (``tests/faults/probe.py``: every server every
20 ms, HTTP and processes) saw the service on two servers at one instant.

After each run the hierarchy is brought back to node1 (agent restarted, link up,
switchover) and the client must see node1 alone answering before the next fault.
Prints one table (min / median / max per scenario and store); the lab is torn down at
the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import os
import random
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests.faults

from tests.faults.cluster import Cluster, lab_up, wait_until
from tests.faults.probe import DualActiveProbe

from vigil.lab.lab import Lab

#: the bench's labs: one per store (rebuilding a lab of the same name right after its
#: ``down`` has been seen to fail, so the etcd one has a name and subnet of its own)
LABS = {"embedded": ("bench", 59), "etcd": ("bench-e", 58)}
PORT = 8080
TAG = "bweb"
SERVERS = ("node1", "node2", "node3")
CLIENT = "client1"
SCENARIOS = ("service-kill", "agent-kill", "link-cut")


# --- the client (runs inside the client namespace) -----------------------------------------


@dataclass
class _Request:
    sent: float
    address: str
    sock: socket.socket
    connected: bool = False
    data: bytearray = field(default_factory=bytearray)


def client_main(addresses: list[str], port: int, interval: float, timeout: float) -> int:
    """Poll ``GET /`` on every address every ``interval``; print ``send_time address name``
    for each good answer, until stdin closes."""
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ, None)
    next_tick = time.monotonic()
    pending: list[_Request] = []
    while True:
        now = time.monotonic()
        if now >= next_tick:
            for address in addresses:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                if sock.connect_ex((address, port)) not in (0, errno.EINPROGRESS):
                    sock.close()
                    continue
                request = _Request(next_tick, address, sock)
                pending.append(request)
                selector.register(sock, selectors.EVENT_WRITE, request)
            next_tick += interval
            if next_tick < now:  # fell behind (a stall): skip ticks, never burst
                next_tick = now + interval
        for request in [r for r in pending if now - r.sent > timeout]:
            _forget(selector, pending, request)
        for key, _ in selector.select(max(0.0, next_tick - time.monotonic())):
            if key.data is None:
                if not sys.stdin.readline():
                    return 0
            elif _advance(selector, key.data):
                _forget(selector, pending, key.data)


def _advance(selector: selectors.BaseSelector, request: _Request) -> bool:
    """One step of a request; True when it is over (answered or failed)."""
    sock = request.sock
    if not request.connected:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            return True
        try:
            sock.send(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        except OSError:
            return True
        request.connected = True
        selector.modify(sock, selectors.EVENT_READ, request)
        return False
    try:
        chunk = sock.recv(4096)
    except BlockingIOError:
        return False
    except OSError:
        return True
    if chunk:
        request.data += chunk
        return False
    head, _, body = bytes(request.data).partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.") and head.split(b" ", 2)[1:2] == [b"200"]:
        name = body.decode(errors="replace").split("\n", 1)[0].strip() or "?"
        print(f"{request.sent:.6f} {request.address} {name}", flush=True)
    return True


def _forget(selector: selectors.BaseSelector, pending: list[_Request], request: _Request) -> None:
    if request in pending:
        pending.remove(request)
        selector.unregister(request.sock)
        request.sock.close()


# --- the bench (runs on the host) ------------------------------------------------------------


@dataclass
class Answers:
    """What the client reports: (send time, server name) of every good answer."""

    process: subprocess.Popen[str]
    seen: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            sent, _, name = line.split()
            with self.lock:
                self.seen.append((float(sent), name))

    def forget(self) -> None:
        """Drop what was seen so far (each run looks only at its own answers)."""
        with self.lock:
            self.seen.clear()

    def since(self, start: float) -> list[tuple[float, str]]:
        with self.lock:
            return [a for a in self.seen if a[0] > start]

    def first(self, server: str, after: float, timeout: float) -> float:
        """Send time of the first answer from ``server`` sent after ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [t for t, name in self.since(after) if name == server]
            if found:
                return min(found)
            time.sleep(0.01)
        raise TimeoutError(f"no answer from {server} within {timeout}s of the fault")

    def only(self, server: str, seconds: float, timeout: float = 60.0) -> None:
        """Wait until ``server`` alone has answered every tick for ``seconds``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            start = time.monotonic()
            time.sleep(seconds)
            answers = self.since(start)
            ticks = {t for t, _ in answers}
            names = {n for _, n in answers}
            if names == {server} and len(ticks) >= seconds / 0.01 * 0.8:
                return
        raise TimeoutError(f"the client never saw {server} alone answering for {seconds}s")

    def dual_ticks(self, start: float, end: float) -> int:
        """Ticks (send times) answered by two servers."""
        by_tick: dict[float, set[str]] = {}
        for sent, name in self.since(start):
            if sent <= end:
                by_tick.setdefault(sent, set()).add(name)
        return sum(1 for names in by_tick.values() if len(names) > 1)


@dataclass
class Result:
    scenario: str
    store: str
    times: list[float] = field(default_factory=list)
    dual: int = 0
    failed: int = 0
    note: str = ""


class Bench:
    def __init__(self, store: str, check_interval: float) -> None:
        self.store = store
        name, subnet = LABS[store]
        self.lab = Lab(name, subnet_index=subnet)
        self.lab.down()  # leftovers of an interrupted run
        info = lab_up(self.lab, 3, store)
        self.cluster = Cluster(self.lab, info, store)
        client = self.lab.add_client(CLIENT)
        self._paths()
        self.cluster.create(TAG, PORT, quick_check=check_interval)
        self.cluster.resource_policy(TAG, recovery_limit=1000, recovery_period=1)
        argv = [
            "nsenter", f"--net={client.netns_path}", "--",
            sys.executable, "-u", str(Path(__file__).resolve()), "--client",
            ",".join(s.address for s in info.servers), str(PORT),
        ]  # fmt: skip
        process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        self.answers = Answers(process)
        self.mark = ""
        threading.Thread(target=self.answers.read, daemon=True).start()
        self.probe = DualActiveProbe(info, [PORT]).start()
        self.answers.only("node1", 1.0)

    def _paths(self) -> None:
        for i, one in enumerate(SERVERS):
            for other in SERVERS[i + 1 :]:
                body = {
                    "local": one,
                    "local_address": self.cluster.info.server(one).address,
                    "remote": other,
                    "remote_address": self.cluster.info.server(other).address,
                }
                self.cluster.ok("POST", "/v1/commpaths", body)

    def close(self) -> None:
        try:
            if hasattr(self, "probe"):
                self.probe.stop()
            if hasattr(self, "answers"):
                process = self.answers.process
                if process.stdin:
                    process.stdin.close()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
            if hasattr(self, "cluster"):
                self.cluster.close()
        finally:
            self.lab.down()

    # --- one run of a scenario --------------------------------------------------------------

    def run(self, scenario: str) -> tuple[float, bool]:
        """Fault, time to the first good answer from the new server, mend; and whether
        two servers were active at once meanwhile."""
        fault, new, mend = self._scenario(scenario)
        self.answers.forget()
        violations = len(self.probe.violations())
        self.mark = self.cluster.mark()
        # at a random phase of the check and lease-renewal cycles, not always the same one
        time.sleep(random.uniform(0.0, 1.0))
        start = time.monotonic()
        fault()
        took = self.answers.first(new, start, 60.0) - start
        mend()
        self.answers.only("node1", 0.5)
        dual = self.answers.dual_ticks(start, time.monotonic()) > 0
        dual = dual or len(self.probe.violations()) > violations
        return took, dual

    def _scenario(self, scenario: str) -> tuple[Callable[[], None], str, Callable[[], None]]:
        """(fault, the server that should answer next, how to mend)."""
        if scenario == "service-kill":
            return self._kill_service, "node1", self._recovered
        if scenario == "agent-kill":
            return self._kill_agent, "node2", self.mend
        return self._cut_link, "node2", self.mend

    def _kill_service(self) -> None:
        self.cluster.kill_service("node1", TAG, PORT)

    def _recovered(self) -> None:
        """Wait until the local recovery is over (the check after the restart included):
        a fault during the recovery is another experiment."""
        self.cluster.wait_event(self.mark, "recovered", text=TAG)

    def _kill_agent(self) -> None:
        self.cluster.kill_agent("node1")

    def _cut_link(self) -> None:
        self.cluster.link("node1", up=False)
        self.cluster.down.add("node1")  # its API is out of reach too

    def explain(self) -> None:
        """What the cluster did: the last events and the instances' states."""
        for event in self.cluster.events()[-15:]:
            say(f"  event {event['server']} {event['kind']}: {event['message'][:160]}")
        for server, instance in self.cluster.instances(TAG).items():
            say(f"  {server}: {instance['state']} ({instance['reason'][:120]})")

    def mend(self) -> None:
        """node1 back (link up, agent running) and the hierarchy in service there."""
        self.cluster.link("node1", up=True)
        self.cluster.start_agent("node1")
        wait_until(
            lambda: self.cluster.server_view("node1")["state"] != "DEAD",
            60,
            "node1's agent back in the cluster",
        )
        if self.cluster.hierarchy(TAG)["wanted_on"] != "node1":
            self.cluster.ok("POST", f"/v1/hierarchies/{TAG}/in-service", {"server": "node1"})


# --- output ----------------------------------------------------------------------------------


def table(results: list[Result], runs: int, check_interval: float) -> str:
    head = ("scenario", "store", "runs", "min (s)", "median (s)", "max (s)", "two at once")
    rows = [head]
    for r in results:
        if r.times:
            figures = [f"{min(r.times):.2f}", f"{statistics.median(r.times):.2f}"]
            figures.append(f"{max(r.times):.2f}")
        else:
            figures = ["-", "-", "-"]
        rows.append((r.scenario, r.store, str(len(r.times)), *figures, str(r.dual)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        f"vigil failover from a client's point of view: fault -> first good answer from the "
        f"new server ({runs} runs each; client polls every 10 ms; quick check every "
        f"{check_interval:g} s; default lease: ttl 1.5 s, timed by the observers' clocks)",
        "",
    ]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [f"note: {r.scenario} on {r.store}: {r.note}" for r in results if r.note]
    return "\n".join(lines)


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


_MAIN_PID = os.getpid()


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM: tear down as on Ctrl-C. A forked copy of this process (pyroute2 forks to
    create a network namespace) inherits this handler: it must just die, never run the
    bench's cleanup (that tore the lab down under the parent's feet)."""
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per scenario and store")
    parser.add_argument("--stores", default="", help="embedded,etcd (default: every one)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--check-interval", type=float, default=0.5, help="quick check (s)")
    return parser.parse_args(argv)


def available_stores() -> list[str]:
    etcd = "store" in inspect.signature(Lab.up).parameters and shutil.which("etcd")
    return ["embedded", "etcd"] if etcd else ["embedded"]


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--client"]:
        addresses, port = sys.argv[2].split(","), int(sys.argv[3])
        return client_main(addresses, port, 0.01, 1.0)
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/failover.py builds a lab: run it as root", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    stores = [s for s in args.stores.split(",") if s] or available_stores()
    scenarios = [s for s in args.scenarios.split(",") if s]
    results: list[Result] = []
    try:
        for store in stores:
            say(f"building lab {LABS[store][0]} on the {store} store")
            bench = Bench(store, args.check_interval)
            try:
                for scenario in scenarios:
                    result = Result(scenario, store)
                    results.append(result)
                    if scenario == "link-cut" and store == "embedded":
                        results.pop()  # a link cut does not cut a server off a local file
                        continue
                    for run in range(1, args.runs + 1):
                        try:
                            took, dual = bench.run(scenario)
                        except (TimeoutError, AssertionError) as exc:
                            result.failed += 1
                            result.note = f"{result.failed} run(s) failed, last: {exc}"
                            say(f"{store} {scenario} run {run} FAILED: {exc}")
                            bench.explain()
                            bench.mend()
                            bench.answers.only("node1", 0.5)
                            continue
                        result.times.append(took)
                        result.dual += dual
                        mark = " TWO AT ONCE" if dual else ""
                        say(f"{store} {scenario} run {run}: {took:.3f}s{mark}")
            finally:
                bench.close()
    except KeyboardInterrupt as exc:
        say(f"interrupted ({exc or 'Ctrl-C'}): the lab is torn down")
        return 130
    print(table(results, args.runs, args.check_interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
