"""A remove that hangs is escalated through the kit's ``escalate`` (its forceful stop), and
one that fails is escalated only when the agent lets the resource go: the real ``Actor``
and ``KitRunner`` with a small fake kit, on a real embedded store in a scratch directory.

Also: the fencing epoch a restore runs with is the claim's own revision."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest

from vigil.agent.actor import Actor
from vigil.agent.cache import ClusterCache
from vigil.agent.kitrunner import KitRunner
from vigil.engine.plan import StepKind, decide
from vigil.engine.shutdown import remove_everything
from vigil.errors import KitError, Severity
from vigil.kits.base import Check, Kit, KitContext, KitProperties, Timeouts
from vigil.kits.registry import KitRegistry
from vigil.model.cluster import Cluster
from vigil.model.records import (
    EVENTS_PREFIX,
    EventRecord,
    IntentRecord,
    OwnerRecord,
    ResourceRecord,
    ServerRecord,
    StateRecord,
    key,
)
from vigil.model.states import InstanceState
from vigil.store.base import Store
from vigil.store.embedded import EmbeddedStore


class FakeProperties(KitProperties):
    #: how remove behaves: ok, hang (never returns), fail (KitError), stuck (hangs, and
    #: the escalation fails too)
    remove: str = "ok"


class FakeKit(Kit[FakeProperties]):
    """Keeps "in service" in memory; records the epochs it restored with and escalations."""

    name: ClassVar[str] = "fake"
    Properties = FakeProperties
    timeouts: ClassVar[Timeouts] = Timeouts(remove=0.2, escalate=2.0)

    def __init__(self) -> None:
        self.up: set[str] = set()
        self.epochs: dict[str, int] = {}
        self.escalated: list[str] = []

    async def restore(self, ctx: KitContext[FakeProperties]) -> None:
        self.up.add(ctx.tag)
        self.epochs[ctx.tag] = ctx.epoch

    async def remove(self, ctx: KitContext[FakeProperties]) -> None:
        if ctx.properties.remove in ("hang", "stuck"):
            await asyncio.sleep(3600)
        if ctx.properties.remove == "fail":
            raise KitError(f"{ctx.tag} is held by pid 42", Severity.HARD)
        self.up.discard(ctx.tag)

    async def escalate(self, ctx: KitContext[FakeProperties]) -> list[str]:
        self.escalated.append(ctx.tag)
        if ctx.properties.remove == "stuck":
            raise KitError(f"{ctx.tag} cannot be stopped", Severity.HARD)
        self.up.discard(ctx.tag)
        return [f"killed what {ctx.tag} ran"]

    async def quick_check(self, ctx: KitContext[FakeProperties]) -> Check:
        return Check.running() if ctx.tag in self.up else Check.stopped()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await EmbeddedStore.open(str(tmp_path / "store.db"))
    for server in ("n1", "n2"):
        await opened.put(key("servers", server), ServerRecord(name=server, api_url="x").dump())
    yield opened
    await opened.close()


async def in_service_on_n1(store: Store, tmp_path: Path, remove: str) -> tuple[Actor, FakeKit]:
    """``web`` (kit fake, removing as ``remove`` says) restored on n1 by n1's actor."""
    web = ResourceRecord(
        tag="web", kit="fake", instances={"n1": 1, "n2": 10}, properties={"remove": remove}
    )
    await store.put(key("resources", "web"), web.dump())
    await store.put(key("intent", "web"), IntentRecord(server="n1").dump())
    lease = await store.grant_lease(30)
    kit = FakeKit()
    actor = Actor(
        store, KitRunner(KitRegistry({"fake": kit}), "n1", tmp_path, ()), "n1", lambda: lease.id
    )
    cluster = await ClusterCache(store).reload()
    (step,) = decide(cluster, "n1", actor.local.view())
    assert step.kind is StepKind.RESTORE
    await actor.carry_out(cluster, step)
    assert kit.up == {"web"} and actor.local.running == {"web"}
    return actor, kit


async def switch_to_n2(store: Store, actor: Actor) -> Cluster:
    """Want ``web`` on n2; n1's actor carries out its remove step. The view it decided on."""
    await store.put(key("intent", "web"), IntentRecord(server="n2").dump())
    cluster = await ClusterCache(store).reload()
    (step,) = decide(cluster, "n1", actor.local.view())
    assert step.kind is StepKind.REMOVE and not step.forced
    await actor.carry_out(cluster, step)
    return cluster


async def state(store: Store) -> StateRecord:
    item = await store.get(key("state", "n1", "web"))
    assert item is not None
    return StateRecord.model_validate_json(item.value)


async def events(store: Store, kind: str) -> list[str]:
    items = (await store.get_prefix(EVENTS_PREFIX)).items
    records = [EventRecord.model_validate_json(item.value) for item in items]
    return [record.message for record in records if record.kind == kind]


async def test_the_restore_runs_with_the_epoch_of_its_own_claim(
    store: Store, tmp_path: Path
) -> None:
    _, kit = await in_service_on_n1(store, tmp_path, "ok")
    owner = await store.get(key("owner", "web"))
    assert owner is not None and OwnerRecord.model_validate_json(owner.value).server == "n1"
    assert kit.epochs == {"web": owner.create_revision}


async def test_a_hanging_remove_is_escalated_and_the_switchover_goes_on(
    store: Store, tmp_path: Path
) -> None:
    actor, kit = await in_service_on_n1(store, tmp_path, "hang")
    await switch_to_n2(store, actor)
    assert kit.escalated == ["web"]
    assert actor.local.running == frozenset()
    assert await store.get(key("owner", "web")) is None, "released for n2"
    reported = await state(store)
    assert reported.state is InstanceState.OSU
    (message,) = await events(store, "remove-escalated")
    assert message.startswith("remove of web on n1 overran its timeout (")
    assert message.endswith("); forced: killed what web ran")


async def test_a_failed_remove_in_a_switchover_stays_owned_here(
    store: Store, tmp_path: Path
) -> None:
    actor, kit = await in_service_on_n1(store, tmp_path, "fail")
    await switch_to_n2(store, actor)
    assert kit.escalated == [], "an operator sees why (a holder) and acts"
    assert actor.local.running == {"web"} and kit.up == {"web"}
    owner = await store.get(key("owner", "web"))
    assert owner is not None
    reported = await state(store)
    assert reported.state is InstanceState.OSF
    assert reported.reason == "remove failed: web is held by pid 42"


async def test_a_failed_remove_is_escalated_when_the_agent_lets_go(
    store: Store, tmp_path: Path
) -> None:
    actor, kit = await in_service_on_n1(store, tmp_path, "fail")
    cluster = await ClusterCache(store).reload()
    removal = remove_everything(cluster, actor.local.running, actor.local.known, "stopping")
    assert removal is not None
    step = removal.step
    assert await actor.remove_waves(removal.cluster, step.waves, step, step.state_reason)
    assert kit.escalated == ["web"] and kit.up == set()
    assert actor.local.running == frozenset()
    (message,) = await events(store, "remove-escalated")
    assert message.startswith("remove of web on n1 failed (web is held by pid 42)")


async def test_an_escalation_that_fails_too_leaves_it_owned_here(
    store: Store, tmp_path: Path
) -> None:
    actor, kit = await in_service_on_n1(store, tmp_path, "stuck")
    await switch_to_n2(store, actor)
    assert kit.escalated == ["web"]
    assert actor.local.running == {"web"}
    assert await store.get(key("owner", "web")) is not None
    reported = await state(store)
    assert reported.state is InstanceState.OSF
    assert reported.reason.startswith("remove failed: remove of web (fake) on n1 did not finish")
