"""Backends for the store contract suite.

Every test in ``test_store.py`` takes the ``backend`` fixture and runs once per entry of
``BACKENDS``. An entry is an async context manager factory: given a scratch directory, it
starts (or creates) one store and yields a ``Backend`` whose ``connect`` opens new client
connections to that same store, so tests can play several agents on one store.

To add a backend (e.g. etcd), write one such factory and add it to ``BACKENDS``::

    @asynccontextmanager
    async def etcd_backend(workdir: Path) -> AsyncIterator[Backend]:
        etcd = ...  # start `etcd --data-dir workdir/etcd` on free loopback ports, wait healthy
        url = f"etcd://127.0.0.1:{etcd.port}"
        backend = Backend(
            name="etcd", url=url, locator=f"127.0.0.1:{etcd.port}", short_ttl=1,
            open_client=lambda timeout: open_store(url, request_timeout=timeout),
            stall=etcd.paused,        # SIGSTOP on enter, SIGCONT on exit
            compact=etcd.compact,     # POST /v3/kv/compaction {"revision": revision}
            history_limit=0,          # etcd keeps history until compacted
        )
        try:
            yield backend
        finally:
            await backend.close_clients()
            etcd.stop()

    BACKENDS["etcd"] = etcd_backend
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.etcd_server import etcd_backend

from vigil.store import Store
from vigil.store.embedded import EmbeddedStore

#: watch history the embedded test stores keep; the compaction test writes more than this
EMBEDDED_HISTORY_LIMIT = 100


@dataclass
class Backend:
    """One running store, and how tests reach and disturb it."""

    name: str
    #: ``open_store`` URL of the store, for clients in other processes
    url: str
    #: what an administrator needs to find the store; error messages must name it
    locator: str
    #: shortest lease TTL (seconds) worth asking for; expiry tests wait several times longer
    short_ttl: float
    #: opens a new client of the store (``request_timeout`` in seconds)
    open_client: Callable[[float], Awaitable[Store]]
    #: while entered, the store cannot serve writes (a held lock, a paused server)
    stall: Callable[[], AbstractAsyncContextManager[None]]
    #: make history below ``revision`` unavailable to watches (after the test wrote
    #: ``history_limit`` revisions past it)
    compact: Callable[[int], Awaitable[None]]
    #: revisions of history the store keeps without explicit compaction (0: unbounded)
    history_limit: int
    clients: list[Store] = field(default_factory=list)

    async def connect(self, request_timeout: float = 2.0) -> Store:
        """A new client of this store; closed when the test ends."""
        client = await self.open_client(request_timeout)
        self.clients.append(client)
        return client

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.close()


@asynccontextmanager
async def embedded_backend(workdir: Path) -> AsyncIterator[Backend]:
    """An embedded store in a directory that does not exist yet (``open`` creates it)."""
    path = workdir / "store" / "vigil.db"

    async def open_client(request_timeout: float) -> Store:
        return await EmbeddedStore.open(
            str(path), request_timeout=request_timeout, history_limit=EMBEDDED_HISTORY_LIMIT
        )

    @asynccontextmanager
    async def stall() -> AsyncIterator[None]:
        # Another connection holding the write lock, as a stuck process would.
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    async def compact(revision: int) -> None:
        # Nothing to do: the test wrote more than EMBEDDED_HISTORY_LIMIT revisions since.
        return None

    backend = Backend(
        name="embedded",
        url=f"sqlite://{path}",
        locator=str(path),
        short_ttl=0.3,
        open_client=open_client,
        stall=stall,
        compact=compact,
        history_limit=EMBEDDED_HISTORY_LIMIT,
    )
    try:
        yield backend
    finally:
        await backend.close_clients()


BackendFactory = Callable[[Path], AbstractAsyncContextManager[Backend]]

#: every backend the contract suite runs against
BACKENDS: dict[str, BackendFactory] = {
    "embedded": embedded_backend,
    "etcd": etcd_backend(Backend),
}


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A fresh, empty store of each backend in turn."""
    async with BACKENDS[request.param](tmp_path) as running:
        yield running


@pytest.fixture
async def store(backend: Backend) -> Store:
    """One client of the test's store."""
    return await backend.connect()
