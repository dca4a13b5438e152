"""Answering a failover that waits for confirmation: the answer and its event in one
transaction, refused when there is no question (a real embedded store in a scratch
directory)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vigil.agent.kitrunner import KitRunner
from vigil.agent.operations import Operations
from vigil.agent.recoveryops import RecoveryOperations
from vigil.errors import NotFound
from vigil.kits.registry import KitRegistry
from vigil.model.records import (
    EVENTS_PREFIX,
    ConfirmRecord,
    EventRecord,
    ResourceRecord,
    ServerRecord,
    key,
)
from vigil.store.base import Store
from vigil.store.embedded import EmbeddedStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await EmbeddedStore.open(str(tmp_path / "store.db"))
    await opened.put(key("servers", "n1"), ServerRecord(name="n1", api_url="x").dump())
    web = ResourceRecord(tag="web", kit="app", instances={"n1": 1, "n2": 10})
    await opened.put(key("resources", "web"), web.dump())
    yield opened
    await opened.close()


def recovery(store: Store, tmp_path: Path) -> RecoveryOperations:
    runner = KitRunner(KitRegistry({}), "n1", tmp_path, ())
    return RecoveryOperations(Operations(store, runner, "n1"))


async def test_no_question_no_answer(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no failover of web is waiting for confirmation"):
        await recovery(store, tmp_path).confirm_failover("web", True, "admin")


async def test_the_answer_and_its_event_are_one_transaction(store: Store, tmp_path: Path) -> None:
    asked = ConfirmRecord(target="n2", origin="n1", since=1.0)
    await store.put(key("confirm", "web"), asked.dump())
    summary = await recovery(store, tmp_path).confirm_failover("web", False, "admin")
    assert summary == "failover of web to n2 refused by admin"
    item = await store.get(key("confirm", "web"))
    assert item is not None
    assert ConfirmRecord.model_validate_json(item.value).decision is False
    (event,) = (await store.get_prefix(EVENTS_PREFIX)).items
    record = EventRecord.model_validate_json(event.value)
    assert (record.kind, record.message, record.hierarchy) == (
        "failover-answered",
        summary,
        "web",
    )
    assert event.mod_revision == item.mod_revision
