"""Policies are typed at the API's edge: the request bodies are pydantic models, shown in
the OpenAPI document, that refuse a bad value by name before anything is read or written
(the app over httpx's ASGI transport, a real embedded store in a scratch directory)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path

import httpx
import pytest

from vigil.agent.cache import ClusterCache
from vigil.agent.config import TokenEntry, TokensFile
from vigil.agent.kitrunner import KitRunner
from vigil.agent.operations import Operations
from vigil.api import schemas
from vigil.api.app import create_app
from vigil.api.auth import Authenticator
from vigil.kits.app import AppKit
from vigil.kits.registry import KitRegistry
from vigil.model.policies import (
    HIERARCHY_POLICY_NAMES,
    RESOURCE_POLICY_NAMES,
    ServerPolicy,
)
from vigil.model.records import ResourceRecord, ServerRecord, key
from vigil.store.embedded import EmbeddedStore

TOKEN = "policies-test-token-0123456789"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = await EmbeddedStore.open(str(tmp_path / "store.db"))
    await store.put(key("servers", "n1"), ServerRecord(name="n1", api_url="x").dump())
    commands = {"restore": "true", "remove": "true", "quick_check": "true"}
    web = ResourceRecord(tag="web", kit="app", instances={"n1": 1}, properties=commands)
    await store.put(key("resources", "web"), web.dump())
    cache = ClusterCache(store)
    await cache.reload()
    watch = asyncio.create_task(cache.run())
    runner = KitRunner(KitRegistry({"app": AppKit()}), "n1", tmp_path, ())
    tokens = TokensFile(token=[TokenEntry(name="admin", role="administrator", token=TOKEN)])
    app = create_app(Operations(store, runner, "n1", cache), Authenticator(tokens))
    headers = {"authorization": f"Bearer {TOKEN}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers=headers
    ) as opened:
        yield opened
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)
    await store.close()


def test_the_edge_models_name_every_policy() -> None:
    assert set(schemas.ServerPolicyUpdate.model_fields) == {f.name for f in fields(ServerPolicy)}
    assert set(schemas.ServerPolicyView.model_fields) == {f.name for f in fields(ServerPolicy)}
    assert set(schemas.ResourcePolicyUpdate.model_fields) == (
        RESOURCE_POLICY_NAMES | HIERARCHY_POLICY_NAMES
    )


async def test_the_openapi_document_shows_typed_policies(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    patch = document["paths"]["/v1/servers/{server}/policies"]["patch"]
    body = patch["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ServerPolicyUpdate"}
    server = document["components"]["schemas"]["ServerPolicyUpdate"]["properties"]
    assert {"type": "boolean"} in server["failover"]["anyOf"]
    assert {"$ref": "#/components/schemas/ShutdownStrategy"} in server["shutdown_strategy"]["anyOf"]
    resource = document["components"]["schemas"]["ResourcePolicyUpdate"]["properties"]
    assert {"type": "integer", "minimum": 0} in resource["recovery_limit"]["anyOf"]


async def test_a_server_policy_is_set_shown_and_reset(client: httpx.AsyncClient) -> None:
    changed = await client.patch(
        "/v1/servers/n1/policies", json={"shutdown_strategy": "switchover", "confirm_timeout": 30}
    )
    assert changed.status_code == 200, changed.text
    shown = (await client.get("/v1/servers/n1/policies")).json()
    assert shown["shutdown_strategy"] == "switchover" and shown["confirm_timeout"] == 30.0
    assert shown["failover"] is True
    reset = await client.patch("/v1/servers/n1/policies", json={"shutdown_strategy": None})
    assert reset.status_code == 200, reset.text
    shown = (await client.get("/v1/servers/n1/policies")).json()
    assert shown["shutdown_strategy"] == "hold" and shown["confirm_timeout"] == 30.0


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/v1/servers/n1/policies", {"failover": "yes"}, "failover"),
        ("/v1/servers/n1/policies", {"confirm_timeout": 0}, "confirm_timeout"),
        ("/v1/servers/n1/policies", {"shutdown_strategy": "flee"}, "shutdown_strategy"),
        ("/v1/servers/n1/policies", {"recovery_limit": 2}, "recovery_limit"),
        ("/v1/resources/web/policies", {"recovery_limit": -1}, "recovery_limit"),
        ("/v1/resources/web/policies", {"recovery_limit": 1.5}, "recovery_limit"),
        ("/v1/resources/web/policies", {"switchback": "sometimes"}, "switchback"),
        ("/v1/resources/web/policies", {"typo": True}, "typo"),
    ],
)
async def test_a_bad_policy_is_refused_by_name(
    client: httpx.AsyncClient, path: str, body: dict[str, object], named: str
) -> None:
    answer = await client.patch(path, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"].startswith(f"malformed request: {named}: ")


async def test_resource_and_hierarchy_policies_are_set(client: httpx.AsyncClient) -> None:
    answer = await client.patch(
        "/v1/resources/web/policies", json={"recovery_limit": 2, "switchback": "automatic"}
    )
    assert answer.status_code == 200, answer.text
    shown = (await client.get("/v1/resources/web")).json()
    assert shown["policies"] == {"recovery_limit": 2, "switchback": "automatic"}
