"""Failsafe rounds over real UDP sockets on loopback (``vigil.agent.failsafe``), and the
lease keeper holding its lease on through them while a real embedded store is "down"."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path

import pytest

from vigil.agent.config import AgentConfig, LeaseSettings
from vigil.agent.failsafe import Failsafe, failsafe_key
from vigil.agent.fencing import FencePlan
from vigil.agent.lease import LeaseKeeper
from vigil.errors import StoreUnavailable
from vigil.model.cluster import Cluster, CommPath, Server
from vigil.model.records import AliveRecord, key
from vigil.store.base import Store
from vigil.store.embedded import EmbeddedStore

KEY = b"k" * 32


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def view(ports: dict[str, int], paths: tuple[CommPath, ...] = ()) -> Callable[[], Cluster]:
    servers = {
        name: Server(name, f"http://127.0.0.1:{port}", alive=True) for name, port in ports.items()
    }
    cluster = Cluster(servers=servers, comm_paths=paths)
    return lambda: cluster


class Peer:
    """A failsafe answering on loopback, whose store access the test switches."""

    def __init__(self, name: str, ports: dict[str, int], key: bytes = KEY) -> None:
        self.failsafe = Failsafe(name, key, view(ports), ports[name])
        self.port = ports[name]
        self.cannot = True
        self.heard: list[str] = []

    async def start(self) -> Peer:
        await self.failsafe.listen("127.0.0.1", self.port, lambda: self.cannot, self.heard.append)
        return self


@pytest.fixture
async def three() -> AsyncIterator[dict[str, Peer]]:
    ports = {name: free_port() for name in ("node1", "node2", "node3")}
    peers = {name: await Peer(name, ports).start() for name in ports}
    try:
        yield peers
    finally:
        for peer in peers.values():
            peer.failsafe.close()


async def test_every_other_agent_confirms_and_restarts_the_askers_clock(
    three: dict[str, Peer],
) -> None:
    asker = three["node1"].failsafe
    assert asker.members() == ("node2", "node3")
    assert await asker.confirm(["node2", "node3"], 0.5) is None
    assert three["node2"].heard == ["node1"] and three["node3"].heard == ["node1"]


async def test_one_agent_that_reaches_the_store_is_a_doubt(three: dict[str, Peer]) -> None:
    three["node3"].cannot = False
    doubt = await three["node1"].failsafe.confirm(["node2", "node3"], 0.5)
    assert doubt == "node3 can reach the store"
    assert three["node3"].heard == []  # no confirmation, no restarted clock


async def test_an_agent_that_does_not_answer_is_a_doubt(three: dict[str, Peer]) -> None:
    three["node3"].failsafe.close()
    doubt = await three["node1"].failsafe.confirm(["node2", "node3"], 0.3)
    assert doubt is not None and doubt.startswith("no answer within 0.3s from node3 at 127.0.0.1")


async def test_an_answer_under_another_key_is_no_answer(three: dict[str, Peer]) -> None:
    ports = {"node1": free_port(), "node4": free_port()}
    stranger = await Peer("node4", ports, key=b"x" * 32).start()
    asker = Failsafe("node1", KEY, view(ports), ports["node1"])
    try:
        doubt = await asker.confirm(["node4"], 0.3)
        assert doubt is not None and "no answer" in doubt
        assert stranger.heard == []
    finally:
        stranger.failsafe.close()


async def test_nobody_to_ask_confirms_and_no_route_is_a_doubt() -> None:
    lonely = Failsafe("node1", KEY, lambda: Cluster(), 7480)
    assert await lonely.confirm([], 0.1) is None
    assert await lonely.confirm(["node9"], 0.1) == "no comm path or address to ask node9"


async def test_rounds_go_over_comm_paths() -> None:
    ports = {"node1": free_port(), "node2": free_port()}
    path = CommPath.between("node1", "127.0.0.1", "node2", "127.0.0.2")
    asker = Failsafe("node1", KEY, view(ports, (path,)), ports["node1"])
    assert asker.routes(asker.view(), "node2") == [("127.0.0.1", "127.0.0.2", ports["node2"])]
    answering = Failsafe("node2", KEY, view(ports), ports["node2"])
    heard: list[str] = []
    await answering.listen("127.0.0.2", ports["node2"], lambda: True, heard.append)
    try:
        assert await asker.confirm(["node2"], 0.5) is None and heard == ["node1"]
    finally:
        answering.close()


def test_the_key_comes_from_the_shared_secret(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[[token]]\nname = "a"\nrole = "administrator"\ntoken = "0123456789abcdef"\n')
    config = AgentConfig(server="node1", store="x", state_dir=tmp_path, tokens_file=tokens)
    by_tokens = failsafe_key(config)
    assert by_tokens is not None and len(by_tokens) == 32
    secret = tmp_path / "cluster.key"
    secret.write_text("another secret\n")
    with_key = config.model_copy(update={"secrets_key_file": secret})
    assert failsafe_key(with_key) not in (None, by_tokens)
    tokens.write_text("")
    assert failsafe_key(config) is None
    assert Failsafe.for_agent(config, Cluster) is None  # no secret: no failsafe, said so
    off = config.model_copy(update={"lease": LeaseSettings(failsafe=False)})
    assert Failsafe.for_agent(off, Cluster) is None


def test_the_guard_never_waits_past_the_renewal_plus_the_limit() -> None:
    plan = FencePlan("node1", 1, deadline=100.0, renewed=90.0, failsafe_limit=5.0)
    assert plan.failsafe and plan.due == 95.0
    assert FencePlan("node1", 1, deadline=100.0).due == 100.0  # an older agent's plan
    held = FencePlan("node1", 1, deadline=93.0, renewed=90.0, failsafe_limit=5.0)
    assert held.failsafe and held.due == 93.0


# --- the lease keeper with a store that goes away -----------------------------------------


class Switched:
    """An embedded store that can be made unreachable (every call the keeper makes
    raises)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("the test took the store away")

    async def get(self, k: str):  # type: ignore[no-untyped-def]
        self._check()
        return await self.inner.get(k)

    async def txn(self, compares, success, failure=()):  # type: ignore[no-untyped-def]
        self._check()
        return await self.inner.txn(compares, success, failure)

    async def grant_lease(self, ttl):  # type: ignore[no-untyped-def]
        self._check()
        return await self.inner.grant_lease(ttl)

    async def keep_alive(self, lease_id: int) -> int:
        self._check()
        return await self.inner.keep_alive(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        self._check()
        await self.inner.revoke_lease(lease_id)


class Confirming:
    """A fake failsafe: ``answer`` is what every round returns (None: confirmed)."""

    def __init__(self) -> None:
        self.answer: str | None = None
        self.rounds: list[list[str]] = []

    def members(self) -> tuple[str, ...]:
        return ("node2",)

    async def confirm(self, servers: Collection[str], timeout: float) -> str | None:
        self.rounds.append(sorted(servers))
        await asyncio.sleep(0.005)
        return self.answer


#: small but roomy settings: trusts 0.4 s after a renewal, failsafe at most 1 s
FAST = LeaseSettings(
    ttl=0.6, renew_interval=0.1, request_timeout=0.1, safety_margin=0.2, failsafe_limit=1.0
)


@pytest.fixture
async def switched(tmp_path: Path) -> AsyncIterator[Switched]:
    inner = await EmbeddedStore.open(str(tmp_path / "store.db"))
    try:
        yield Switched(inner)
    finally:
        await inner.close()


async def running(store: Switched, failsafe: Confirming) -> tuple[LeaseKeeper, list[str]]:
    lost: list[str] = []

    async def on_lost(reason: str) -> None:
        lost.append(reason)

    keeper = LeaseKeeper(
        store,  # type: ignore[arg-type]
        FAST,
        "node1",
        on_lost,
        failsafe=failsafe,  # type: ignore[arg-type]
    )
    await keeper.grant(AliveRecord(started_at=1.0, pid=42))
    return keeper, lost


async def test_the_heartbeat_names_the_members_and_the_failsafe(switched: Switched) -> None:
    keeper, _ = await running(switched, Confirming())
    assert await keeper._renew_once() is None
    item = await switched.get(key("alive", "node1"))
    assert item is not None
    beat = AliveRecord.model_validate_json(item.value)
    assert (beat.failsafe, beat.members, beat.beat) == (1.0, ("node2",), 1)


async def test_confirmed_rounds_hold_the_lease_until_the_store_is_back(
    switched: Switched,
) -> None:
    failsafe = Confirming()
    keeper, lost = await running(switched, failsafe)
    task = asyncio.create_task(keeper.run())
    try:
        await asyncio.sleep(0.15)
        switched.down = True
        await asyncio.sleep(0.8)  # twice the trust a renewal gives
        assert lost == [] and keeper.valid()
        assert keeper.held_from > keeper.last_sent and keeper.store_unreachable()
        assert failsafe.rounds and all(r == ["node2"] for r in failsafe.rounds)
        switched.down = False
        await asyncio.sleep(0.3)
        assert lost == [] and keeper.valid() and not keeper.store_unreachable()
        assert keeper.last_sent > keeper.held_from
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_doubt_fences_at_the_renewal_deadline(switched: Switched) -> None:
    failsafe = Confirming()
    failsafe.answer = "node2 can reach the store"
    keeper, lost = await running(switched, failsafe)
    task = asyncio.create_task(keeper.run())
    try:
        await asyncio.sleep(0.15)
        switched.down = True
        down_at = keeper.last_sent
        await asyncio.sleep(0.7)
        assert len(lost) == 1 and "failsafe: node2 can reach the store" in lost[0], lost
        assert keeper.held_from <= down_at
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_failsafe_ends_at_its_limit(switched: Switched) -> None:
    keeper, lost = await running(switched, Confirming())
    task = asyncio.create_task(keeper.run())
    try:
        await asyncio.sleep(0.15)
        switched.down = True
        last = keeper.last_sent
        for _ in range(100):  # 5 s at most
            if lost:
                break
            await asyncio.sleep(0.05)
        held = keeper.clock() - last
        # rounds stop at last + 1 s; the last one holds on ttl - margin (0.4 s) more
        assert 1.0 < held < 1.6, held
        assert "unreachable for over failsafe_limit (1s)" in lost[0], lost
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
