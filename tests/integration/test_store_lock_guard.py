"""An agent frozen inside a write transaction of the embedded store: the fence guard ends it.

Real processes and a real SQLite file: a child takes the store's write lock and stops
itself (SIGSTOP), as an agent frozen mid-transaction would; a real fence guard watches a
plan naming it.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import wait_for
from vigil.agent.fencing import FencePlan
from vigil.errors import StoreUnavailable
from vigil.store.base import Put
from vigil.store.embedded import EmbeddedStore
from vigil.store.locks import exclusive_holders

FREEZE_IN_TRANSACTION = textwrap.dedent(
    """
    import os, signal, sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    if sys.argv[2] == "freeze":
        os.kill(os.getpid(), signal.SIGSTOP)
    sys.stdin.read()  # until the test closes stdin
    conn.execute("COMMIT")
    """
)


async def _make_store(path: Path) -> None:
    store = await EmbeddedStore.open(str(path), request_timeout=0.5)
    await store.txn([], [Put("/vigil/x", b"1")], [])
    await store.close()


async def _write(path: Path) -> None:
    store = await EmbeddedStore.open(str(path), request_timeout=0.5)
    try:
        await store.txn([], [Put("/vigil/x", b"2")], [])
    finally:
        await store.close()


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    asyncio.run(_make_store(path))
    return path


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _hold(database: Path, how: str, started: list[subprocess.Popen[str]]) -> int:
    process = subprocess.Popen(
        [sys.executable, "-c", FREEZE_IN_TRANSACTION, str(database), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    started.append(process)
    assert process.stdout is not None and process.stdout.readline() == "locked\n"
    return process.pid


def test_the_lock_table_names_the_writer_only_while_it_writes(
    database: Path, holders: list[subprocess.Popen[str]]
) -> None:
    assert exclusive_holders(database) == set()
    pid = _hold(database, "hold", holders)
    assert exclusive_holders(database) == {pid}
    with pytest.raises(StoreUnavailable):
        asyncio.run(_write(database))  # blocked: the lock is held
    process = holders[0]
    assert process.stdin is not None
    process.stdin.close()
    process.wait(timeout=10)
    assert exclusive_holders(database) == set()
    asyncio.run(_write(database))


def test_the_guard_ends_an_agent_frozen_in_a_transaction_past_its_deadline(
    database: Path, tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    pid = _hold(database, "freeze", holders)
    frozen = holders[0]
    wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().split()[2] == "T", 10, "frozen")
    state = tmp_path / "state"
    due_in = 2.0
    FencePlan("node1", pid, deadline=time.monotonic() + due_in, store_file=str(database)).write(
        state
    )
    guard = subprocess.Popen(
        [sys.executable, "-m", "vigil.agent.fenceguard", str(state), "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        started = time.monotonic()
        # before its deadline a lock holder is left alone, however long it holds
        time.sleep(due_in - 0.5)
        assert frozen.poll() is None
        wait_for(lambda: frozen.poll() is not None, 30, "the frozen writer ended")
        assert time.monotonic() - started >= due_in
        assert frozen.returncode == -signal.SIGKILL
        asyncio.run(_write(database))  # the store is writable again
    finally:
        guard.kill()
        out, _ = guard.communicate(timeout=10)
    assert f"agent {pid} has held the write lock of the store {database}" in out, out
