"""What only the etcd backend has: several members, failover, restarts, TLS, authentication.

The contract itself is checked by ``test_store.py`` (its ``etcd`` backend). These tests run
real etcd processes (``tests/etcd_server.py``), kill and restart them, and check that the
backend rides through what a real cluster does, and says which endpoint failed when it
cannot. Without etcd installed they fail, saying how to install it.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tests.etcd_server import (
    EtcdCluster,
    EtcdOptions,
    etcd_cluster,
    etcd_processes,
    require_etcd,
)

from vigil.errors import Compacted, ConfigError, LeaseLost, StoreError, StoreUnavailable
from vigil.store import Store, WatchEvent, open_store

DEADLINE = 10.0
#: an etcd permission: read and write every key under vigil/ (keys base64-encoded)
VIGIL_ONLY = {"permType": "READWRITE", "key": "dmlnaWwv", "range_end": "dmlnaWww"}


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    with etcd_cluster(tmp_path) as cluster:
        yield cluster


@pytest.fixture
async def clients() -> AsyncIterator[list[Store]]:
    """Stores the test opens (append them); closed when the test ends."""
    opened: list[Store] = []
    yield opened
    for store in opened:
        await store.close()


async def connect(clients: list[Store], url: str, request_timeout: float = 2.0) -> Store:
    store = await open_store(url, request_timeout=request_timeout)
    clients.append(store)
    return store


async def take(events: AsyncIterator[WatchEvent], count: int) -> list[WatchEvent]:
    return [await asyncio.wait_for(anext(events), DEADLINE) for _ in range(count)]


def dead_endpoint() -> str:
    """A loopback address where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


class KeepAliveLoop:
    """Renews a lease every ``interval`` s in a task, as an agent does; counts the
    renewals that failed with ``StoreUnavailable``. ``LeaseLost`` ends it (and the test)."""

    def __init__(self, store: Store, lease_id: int, interval: float) -> None:
        self.unavailable: list[StoreUnavailable] = []
        self.renewed = 0
        self._task = asyncio.create_task(self._run(store, lease_id, interval))

    async def _run(self, store: Store, lease_id: int, interval: float) -> None:
        while True:
            try:
                await store.keep_alive(lease_id)
                self.renewed += 1
            except StoreUnavailable as exc:
                self.unavailable.append(exc)
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Stop the loop; raises what ended it early (``LeaseLost``)."""
        if self._task.done():
            self._task.result()
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


# --- endpoints and failover ---------------------------------------------------------


async def test_a_dead_first_endpoint_fails_over_and_is_remembered(
    etcd: EtcdCluster, clients: list[Store]
) -> None:
    live = etcd.members[0].locator
    store = await connect(clients, f"etcd://{dead_endpoint()},{live}", request_timeout=1.0)
    revision = await store.put("k", b"1")
    item = await store.get("k")
    assert item is not None and item.value == b"1"
    events = store.watch("k", revision)
    assert (await take(events, 1))[0].mod_revision == revision
    await events.aclose()  # type: ignore[attr-defined]

    # A listener that never answers: the first call spends part of its time there...
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen()
        silent = f"127.0.0.1:{blackhole.getsockname()[1]}"
        store = await connect(clients, f"etcd://{silent},{live}", request_timeout=1.0)
        assert await store.get("k") is not None
        # ...later calls go straight to the endpoint that answered.
        start = time.monotonic()
        for _ in range(10):
            assert await store.get("k") is not None
        # not a 1 s timeout on the silent one each time (10 s); the margin is for load
        assert time.monotonic() - start < 5.0


async def test_errors_name_every_endpoint_tried(tmp_path: Path) -> None:
    first, second = dead_endpoint(), dead_endpoint()
    with pytest.raises(StoreUnavailable) as info:
        await open_store(f"etcd://{first},{second}", request_timeout=0.5)
    assert first in str(info.value) and second in str(info.value)
    assert "connection refused" in str(info.value)


async def test_a_write_without_answer_is_not_resent_to_another_endpoint(
    etcd: EtcdCluster, clients: list[Store]
) -> None:
    member = etcd.members[0]
    # The same member twice: a resent write would show as a second attempt.
    store = await connect(clients, f"etcd://{member.locator},{member.locator}", 0.5)
    async with etcd.paused():
        with pytest.raises(StoreUnavailable) as write:
            await store.put("k", b"1")
        with pytest.raises(StoreUnavailable) as read:
            await store.get("k")
    assert str(write.value).count(member.locator) == 1
    assert "may or may not have been applied" in str(write.value)
    assert str(read.value).count(member.locator) == 2  # a read may go anywhere
    assert await store.put("k", b"2") > 0


# --- restarts and leader changes ----------------------------------------------------


async def test_a_watch_resumed_after_an_etcd_restart_sees_no_gap(
    etcd: EtcdCluster, clients: list[Store]
) -> None:
    member = etcd.members[0]
    writer, watcher = await connect(clients, etcd.url), await connect(clients, etcd.url)
    start = (await watcher.get_prefix("")).revision + 1
    written = [await writer.put(f"w/{i}", b"%d" % i) for i in range(5)]
    events = watcher.watch("w/", start)
    seen = await take(events, 3)
    member.kill()  # SIGKILL: the stream breaks
    with pytest.raises(StoreUnavailable) as info:
        while True:  # the events already received may still come first
            seen.append(await asyncio.wait_for(anext(events), DEADLINE))
    assert member.locator in str(info.value)
    await etcd.restart(member)  # same data directory
    written += [await writer.put(f"w/{i}", b"%d" % i) for i in range(5, 8)]
    resumed = watcher.watch("w/", seen[-1].mod_revision + 1)
    seen += await take(resumed, len(written) - len(seen))
    sentinel = await writer.put("w/sentinel", b"")
    (last,) = await take(resumed, 1)
    await resumed.aclose()  # type: ignore[attr-defined]
    assert [e.mod_revision for e in seen] == written
    assert [e.key for e in seen] == [f"w/{i}" for i in range(8)]
    assert (last.key, last.mod_revision) == ("w/sentinel", sentinel)


async def test_a_kept_lease_survives_an_etcd_restart(
    etcd: EtcdCluster, clients: list[Store]
) -> None:
    member = etcd.members[0]
    store = await connect(clients, etcd.url, request_timeout=0.5)
    lease = await store.grant_lease(3)
    await store.put("owner", b"me", lease.id)
    loop = KeepAliveLoop(store, lease.id, interval=0.3)
    await asyncio.sleep(1.0)
    member.kill()
    await asyncio.sleep(1.0)  # down for a third of the TTL
    await etcd.restart(member)
    await asyncio.sleep(lease.ttl + 1.0)  # longer than the TTL: renewals work again
    await loop.stop()
    assert loop.unavailable, "the keep-alive loop never noticed etcd was down"
    assert all(member.locator in str(exc) for exc in loop.unavailable)
    owner = await store.get("owner")
    assert owner is not None and owner.lease == lease.id
    assert await store.keep_alive(lease.id) == lease.ttl


async def test_killing_the_leader_of_three_loses_no_lease(
    tmp_path: Path, clients: list[Store]
) -> None:
    with etcd_cluster(tmp_path, members=3) as etcd:
        leader = etcd.leader()
        # The leader first, so that the client has to fail over when it dies.
        others = [m.locator for m in etcd.members if m is not leader]
        store = await connect(clients, f"etcd://{','.join([leader.locator, *others])}")
        lease = await store.grant_lease(3)
        await store.put("owner", b"me", lease.id)
        loop = KeepAliveLoop(store, lease.id, interval=0.3)
        await asyncio.sleep(1.0)
        leader.kill()
        renewed = loop.renewed
        await asyncio.sleep(2 * lease.ttl)  # no LeaseLost meanwhile (loop.stop raises it)
        await loop.stop()
        assert loop.renewed > renewed + 5
        assert etcd.leader() is not leader
        owner = await store.get("owner")
        assert owner is not None and owner.lease == lease.id
        assert await store.put("after", b"1") > 0


async def test_a_watch_on_a_member_without_leader_ends_unavailable(
    tmp_path: Path, clients: list[Store]
) -> None:
    with etcd_cluster(tmp_path, members=3) as etcd:
        alone = etcd.members[0]
        store = await connect(clients, f"etcd://{alone.locator}")
        revision = await store.put("k", b"1")
        events = store.watch("k", revision)
        await take(events, 1)
        for member in etcd.members[1:]:
            member.kill()  # the member left cannot have a leader any more
        with pytest.raises(StoreUnavailable, match="no leader") as info:
            await take(events, 1)  # instead of waiting, silent, for ever
        assert alone.locator in str(info.value)


# --- history, leases, security ------------------------------------------------------


async def test_a_watch_below_an_explicit_compaction_raises_compacted(
    etcd: EtcdCluster, clients: list[Store]
) -> None:
    store = await connect(clients, etcd.url)
    revisions = [await store.put("c/k", b"%d" % i) for i in range(5)]
    await etcd.compact(revisions[3])
    events = store.watch("c/", revisions[0])
    with pytest.raises(Compacted) as info:
        await anext(events)
    assert info.value.compact_revision == revisions[3]
    assert etcd.members[0].locator in str(info.value)
    events = store.watch("c/", revisions[3])
    assert [e.mod_revision for e in await take(events, 2)] == revisions[3:]
    await events.aclose()  # type: ignore[attr-defined]


async def test_the_shortest_lease_follows_the_election_timeout(
    tmp_path: Path, clients: list[Store]
) -> None:
    # etcd's default timing: 1.5 x 1000 ms, rounded up to whole seconds.
    default_timing = EtcdOptions(heartbeat_ms=100, election_ms=1000)
    with etcd_cluster(tmp_path / "default", options=default_timing) as etcd:
        store = await connect(clients, etcd.url)
        assert store.capabilities.min_lease_ttl == 2
        assert (await store.grant_lease(1)).ttl == 2
    with etcd_cluster(tmp_path / "tuned") as etcd:  # 50 / 500 ms
        store = await connect(clients, etcd.url)
        assert store.capabilities.min_lease_ttl == 1
        assert (store.capabilities.networked, store.capabilities.single_host) == (True, False)
        assert (await store.grant_lease(1)).ttl == 1


async def test_user_and_password_with_an_expiring_token(
    tmp_path: Path, clients: list[Store]
) -> None:
    auth = EtcdOptions(extra=("--auth-token=simple", "--auth-token-ttl=1"))
    with etcd_cluster(tmp_path, options=auth) as etcd:
        async with etcd.members[0].http() as http:
            for path, body in (
                ("/v3/auth/user/add", {"name": "root", "password": "s3cret"}),
                ("/v3/auth/role/add", {"name": "root"}),
                ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
                # an agent allowed vigil/ only
                ("/v3/auth/user/add", {"name": "agent", "password": "s3cret"}),
                ("/v3/auth/role/add", {"name": "vigil"}),
                ("/v3/auth/role/grant", {"name": "vigil", "perm": VIGIL_ONLY}),
                ("/v3/auth/user/grant", {"user": "agent", "role": "vigil"}),
                ("/v3/auth/enable", {}),
            ):
                (await http.post(path, json=body)).raise_for_status()
        password_file = tmp_path / "etcd.pw"
        password_file.write_text("s3cret\n")
        url = f"{etcd.url}?username=root&password_file={password_file}"
        store = await connect(clients, url)
        revision = await store.put("k", b"1")
        await asyncio.sleep(2.5)  # the token expires after 1 s unused
        assert await store.get("k") is not None  # authenticated again by itself
        events = store.watch("k", revision)
        assert (await take(events, 1))[0].mod_revision == revision
        await events.aclose()  # type: ignore[attr-defined]

        agent = await connect(clients, url.replace("username=root", "username=agent"))
        assert await agent.put("vigil/x", b"1") > revision
        with pytest.raises(StoreError, match="permission denied"):
            await agent.put("elsewhere", b"1")

        with pytest.raises(StoreError, match="username and password_file"):
            await open_store(etcd.url)
        password_file.write_text("wrong\n")
        with pytest.raises(StoreError, match="authentication failed"):
            await open_store(url)


async def test_tls_with_client_certificates(tmp_path: Path, clients: list[Store]) -> None:
    with etcd_cluster(tmp_path, options=EtcdOptions(tls=True)) as etcd:
        assert etcd.url.startswith("etcds://")
        store = await connect(clients, etcd.url)
        revision = await store.put("k", b"1")
        events = store.watch("k", revision)
        assert (await take(events, 1))[0].value == b"1"
        await events.aclose()  # type: ignore[attr-defined]
        locator, tls = etcd.members[0].locator, etcd.members[0].tls
        assert tls is not None
        with pytest.raises(StoreUnavailable, match="cert_file"):  # no client certificate
            await open_store(f"etcds://{locator}?ca_file={tls.ca}", request_timeout=1.0)
        with pytest.raises(StoreUnavailable, match="TLS failed"):  # an unknown CA
            await open_store(f"etcds://{locator}", request_timeout=1.0)


# --- configuration and the test harness -------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("etcd://", "at least one etcd member"),
        ("etcd://127.0.0.1:2379/prefix", "HOST:PORT"),
        ("etcd://user:pw@127.0.0.1:2379", "password_file"),
        ("etcd://127.0.0.1:2379?timeout=3", "unknown option 'timeout'"),
        ("etcd://127.0.0.1:2379?username=root", "both username and password_file"),
        ("etcd://127.0.0.1:2379?username=a&username=b", "exactly once"),
        ("etcd://127.0.0.1:2379?username=r&password_file=/nonexistent", "password file"),
        ("etcds://127.0.0.1:2379?ca_file=/nonexistent", "TLS files"),
        ("etcd://127.0.0.1:notaport", "bad member address"),
    ],
)
async def test_bad_etcd_urls_are_refused_clearly(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        await open_store(url)


def test_without_etcd_the_tests_fail_saying_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y etcd-server"):
        require_etcd()


def test_the_harness_leaves_no_etcd_behind(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="the test failed"),
        etcd_cluster(tmp_path, members=3) as etcd,
    ):
        base = etcd.members[0].directory.parent
        assert len(etcd_processes(str(base))) == 3
        etcd.members[1].signal(signal.SIGSTOP)  # even a paused member
        raise RuntimeError("the test failed")
    assert etcd_processes(str(base)) == []
    assert not base.exists()


async def test_lease_lost_after_revoke_names_the_lease(
    etcd: EtcdCluster, clients: list[Store]
) -> None:
    store = await connect(clients, etcd.url)
    lease = await store.grant_lease(30)
    await store.revoke_lease(lease.id)
    with pytest.raises(LeaseLost, match=str(lease.id)):
        await store.put("k", b"1", lease.id)
    with pytest.raises(LeaseLost, match=str(lease.id)):
        await store.keep_alive(lease.id)
