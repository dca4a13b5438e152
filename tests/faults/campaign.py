"""A long fault campaign (issue 14, item 8): random faults, one at a time, against a lab of
three servers on a three-member etcd protecting three hierarchies, with the invariants
checked all along. ``bench/campaign.py`` runs it for as many faults as asked;
``tests/faults/test_campaign.py`` runs a short one.

The lab (``Campaign.build``): servers node1..node3, etcd members etcd1..etcd3, comm paths
between every pair, a shared disk (ext4 with multi-mount protection) and three hierarchies,
each with its own preferred server (tags start with the lab's name, ``NAME``):

* ``NAME-web``: the sample HTTP service on port 8080 over the address ``.100``
  (node1, node2, node3);
* ``NAME-db``: the sample service on port 8081 keeping its counter on the shared volume,
  and ``NAME-db-wr``, the writer of acknowledged records (``campaign_writer.py``), both on
  the volume ``NAME-db-vol``, the first over the address ``.101`` (node2, node3, node1);
* ``NAME-addr``: the address ``.102`` alone (node3, node1, node2).

Faults (``KINDS``): SIGKILL of an agent (started again a while later), SIGSTOP of an
agent for a random time around the lease ttl (then SIGCONT), SIGKILL of a protected
service's process (the web or db service, or the writer: local recovery), SIGKILL of an
etcd member (started again), a server's link cut for a while, a server's link flapping
(down and up quickly several times), the whole store restarted (every member stopped,
then started: SIGTERM, SIGKILL after half a second, as members stopped together wait
for each other). After each fault, its mending (the agent, the member, the link back), the
campaign waits until every hierarchy is in service again, then until the cluster is
whole (every agent up and alive for the others, every comm path ALIVE, every etcd member
up and a leader), then injects the next.

Invariants, checked all along:

* **never two servers active**: the dual-active probe (``tests/faults/probe.py``: the
  services' HTTP answers and processes, on every server) and the watch below (each
  hierarchy's address, the volume's mount, the writer's process, on every server, every
  0.1 s) never see one on two servers at the same time, and the writer's
  acknowledgements never go backwards (two writers would);
* **back in service within the bound**: after each fault, every hierarchy is in service
  (ISP, every resource of it on one server, says the API) and answers there (the web and
  db services through their addresses, the writer acknowledging, the lone address
  holding its place and answering) within ``bound`` seconds of the fault;
* **no acknowledged write lost**: every record the writer acknowledged is on the volume,
  checked by each writer as it starts (after every failover and local recovery), by the
  campaign after every fault (the last records) and at the end (all of them).

A fault's recovery time is the time from the fault until every hierarchy answers again
for good (the end of the last outage of any hierarchy it caused; 0 without an outage).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.faults.cluster import SERVERS, Cluster, wait_until
from tests.faults.probe import NETNS_DIR, DualActiveProbe, Sample, alive, ns_key
from tests.integration.helpers import service_commands
from vigil.errors import LabError
from vigil.lab import etcd
from vigil.lab.lab import Lab

KINDS = (
    "agent-kill",
    "agent-freeze",
    "service-kill",
    "etcd-kill",
    "link-cut",
    "link-flap",
    "store-restart",
)
MEMBERS = (1, 2, 3)
WEB_PORT, DB_PORT = 8080, 8081
#: how often the writer writes a record (s)
WRITE_INTERVAL = 0.05
#: the app resources' quick check interval (s)
QUICK_CHECK = 1.0
#: the db hierarchy answers only while its writer acknowledged a record this recently (s)
ACK_FRESH = 1.5
#: how long a hierarchy must answer on its server before the campaign calls it recovered
HOLD = 0.5
#: seconds etcd members get to stop on SIGTERM in a store restart before SIGKILL
STORE_STOP_GRACE = 0.5
#: seconds past the bound after which a cluster that did not heal ends the campaign
GIVE_UP = 90.0
WRITER = Path(__file__).with_name("campaign_writer.py")


class CampaignStuck(Exception):
    """The cluster did not heal: the campaign cannot go on."""


@dataclass(frozen=True)
class Timing:
    """Random durations of the faults (uniform between the two values, seconds)."""

    agent_down: tuple[float, float] = (0.5, 4.0)  # a SIGKILLed agent, until started again
    freeze: tuple[float, float] = (0.3, 2.4)  # a SIGSTOPped agent (lease ttl: 0.8 s)
    member_down: tuple[float, float] = (0.5, 5.0)  # a SIGKILLed etcd member
    cut: tuple[float, float] = (1.5, 8.0)  # a cut link
    flaps: tuple[int, int] = (2, 6)  # how many times a flapping link goes down
    flap: tuple[float, float] = (0.05, 0.6)  # each time down, each time up
    store_down: tuple[float, float] = (1.0, 4.0)  # the whole store (failsafe holds 10 s)
    pause: tuple[float, float] = (0.2, 1.5)  # steady state before each fault


#: shorter faults for the test suite's campaign
QUICK = Timing(
    agent_down=(0.2, 1.5),
    freeze=(0.3, 1.6),
    member_down=(0.2, 1.5),
    cut=(1.0, 3.0),
    flaps=(2, 4),
    flap=(0.05, 0.4),
    store_down=(0.5, 2.0),
    pause=(0.1, 0.5),
)


@dataclass
class Hierarchy:
    key: str  # web, db, addr
    name: str  # its name in the API (its first root's tag)
    tags: tuple[str, ...]
    vip: str
    primary: str


@dataclass
class Fault:
    number: int
    kind: str
    detail: str = ""
    at: float = 0.0  # monotonic time of the injection
    recovery: float | None = None  # None: not recovered
    outage: bool = False


@dataclass
class Results:
    faults: list[Fault] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    records: int = 0  # acknowledged records, all checked at the end
    runtime: float = 0.0
    stopped: str = ""  # why the campaign ended early

    def count(self, kind: str) -> int:
        return sum(1 for f in self.faults if f.kind == kind)


# --- what runs where: addresses, mounts, writers; and the hierarchies' answers ---------------


def local_addresses(pid: int) -> set[str]:
    """The addresses local to the network namespace of ``pid`` (its ``fib_trie``)."""
    found: set[str] = set()
    last = ""
    with open(f"/proc/{pid}/net/fib_trie") as handle:
        for line in handle:
            text = line.strip()
            if text.startswith("|--"):
                last = text[3:].strip()
            elif "/32 host LOCAL" in text and last:
                found.add(last)
    return found


def mounted(pid: int, mount_point: str) -> bool:
    """Whether something is mounted on ``mount_point`` in the mount namespace of ``pid``."""
    with open(f"/proc/{pid}/mountinfo") as handle:
        return any(line.split()[4] == mount_point for line in handle)


def answers_tcp(address: str, port: int = 9, timeout: float = 0.3) -> bool:
    """Whether a host answers at ``address`` (a TCP connect accepted or refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return True


class AckLog:
    """The writer's ack log, read as it grows: the last record acknowledged, by whom and
    when (host clock), and any acknowledgement that did not follow the one before."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.last = -1
        self.server = ""
        self.seen_at = 0.0  # monotonic time a new acknowledgement was last seen
        self.disorder: list[str] = []
        self._lock = threading.Lock()  # the watch and the campaign both read it

    def read(self) -> None:
        with self._lock:
            self._read()

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        if not chunk:
            return
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            number_text, server, pid, _epoch, _at = line.decode().split()
            number = int(number_text)
            if number != self.last + 1 and number <= self.last:
                self.disorder.append(
                    f"record {number} acknowledged by {server} (pid {pid}) after record "
                    f"{self.last} by {self.server}: two writers"
                )
            self.last, self.server = max(self.last, number), server
        self.seen_at = time.monotonic()


class Watch:
    """Every ``interval``: where each hierarchy's address is configured, where the volume
    is mounted and the writer runs (one server at most, else a violation), and whether
    each hierarchy answers, and from which server (its state changes are kept)."""

    def __init__(self, campaign: Campaign, interval: float = 0.1) -> None:
        self.campaign = campaign
        self.interval = interval
        self.lock = threading.Lock()
        self.state: dict[str, tuple[bool, str | None]] = {}
        self.changes: list[tuple[float, str, bool]] = []  # (time, hierarchy, answering)
        self.dual: list[tuple[float, str]] = []
        self.acks = AckLog(campaign.acks)
        self.rounds = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="campaign watch", daemon=True)
        # a probe that is never started: its HTTP round asks the addresses at once
        self._http = DualActiveProbe(campaign.cluster.info, [WEB_PORT, DB_PORT], timeout=0.4)
        self._http.addresses = {h.key: h.vip for h in campaign.hierarchies if h.key != "addr"}
        self._netns = {
            key: s.name
            for s in campaign.cluster.info.servers
            if (key := ns_key(NETNS_DIR / s.netns)) is not None
        }

    def start(self) -> Watch:
        self._thread.start()
        wait_until(lambda: self.rounds > 0, 10, "a first round of the watch")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def latest(self) -> dict[str, tuple[bool, str | None]]:
        with self.lock:
            return dict(self.state)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                self._round(began)
                self.rounds += 1
                self._stop.wait(max(0.0, began + self.interval - time.monotonic()))
        except BaseException as exc:  # reported by Campaign.check_watch
            self.error = exc
            raise

    def _round(self, began: float) -> None:
        campaign = self.campaign
        holders: dict[str, list[str]] = {}
        for server, pid in campaign.sleepers.items():
            with contextlib.suppress(OSError):
                for address in local_addresses(pid) & campaign.vips:
                    holders.setdefault(f"address {address}", []).append(server)
            with contextlib.suppress(OSError):
                if mounted(pid, campaign.mount_point):
                    holders.setdefault("volume mount", []).append(server)
        for server in self._writers():
            holders.setdefault("writer process", []).append(server)
        problems = [
            f"{what} on {', '.join(sorted(on))}" for what, on in holders.items() if len(on) > 1
        ]
        self.acks.read()
        answers = self._http._http_round([WEB_PORT, DB_PORT])
        state: dict[str, tuple[bool, str | None]] = {}
        for h in campaign.hierarchies:
            if h.key == "web":
                who = answers[WEB_PORT].get("web")
            elif h.key == "db":
                who = answers[DB_PORT].get("db")
                fresh = began - self.acks.seen_at < ACK_FRESH and self.acks.server == who
                who = who if fresh else None
            else:
                held = holders.get(f"address {h.vip}", [])
                who = held[0] if len(held) == 1 and answers_tcp(h.vip) else None
            state[h.key] = (who is not None, who)
        with self.lock:
            for key, (up, _who) in state.items():
                if key not in self.state or self.state[key][0] != up:
                    self.changes.append((began, key, up))
            self.state = state
            for problem in problems:
                self.dual.append((began, problem))
            for problem in self.acks.disorder:
                self.dual.append((began, problem))
            self.acks.disorder.clear()

    def _writers(self) -> list[str]:
        """Servers where a writer process runs (its ``run`` command, not a zombie)."""
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                    cmdline = handle.read()
            except OSError:
                continue
            if b"campaign_writer.py\x00run" not in cmdline or not alive(entry.name):
                continue
            server = self._netns.get(ns_key(f"/proc/{entry.name}/ns/net") or (0, 0))
            if server is not None:
                found.append(server)
        return found

    def drain_dual(self) -> list[tuple[float, str]]:
        with self.lock:
            found, self.dual = self.dual, []
        return found

    def recovered_at(self, since: float, until: float) -> float | None:
        """The end of the last outage of any hierarchy between ``since`` and ``until``
        (None: none)."""
        with self.lock:
            ends = [t for t, _key, up in self.changes if up and since <= t <= until]
            self.changes = [c for c in self.changes if c[0] >= since - 60]
        return max(ends) if ends else None


class ServiceProbe(DualActiveProbe):
    """The dual-active probe, keeping only its violations (a campaign runs for hours)."""

    def drain(self) -> list[Sample]:
        with self._lock:
            bad = [s for s in self.samples if s.dual()]
            self.samples = self.samples[-5:]
        return bad


# --- the campaign ------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


class Campaign:
    """One lab and its campaign: ``build()``, ``run(faults)``, ``close()`` (always)."""

    def __init__(
        self,
        name: str,
        subnet: int,
        *,
        seed: int = 1,
        bound: float = 30.0,
        kinds: tuple[str, ...] = KINDS,
        timing: Timing | None = None,
        say: Callable[[str], None] = _say,
    ) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown or not kinds:
            raise ValueError(f"fault kinds are among {', '.join(KINDS)}, not {sorted(unknown)}")
        self.name = name
        self.lab = Lab(name, subnet_index=subnet)
        self.subnet = subnet
        self.rng = random.Random(seed)
        self.seed = seed
        self.bound = bound
        self.kinds = kinds
        self.timing = timing or Timing()
        self.say = say
        self.results = Results()
        self.root = self.lab.names.root
        self.work = self.root / "campaign"
        self.mount_point = str(self.work / "data")
        self.acks = self.work / "acks"
        self.lost = self.work / "lost"
        self.vips = {f"10.213.{subnet}.{octet}" for octet in (100, 101, 102)}
        self.hierarchies: list[Hierarchy] = []
        self.sleepers: dict[str, int] = {}
        self.cluster: Cluster
        self.watch: Watch | None = None
        self.probe: ServiceProbe | None = None
        self.expected = bytearray()  # the records, as they must be on the volume
        self._started = time.monotonic()

    # --- building ---------------------------------------------------------------------------

    def build(self) -> None:
        self.lab.down()  # leftovers of an interrupted run
        self.say(f"building lab {self.name} (10.213.{self.subnet}.0/24, 3 etcd members)")
        try:
            info = self.lab.up(len(SERVERS), store="etcd", store_members=len(MEMBERS))
        except LabError as exc:
            if "exited before answering its health check" not in str(exc):
                raise
            self.lab.down()
            info = self.lab.up(len(SERVERS), store="etcd", store_members=len(MEMBERS))
        self.cluster = Cluster(self.lab, info, "etcd")
        for client in self.cluster.clients.values():
            client.timeout = httpx.Timeout(10.0, connect=2.0)
        self.cluster.connect_every_pair(SERVERS)
        self.work.mkdir(parents=True, exist_ok=True)
        Path(self.mount_point).mkdir(exist_ok=True)
        for server in SERVERS:
            pid = self.lab.spawn(server, ["sleep", "infinity"], self.work / "sleep.log")
            key = ns_key(NETNS_DIR / info.server(server).netns)

            def entered(pid: int = pid, key: tuple[int, int] | None = key) -> bool:
                return ns_key(f"/proc/{pid}/ns/net") == key

            wait_until(entered, 10, f"a process inside {server}")
            self.sleepers[server] = pid
        self._wait_whole(60)  # every agent alive for the others: extends need them
        self._create_hierarchies()
        self.probe = ServiceProbe(info, [WEB_PORT, DB_PORT], interval=0.1)
        self.probe.start()
        self.watch = Watch(self).start()
        self._wait_in_service(time.monotonic() + 60, "the hierarchies in service at first")
        self._wait_whole(60)

    def _create_hierarchies(self) -> None:
        n, subnet = self.name, self.subnet
        disk = self.lab.add_shared_disk(128)
        web = Hierarchy(
            "web", f"{n}-web", (f"{n}-web", f"{n}-web-ip"), f"10.213.{subnet}.100", "node1"
        )
        db_tags = (f"{n}-db", f"{n}-db-wr", f"{n}-db-ip", f"{n}-db-vol")
        db = Hierarchy("db", f"{n}-db", db_tags, f"10.213.{subnet}.101", "node2")
        addr = Hierarchy("addr", f"{n}-addr", (f"{n}-addr",), f"10.213.{subnet}.102", "node3")
        self.hierarchies = [web, db, addr]
        # web: the sample service over an address
        self._create(web, f"{n}-web-ip", "ip", self._ip(web))
        self._create(web, f"{n}-web", "app", service_commands(WEB_PORT))
        self._depend(f"{n}-web", f"{n}-web-ip")
        # db: the sample service (its counter on the volume) and the writer on the volume
        volume = {
            "device": disk.device(db.primary),
            "mount_point": self.mount_point,
            "filesystem_uuid": disk.uuid,
        }
        self._create(db, f"{n}-db-vol", "volume", volume)
        self._create(db, f"{n}-db-ip", "ip", self._ip(db))
        commands = service_commands(DB_PORT)
        commands["restore"] += f" --data-dir {self.mount_point}"
        self._create(db, f"{n}-db", "app", commands)
        self._create(db, f"{n}-db-wr", "app", self._writer_commands())
        for parent, child in ((f"{n}-db", f"{n}-db-vol"), (f"{n}-db", f"{n}-db-ip")):
            self._depend(parent, child)
        self._depend(f"{n}-db-wr", f"{n}-db-vol")
        # addr: an address alone
        self._create(addr, f"{n}-addr", "ip", self._ip(addr))
        order = ("node1", "node2", "node3")
        for h in self.hierarchies:
            start = order.index(h.primary)
            backups = (order[(start + 1) % 3], order[(start + 2) % 3])
            for priority, server in zip((10, 20), backups, strict=True):
                body: dict[str, Any] = {"server": server, "priority": priority}
                if h.key == "db":
                    body["properties"] = {f"{n}-db-vol": {"device": disk.device(server)}}
                self.cluster.ok("POST", f"/v1/hierarchies/{h.name}/extend", body)
        for tag in (f"{n}-web", f"{n}-db", f"{n}-db-wr"):
            self.cluster.resource_policy(tag, quick_check_interval=QUICK_CHECK)
        # the monitors read their interval when they start: restart them with the new one
        for h in (web, db):
            self.cluster.ok("POST", f"/v1/hierarchies/{h.name}/out-of-service", {})
            self.cluster.ok("POST", f"/v1/hierarchies/{h.name}/in-service", {"server": h.primary})

    def _create(self, h: Hierarchy, tag: str, kit: str, properties: dict[str, Any]) -> None:
        body = {"tag": tag, "kit": kit, "server": h.primary, "properties": properties}
        self.cluster.ok("POST", "/v1/resources", body)

    def _depend(self, parent: str, child: str) -> None:
        self.cluster.ok("POST", "/v1/dependencies", {"parent": parent, "child": child})

    @staticmethod
    def _ip(h: Hierarchy) -> dict[str, Any]:
        return {"address": h.vip, "prefix": 24, "interface": "eth0"}

    def _writer_commands(self) -> dict[str, str]:
        pidfile = "$VIGIL_STATE_DIR/writer.pid"
        writer = f"{sys.executable} {WRITER}"
        files = (
            f"--pidfile {pidfile} --file {self.mount_point}/records --acks {self.acks} "
            f"--lost {self.lost} --interval {WRITE_INTERVAL}"
        )
        # the quick check runs every second: a shell test, no interpreter started
        check = (
            f'p=$(cat "{pidfile}" 2>/dev/null) && '
            f'grep -q campaign_writer "/proc/$p/cmdline" 2>/dev/null && exit 0; exit 7'
        )
        return {
            "restore": f"{writer} start {files}",
            "remove": f"{writer} stop --pidfile {pidfile}",
            "quick_check": check,
        }

    # --- the state of the cluster -------------------------------------------------------------

    def owners(self) -> dict[str, str | None]:
        """hierarchy key -> the one server where every resource of it is ISP (API)."""
        status = self.cluster.status()
        by_name = {view["name"]: view for view in status["hierarchies"]}
        found: dict[str, str | None] = {}
        for h in self.hierarchies:
            view = by_name.get(h.name)
            where: set[str] = set()
            complete = view is not None
            for resource in view["resources"] if view else []:
                isp = {i["server"] for i in resource["instances"] if i["state"] == "ISP"}
                complete = complete and len(isp) == 1
                where |= isp
            found[h.key] = where.pop() if complete and len(where) == 1 else None
        return found

    def in_service(self) -> str:
        """Why not every hierarchy is in service and answering on its server ("": it is)."""
        assert self.watch is not None
        owners = self.owners()
        seen = self.watch.latest()
        problems = []
        for h in self.hierarchies:
            owner, (up, who) = owners[h.key], seen.get(h.key, (False, None))
            if owner is None or not up or who != owner:
                problems.append(f"{h.key}: ISP on {owner}, answering from {who}")
        return "; ".join(problems)

    def _wait_in_service(self, deadline: float, what: str) -> None:
        def ready() -> bool:
            why = self.in_service()
            if why:
                raise AssertionError(why)
            return True

        wait_until(ready, max(1.0, deadline - time.monotonic()), what)

    def whole(self) -> str:
        """Why the cluster is not whole ("": it is): an agent not running or seen DEAD, a
        comm path not ALIVE, an etcd member not running, no etcd leader."""
        problems = []
        for server in SERVERS:
            if self.lab.agent_pid(server) is None:
                problems.append(f"no agent runs on {server}")
        status = self.cluster.status()
        problems += [
            f"{s['name']} is {s['state']}" for s in status["servers"] if s["state"] == "DEAD"
        ]
        problems += [
            f"comm path {p['id']} {p['state']}"
            for p in status["comm_paths"]
            if p["state"] != "ALIVE"
        ]
        state = self.lab._state()
        for number in MEMBERS:
            if etcd.member_pid(self.lab.names, state, f"etcd{number}") is None:
                problems.append(f"etcd{number} is not running")
        if not problems and self.lab.store_leader() is None:
            problems.append("no etcd leader")
        return "; ".join(problems)

    def _wait_whole(self, timeout: float) -> None:
        def ready() -> bool:
            why = self.whole()
            if why:
                raise AssertionError(why)
            return True

        wait_until(ready, timeout, "the cluster whole")

    # --- the campaign -----------------------------------------------------------------------

    def run(self, faults: int) -> Results:
        """Inject ``faults`` faults, one at a time; every kind once among the first."""
        assert self.watch is not None and self.probe is not None
        self._started = time.monotonic()
        first = list(self.kinds)
        self.rng.shuffle(first)
        try:
            for number in range(1, faults + 1):
                kind = first[number - 1] if number <= len(first) else self.rng.choice(self.kinds)
                self._one(Fault(number, kind))
        except CampaignStuck as exc:
            self.results.stopped = str(exc)
            self.say(f"STOPPED: {exc}\n{self._details()}")
        finally:
            self.results.runtime = time.monotonic() - self._started
        self._check_dual(None)
        self._check_records(full=True)
        return self.results

    def _one(self, fault: Fault) -> None:
        time.sleep(self.rng.uniform(*self.timing.pause))  # at a random phase of every cycle
        self._wait_unprovoked(fault.number)
        fault.at = time.monotonic()
        inject = getattr(self, f"_fault_{fault.kind.replace('-', '_')}")
        fault.detail = inject()
        self.results.faults.append(fault)
        self._wait_recovered(fault)
        self._mend(fault)
        self._check_dual(fault)
        self._check_records(full=False, fault=fault)
        took = "NOT RECOVERED" if fault.recovery is None else f"recovered in {fault.recovery:.2f}s"
        self.say(f"#{fault.number} {fault.kind} {fault.detail}: {took}")

    def _wait_unprovoked(self, number: int) -> None:
        """An outage no fault caused, begun since the last recovery (a server whose lease
        renewals timed out under load fences itself, and its hierarchies move): an anomaly,
        with its events and its recovery time, waited out before the next fault (whose
        injection may need every hierarchy in service, and whose recovery it would blur)."""
        try:
            why = self.in_service()
        except (AssertionError, httpx.HTTPError) as exc:
            why = f"the API: {exc}"
        if not why:
            return
        details = self._details()
        outage = Fault(number, "unprovoked", "before the fault", time.monotonic())
        self._wait_recovered(outage)
        self.results.anomalies.append(
            f"before fault #{number}, an outage no fault caused ({why}), over "
            f"{outage.recovery or 0.0:.2f}s after it was seen:\n{details}"
        )
        self.say(f"before #{number}: an outage no fault caused ({why}): waited it out")

    def _wait_recovered(self, fault: Fault) -> None:
        """Wait until every hierarchy is in service and answering on its server, and has
        for ``HOLD`` s; note a violation after ``bound`` s, give up after ``GIVE_UP`` more."""
        assert self.watch is not None
        deadline = fault.at + self.bound
        late = False
        steady_since: float | None = None
        why = ""
        while True:
            now = time.monotonic()
            try:
                why = self.in_service()
            except (AssertionError, httpx.HTTPError) as exc:
                why = f"the API: {exc}"
            if why:
                steady_since = None
            elif steady_since is None:
                steady_since = now
            elif now - steady_since >= HOLD:
                break
            if now > deadline and not late:
                late = True
                self._violation(
                    fault,
                    f"not every hierarchy back in service within {self.bound:g}s: {why}",
                    details=True,
                )
            if now > deadline + GIVE_UP:
                raise CampaignStuck(
                    f"fault #{fault.number} {fault.kind} {fault.detail}: the cluster did not "
                    f"heal: {why}"
                )
            time.sleep(0.1)
        end = self.watch.recovered_at(fault.at, time.monotonic())
        fault.outage = end is not None
        fault.recovery = end - fault.at if end is not None else 0.0
        if fault.recovery > self.bound and not late:
            self._violation(
                fault,
                f"a hierarchy answered again only {fault.recovery:.2f}s after the fault "
                f"(bound {self.bound:g}s)",
            )

    def _mend(self, fault: Fault) -> None:
        """Whatever is still broken after the recovery (the faults mend their own damage:
        this is for what the cluster did not heal by itself), then a whole cluster."""
        for server in SERVERS:
            if self.lab.agent_pid(server) is None:
                self.results.anomalies.append(
                    f"fault #{fault.number} {fault.kind}: the agent of {server} was not "
                    f"running afterwards: started again"
                )
                self.cluster.start_agent(server)
        state = self.lab._state()
        for number in MEMBERS:
            if etcd.member_pid(self.lab.names, state, f"etcd{number}") is None:
                self.results.anomalies.append(
                    f"fault #{fault.number} {fault.kind} {fault.detail}: etcd{number} was not "
                    f"running afterwards: started again"
                )
                self.say(f"etcd{number} is not running: starting it again")
                self.lab.start_store_member(number)
        try:
            self._wait_whole(60)
        except AssertionError as exc:
            raise CampaignStuck(
                f"fault #{fault.number} {fault.kind} {fault.detail}: the cluster is not whole: "
                f"{exc}"
            ) from exc

    # --- the invariants -------------------------------------------------------------------------

    def _violation(self, fault: Fault | None, text: str, details: bool = False) -> None:
        where = f"fault #{fault.number} {fault.kind} {fault.detail}: " if fault else "at the end: "
        line = where + text
        if details:
            line += "\n" + self._details()
        self.results.violations.append(line)
        self.say(f"VIOLATION {line}")

    def _details(self) -> str:
        """The last events and the hierarchies' instances, for a violation's report."""
        lines = []
        try:
            for event in self.cluster.events()[-25:]:
                at = time.strftime("%H:%M:%S", time.localtime(event["at"]))
                lines.append(
                    f"    event {at} {event['server']} {event['kind']}: {event['message']}"
                )
            for view in self.cluster.status()["hierarchies"]:
                for resource in view["resources"]:
                    states = ", ".join(
                        f"{i['server']} {i['state']} ({i['reason']})" for i in resource["instances"]
                    )
                    lines.append(f"    {resource['tag']}: {states}")
        except (AssertionError, httpx.HTTPError) as exc:
            lines.append(f"    (no events: {exc})")
        return "\n".join(lines)

    def _check_dual(self, fault: Fault | None) -> None:
        assert self.watch is not None and self.probe is not None
        if self.watch.error is not None:
            raise CampaignStuck(f"the watch crashed: {self.watch.error!r}")
        if self.probe._error is not None:
            raise CampaignStuck(f"the dual-active probe crashed: {self.probe._error!r}")
        found = [(t, text) for t, text in self.watch.drain_dual()]
        found += [(s.at, "; ".join(s.dual())) for s in self.probe.drain()]
        # one violation per kind of sample (numbers aside: pids, records), with its first
        episodes: dict[str, tuple[str, list[float]]] = {}
        for at, text in sorted(found):
            episodes.setdefault(re.sub(r"\d+", "N", text), (text, []))[1].append(at)
        for text, times in episodes.values():
            since = f", {times[0] - fault.at:+.2f}s from the fault" if fault else ""
            wall = time.strftime(
                "%H:%M:%S", time.localtime(time.time() - (time.monotonic() - times[0]))
            )
            self._violation(
                fault,
                f"TWO ACTIVE: {text} ({len(times)} sample(s), first at {wall}{since})",
                details=True,
            )

    def _check_records(self, *, full: bool, fault: Fault | None = None) -> None:
        """Every acknowledged record on the volume (``full``: all; else the last 2000),
        read through the owner's mount namespace; and nothing the writers reported lost."""
        assert self.watch is not None
        if self.lost.exists() and self.lost.read_text().strip():
            for line in self.lost.read_text().splitlines():
                self._violation(fault, f"ACKNOWLEDGED WRITES LOST (seen by a writer): {line}")
            self.lost.unlink()
        self.watch.acks.read()
        count = self.watch.acks.last + 1
        self.results.records = count
        if count == 0:
            return
        from tests.faults.campaign_writer import SIZE, record

        while len(self.expected) < count * SIZE:
            self.expected += record(len(self.expected) // SIZE)
        first = 0 if full else max(0, count - 2000)
        # read through the owner's mount namespace; the db hierarchy may be moving (a late
        # failover): ask again until an owner shows the file, for up to 30 s
        owner, data, deadline = None, None, time.monotonic() + 30
        while data is None and time.monotonic() < deadline:
            owner = self.watch.latest().get("db", (False, None))[1]
            if owner is None:
                time.sleep(0.5)
                continue
            path = f"/proc/{self.sleepers[owner]}/root{self.mount_point}/records"
            try:
                with open(path, "rb") as handle:
                    handle.seek(first * SIZE)
                    data = handle.read((count - first) * SIZE)
            except FileNotFoundError:
                time.sleep(0.5)
        if data is None:
            self._violation(
                fault, f"ACKNOWLEDGED WRITES LOST: no server shows the records file ({owner=})"
            )
            return
        if data == self.expected[first * SIZE : count * SIZE]:
            return
        bad = [
            n
            for n in range(first, count)
            if data[(n - first) * SIZE : (n - first + 1) * SIZE]
            != self.expected[n * SIZE : (n + 1) * SIZE]
        ]
        self._violation(
            fault,
            f"ACKNOWLEDGED WRITES LOST: {len(bad)} of records {first}..{count - 1} missing or "
            f"wrong on {owner}: {bad[:20]}",
        )

    # --- the faults: each injects, waits, mends its own damage; returns what it did ---------------

    def _server(self) -> str:
        return self.rng.choice(SERVERS)

    def _fault_agent_kill(self) -> str:
        server, down = self._server(), self.rng.uniform(*self.timing.agent_down)
        self.cluster.kill_agent(server)
        time.sleep(down)
        self.cluster.start_agent(server)
        return f"{server} (down {down:.1f}s)"

    def _fault_agent_freeze(self) -> str:
        server, frozen = self._server(), self.rng.uniform(*self.timing.freeze)
        self.cluster.kill_agent(server, signal.SIGSTOP)
        time.sleep(frozen)
        self.cluster.thaw_agent(server)
        return f"{server} (frozen {frozen:.2f}s)"

    def _fault_service_kill(self) -> str:
        assert self.watch is not None
        what = self.rng.choice(("web", "db", "writer"))
        key = "db" if what == "writer" else what
        owner = self.watch.latest()[key][1]
        assert owner is not None, f"{key} answers nowhere before the fault"
        tag = {"web": f"{self.name}-web", "db": f"{self.name}-db", "writer": f"{self.name}-db-wr"}[
            what
        ]
        state_dir = self.cluster.state_dir(owner, tag)
        pidfile = state_dir / (
            "writer.pid"
            if what == "writer"
            else f"service-{WEB_PORT if what == 'web' else DB_PORT}.pid"
        )
        # the previous fault may have killed it a moment ago: its restart (local recovery)
        # writes a new pid file; until then the file names a process that is gone
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text())
                os.kill(pid, signal.SIGKILL)
                return f"{what} on {owner} (pid {pid})"
            if time.monotonic() > deadline:
                raise AssertionError(f"{pidfile} names no running {what} for 30 s")
            time.sleep(0.1)

    def _fault_etcd_kill(self) -> str:
        leader = self.lab.store_leader()
        number = leader if leader and self.rng.random() < 0.5 else self.rng.choice(MEMBERS)
        down = self.rng.uniform(*self.timing.member_down)
        self.lab.stop_store_member(number, signal.SIGKILL)
        time.sleep(down)
        self.lab.start_store_member(number)
        role = "the leader " if number == leader else ""
        return f"{role}etcd{number} (down {down:.1f}s)"

    def _fault_link_cut(self) -> str:
        server, cut = self._server(), self.rng.uniform(*self.timing.cut)
        self.cluster.link(server, up=False)
        self.cluster.down.add(server)
        try:
            time.sleep(cut)
        finally:
            self.cluster.link(server, up=True)
            self.cluster.down.discard(server)
        return f"{server} (cut {cut:.1f}s)"

    def _fault_link_flap(self) -> str:
        server, times = self._server(), self.rng.randint(*self.timing.flaps)
        self.cluster.down.add(server)
        try:
            for _ in range(times):
                self.cluster.link(server, up=False)
                time.sleep(self.rng.uniform(*self.timing.flap))
                self.cluster.link(server, up=True)
                time.sleep(self.rng.uniform(*self.timing.flap))
        finally:
            self.cluster.link(server, up=True)
            self.cluster.down.discard(server)
        return f"{server} ({times} times)"

    def _fault_store_restart(self) -> str:
        down = self.rng.uniform(*self.timing.store_down)
        began = time.monotonic()
        for number in MEMBERS:
            self.lab.stop_store_member(number, signal.SIGTERM, wait=False)
        # members stopped together wait for each other (some 6 s): what is left after
        # STORE_STOP_GRACE is killed, as the lab's teardown does
        time.sleep(STORE_STOP_GRACE)
        for number in MEMBERS:
            self.lab.stop_store_member(number, signal.SIGKILL)
        stopping = time.monotonic() - began
        time.sleep(max(0.0, down - stopping))  # down from the first SIGTERM on
        for number in MEMBERS:
            self.lab.start_store_member(number, wait=False)
        for number in MEMBERS:
            self.lab.start_store_member(number)
        took = time.monotonic() - began
        return f"(down {took:.1f}s, stopping took {stopping:.1f}s)"

    # --- the end ------------------------------------------------------------------------------

    def keep_logs(self) -> Path:
        """Copy the lab's logs (agents, fence guards, etcd members, writers) and the event
        log to ``/tmp/vigil-campaign-logs/NAME-TIME`` before the lab goes; where."""
        where = Path("/tmp/vigil-campaign-logs") / f"{self.name}-{time.strftime('%H%M%S')}"
        where.mkdir(parents=True, exist_ok=True)
        for path in self.root.rglob("*"):
            if path.suffix in (".log", ".out") and path.is_file() and "mnt" not in path.parts:
                target = where / path.relative_to(self.root)
                target.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    shutil.copyfile(path, target)
        with contextlib.suppress(Exception):
            events = self.cluster.events()
            lines = [
                f"{e['at']:.3f} {time.strftime('%H:%M:%S', time.localtime(e['at']))} "
                f"{e['server']} {e['kind']} [{e['hierarchy']}]: {e['message']}"
                for e in events
            ]
            (where / "events.txt").write_text("\n".join(lines) + "\n")
        with contextlib.suppress(OSError):
            shutil.copyfile(self.acks, where / "acks")
        return where

    def close(self, keep_logs: bool = False) -> None:
        """Stop the samplers, mend what a fault may have left (a frozen agent, a cut link,
        a stopped member), keep the logs (when asked, or after a violation), and tear the
        lab down."""
        try:
            for sampler in (self.watch, self.probe):
                if sampler is not None:
                    sampler.stop()
            if keep_logs or self.results.violations or self.results.stopped:
                with contextlib.suppress(Exception):
                    self.say(f"logs kept in {self.keep_logs()}")
            if hasattr(self, "cluster"):
                for server in list(self.cluster.frozen):
                    with contextlib.suppress(Exception):
                        self.cluster.thaw_agent(server)
                for server in SERVERS:
                    with contextlib.suppress(Exception):
                        self.cluster.link(server, up=True)
                self.cluster.close()
        finally:
            self.lab.down()


# --- the report ----------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def table(results: Results, kinds: tuple[str, ...] = KINDS) -> str:
    head = ("fault", "injected", "outages", "min (s)", "median (s)", "p95 (s)", "max (s)")
    rows: list[tuple[str, ...]] = [head]
    for kind in [*kinds, "all"]:
        faults = [f for f in results.faults if kind in (f.kind, "all")]
        times = [f.recovery for f in faults if f.outage and f.recovery is not None]
        stats = ["-"] * 4
        if times:
            stats = [
                f"{min(times):.2f}",
                f"{statistics.median(times):.2f}",
                f"{percentile(times, 0.95):.2f}",
                f"{max(times):.2f}",
            ]
        rows.append((kind, str(len(faults)), str(len(times)), *stats))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [
        "",
        "outages: faults after which some hierarchy stopped answering for a while; the times "
        "are their recovery times, from the fault until every hierarchy answered again for "
        "good (faults without an outage: 0 s, not in the figures).",
        f"invariant violations: {len(results.violations)}; acknowledged records checked: "
        f"{results.records}; runtime {results.runtime:.0f} s",
    ]
    if results.stopped:
        lines.append(f"STOPPED EARLY: {results.stopped}")
    lines += [f"VIOLATION {v}" for v in results.violations]
    lines += [f"anomaly: {a}" for a in results.anomalies]
    return "\n".join(lines)
