"""Scale: the cost of one decision cycle and of one API status call, against the number of
hierarchies, servers and events in the store.

    .venv/bin/python bench/scale.py                      # the whole grid (a few minutes)
    .venv/bin/python bench/scale.py --hierarchies 1000 --servers 8 --events 0 10000

Each point builds a fresh embedded store in a scratch directory with simulated records, as
agents and operators would have written them: ``servers`` registered servers, each alive
(its heartbeat key written as the lease keeper writes it), a comm path between neighbours
(both ends reported ALIVE), ``hierarchies`` hierarchies of three resources (an app on top
of an address and a volume), each extended to three servers (round robin), wanted and owned
on its first, reported ISP there and OSU on the others, and ``events`` entries in the
cluster event log (written by the agent's own helper, so they land where the agent puts
them). No kit runs: the cycle's state is the steady state, so it decides nothing to do,
which is its common case.

What is timed, for the agent of the first server (the primary of every n-th hierarchy):

* cycle: one pass of ``Cycle.run_once``: take the view, time heartbeats, forget nothing,
  ``engine.plan.decide``, check the standby states (nothing to write), sync monitoring;
  before each pass (not timed) another server's heartbeat advances and the agent's view
  has caught up with it, so each pass sees a new revision, as in a live cluster;
* status: ``GET /v1/status`` through the API app (httpx's ASGI transport: routing,
  authentication, ``views.status_view``, JSON), after the same heartbeat.

Each cell is min / median / max in milliseconds over the repetitions (as many as fit in
about a second, at least 3, at most 30). The max is mostly the garbage collector: with a
large cluster in memory, a full collection that happens to fall in a timed call costs tens
of milliseconds; the median is the cost of the work itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from vigil.agent.actor import Actor
from vigil.agent.cache import ClusterCache
from vigil.agent.config import TokenEntry, TokensFile
from vigil.agent.cycle import Cycle
from vigil.agent.kitrunner import KitRunner
from vigil.agent.operations import Operations
from vigil.agent.storeio import event_operation
from vigil.api.app import create_app
from vigil.api.auth import Authenticator
from vigil.kits.registry import KitRegistry
from vigil.model.cluster import CommPath
from vigil.model.records import (
    AliveRecord,
    CommPathRecord,
    ConfigRecord,
    DependencyRecord,
    IntentRecord,
    OwnerRecord,
    PathRecord,
    ResourceRecord,
    ServerRecord,
    StateRecord,
    key,
)
from vigil.model.states import InstanceState, PathState
from vigil.store.base import Operation, Put, Store
from vigil.store.embedded import EmbeddedStore

HIERARCHIES = (10, 100, 1000)
SERVERS = (3, 8, 32)
EVENTS = (0, 1000, 10_000)
#: operations per transaction while filling the store (etcd's default limit is 128)
BATCH = 100
TOKEN = "scale-bench-token-0123456789"
#: an event message as long as a failover's reason (the log holds ~400 bytes per event)
MESSAGE = (
    "failing h{n} over from node2 to node1: node2 is down; node1 is the preferred eligible "
    "server (priority 10); its heartbeat did not advance for 1.52s by node3's clock (ttl "
    "1.5s); its lease is ended and it no longer owns h{n}, h{n}-ip, h{n}-vol"
)


@dataclass(frozen=True)
class Point:
    hierarchies: int
    servers: int
    events: int


def server_names(count: int) -> list[str]:
    return [f"node{i + 1}" for i in range(count)]


def layout(point: Point) -> list[Operation]:
    """Every record of the simulated cluster (events apart)."""
    names = server_names(point.servers)
    ops: list[Operation] = [Put(key("config"), ConfigRecord(summary="bench").dump())]
    for i, name in enumerate(names):
        url = f"http://10.0.{i // 250}.{i % 250 + 1}:7480"
        ops.append(Put(key("servers", name), ServerRecord(name=name, api_url=url).dump()))
        # ttl 0: no observer times these heartbeats (nobody renews them in the bench)
        alive = AliveRecord(started_at=1.0, pid=1000 + i, ttl=0.0)
        ops.append(Put(key("alive", name), alive.dump()))
    for i in range(len(names) - 1 if len(names) > 2 else 1):
        a, b = names[i], names[(i + 1) % len(names)]
        path = CommPath.between(a, f"10.1.0.{i + 1}", b, f"10.1.0.{i + 2}")
        record = CommPathRecord(
            server_a=path.server_a,
            address_a=path.address_a,
            server_b=path.server_b,
            address_b=path.address_b,
        )
        ops.append(Put(key("commpaths", path.id), record.dump()))
        for end in (a, b):
            observed = PathRecord(state=PathState.ALIVE, last_heartbeat=time.time())
            ops.append(Put(key("paths", end, path.id), observed.dump()))
    for n in range(point.hierarchies):
        ops += hierarchy(n, names)
    return ops


def hierarchy(n: int, names: list[str]) -> list[Operation]:
    """One hierarchy: ``h<n>`` (app) on ``h<n>-ip`` and ``h<n>-vol``, on three servers."""
    where = [names[(n + k) % len(names)] for k in range(min(3, len(names)))]
    primary = where[0]
    instances = {server: 1 if k == 0 else 10 + k for k, server in enumerate(where)}
    root, ip, vol = f"h{n}", f"h{n}-ip", f"h{n}-vol"
    kits = {
        root: ("app", {"restore": "/bin/true", "remove": "/bin/true"}),
        ip: ("ip", {"address": f"10.{100 + n // 62500}.{n // 250 % 250}.{n % 250 + 1}/24"}),
        vol: ("volume", {"device": f"/dev/disk/by-id/bench-{n}", "mount_point": f"/srv/h{n}"}),
    }
    ops: list[Operation] = []
    for tag, (kit, properties) in kits.items():
        record = ResourceRecord(tag=tag, kit=kit, properties=properties, instances=instances)
        ops.append(Put(key("resources", tag), record.dump()))
        ops.append(Put(key("intent", tag), IntentRecord(server=primary, reason="bench").dump()))
        ops.append(Put(key("owner", tag), OwnerRecord(server=primary).dump()))
        for server in where:
            if server == primary:
                state = StateRecord(state=InstanceState.ISP, reason="in service")
            else:
                state = StateRecord(state=InstanceState.OSU, reason=f"in service on {primary}")
            ops.append(Put(key("state", server, tag), state.dump()))
    for child in (ip, vol):
        ops.append(Put(key("deps", root, child), DependencyRecord().dump()))
    return ops


async def fill(store: Store, point: Point) -> None:
    ops = layout(point)
    ops += [
        event_operation("node1", "failover-started", MESSAGE.format(n=n), hierarchy=f"h{n}")
        for n in range(point.events)
    ]
    for start in range(0, len(ops), BATCH):
        await store.txn((), ops[start : start + BATCH])


# --- what is timed -------------------------------------------------------------------


class Agent:
    """The parts of one agent the bench times: its cycle and its API."""

    def __init__(self, store: Store, me: str, point: Point) -> None:
        self.store = store
        self.me = me
        runner = KitRunner(KitRegistry({}), me, Path(tempfile.gettempdir()), ())
        self.actor = Actor(store, runner, me, lambda: 1)
        self.cache = ClusterCache(store)
        self.cycle = Cycle(self.cache, self.actor, lambda: True)
        self.cycle.monitor.paused = True  # no kit runs: nothing is checked
        operations = Operations(store, runner, me, self.cache)
        tokens = TokensFile(token=[TokenEntry(name="bench", role="guest", token=TOKEN)])
        self.app = create_app(operations, Authenticator(tokens))
        self.beats = itertools.count(1)
        self.other = server_names(point.servers)[1]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        cluster = await self.cycle.refresh(fresh=True)
        mine = {
            tag for tag, owner in cluster.owners.items() if owner.server == self.me
        }  # in service here: the steady state
        self.actor.local.found_running(mine)
        watch = asyncio.create_task(self.cache.run())
        try:
            yield
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def heartbeat(self) -> None:
        """Another server renews its lease; wait until this agent's view has it (untimed)."""
        alive = AliveRecord(started_at=1.0, pid=1001, ttl=0.0, beat=next(self.beats))
        revision = await self.store.put(key("alive", self.other), alive.dump())
        while self.cache.revision < revision:
            await self.cache.changed(self.cache.revision, 5.0)

    async def cycle_once(self) -> None:
        await self.cycle.run_once()

    async def status_once(self, client: httpx.AsyncClient) -> None:
        answer = await client.get("/v1/status")
        answer.raise_for_status()


async def repeat(
    before: Callable[[], Awaitable[None]], body: Callable[[], Awaitable[None]]
) -> list[float]:
    """Times of ``body`` in milliseconds (``before`` runs untimed before each)."""
    times: list[float] = []
    spent = 0.0
    while len(times) < 3 or (spent < 1.0 and len(times) < 30):
        await before()
        start = time.perf_counter()
        await body()
        elapsed = time.perf_counter() - start
        times.append(elapsed * 1000)
        spent += elapsed
    return times


async def measure(point: Point, workdir: Path) -> tuple[list[float], list[float]]:
    store = await EmbeddedStore.open(str(workdir / "store.db"), request_timeout=30.0)
    try:
        await fill(store, point)
        agent = Agent(store, "node1", point)
        async with agent.running():
            cycles = await repeat(agent.heartbeat, agent.cycle_once)
            transport = httpx.ASGITransport(app=agent.app)
            headers = {"authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(
                transport=transport, base_url="http://bench", headers=headers
            ) as client:
                statuses = await repeat(agent.heartbeat, lambda: agent.status_once(client))
        return cycles, statuses
    finally:
        await store.close()


# --- the table ---------------------------------------------------------------------

HEAD = (
    "hierarchies",
    "servers",
    "events",
    "cycle min",
    "median",
    "max",
    "status min",
    "median",
    "max",
)


def cells(point: Point, cycles: list[float], statuses: list[float]) -> tuple[str, ...]:
    def three(times: list[float]) -> tuple[str, str, str]:
        return (f"{min(times):.1f}", f"{statistics.median(times):.1f}", f"{max(times):.1f}")

    return (
        str(point.hierarchies),
        str(point.servers),
        str(point.events),
        *three(cycles),
        *three(statuses),
    )


def table(rows: list[tuple[str, ...]]) -> str:
    lines = [HEAD, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEAD))]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(cell.rjust(widths[j]) for j, cell in enumerate(line)))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


LEGEND = (
    "times in ms (min, median, max over the repetitions; the max includes garbage "
    "collections). cycle: one Cycle.run_once of the first server's agent after a heartbeat "
    "of another server; status: GET /v1/status through the API app (ASGI, no network)."
)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hierarchies", type=int, nargs="+", default=list(HIERARCHIES))
    parser.add_argument("--servers", type=int, nargs="+", default=list(SERVERS))
    parser.add_argument("--events", type=int, nargs="+", default=list(EVENTS))
    args = parser.parse_args(argv)
    rows = []
    for hierarchies, servers, events in itertools.product(
        args.hierarchies, args.servers, args.events
    ):
        point = Point(hierarchies, servers, events)
        with tempfile.TemporaryDirectory(prefix="vigil-scale-") as scratch:
            cycles, statuses = await measure(point, Path(scratch))
        rows.append(cells(point, cycles, statuses))
        print(" ".join(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    print()
    print(LEGEND)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
