"""The API's security and operations surface (issue 13), over httpx's ASGI transport with
a real embedded store: the audit log (every change and every refusal, who, role, address,
outcome, no secret), the load balancer's health endpoint, ``/metrics``, and the rotation of
the cluster key that re-seals every stored secret."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from vigil.agent.cache import ClusterCache
from vigil.agent.config import TokenEntry, TokensFile
from vigil.agent.kitrunner import KitRunner
from vigil.agent.operations import Operations
from vigil.agent.secrets import SEALED_PREFIX, SecretBox, add_key, generate_key_file, retire_keys
from vigil.api.app import create_app
from vigil.api.audit import _login_user, summarize
from vigil.kits.app import AppKit
from vigil.kits.registry import KitRegistry
from vigil.model.records import (
    AliveRecord,
    ResourceRecord,
    ServerRecord,
    StateRecord,
    key,
)
from vigil.model.states import InstanceState
from vigil.store.embedded import EmbeddedStore

TOKENS = {
    "administrator": "admin-token-0123456789abcdef",
    "operator": "oper-token-0123456789abcdef",
    "guest": "guest-token-0123456789abcdef",
}
SECRET = "the-directory-password-42"


@dataclass
class Api:
    app: object
    store: EmbeddedStore
    box: SecretBox
    key_file: Path

    def client(self, role: str | None = "administrator") -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {TOKENS[role]}"} if role else {}
        transport = httpx.ASGITransport(app=self.app, client=("10.9.8.7", 5555))  # type: ignore[arg-type]
        return httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers)

    async def audit(self) -> list[dict[str, object]]:
        await self.app.state.audit.flush()  # type: ignore[attr-defined]
        async with self.client() as admin:
            return list((await admin.get("/v1/audit")).json())


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    key_file = tmp_path / "cluster.key"
    generate_key_file(key_file)
    box = SecretBox(key_file)
    store = await EmbeddedStore.open(str(tmp_path / "store.db"))
    await store.put(key("servers", "n1"), ServerRecord(name="n1", api_url="x").dump())
    await store.put(key("alive", "n1"), AliveRecord(started_at=0.0, pid=1).dump())
    commands = {"restore": "true", "remove": "true", "quick_check": "true"}
    sealed = {**commands, "password": box.seal(SECRET)}
    web = ResourceRecord(tag="web", kit="app", instances={"n1": 1}, properties=sealed)
    await store.put(key("resources", "web"), web.dump())
    await store.put(key("state", "n1", "web"), StateRecord(state=InstanceState.ISP).dump())
    cache = ClusterCache(store)
    await cache.reload()
    watch = asyncio.create_task(cache.run())
    runner = KitRunner(KitRegistry({"app": AppKit()}), "n1", tmp_path, ())
    runner.secrets = box
    tokens = TokensFile(
        token=[TokenEntry(name=f"{r}-script", role=r, token=t) for r, t in TOKENS.items()]  # type: ignore[arg-type]
    )
    from vigil.api.auth import Authenticator

    app = create_app(Operations(store, runner, "n1", cache), Authenticator(tokens))
    yield Api(app, store, box, key_file)
    await app.state.audit.flush()
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)
    await store.close()


async def test_a_change_and_a_refusal_are_audited_with_who_role_address_outcome(
    api: Api,
) -> None:
    async with api.client("guest") as guest:
        refused = await guest.post("/v1/hierarchies/web/out-of-service", json={"timeout": 1})
    assert refused.status_code == 403
    async with api.client(None) as nobody:
        assert (await nobody.get("/v1/status")).status_code == 401
    async with api.client() as admin:
        changed = await admin.patch("/v1/servers/n1/policies", json={"failover": False})
    assert changed.status_code == 200, changed.text
    entries = await api.audit()
    assert [(e["who"], e["role"], e["outcome"], e["status"]) for e in entries] == [
        ("guest-script", "guest", "not authorised", 403),
        ("(no valid credentials)", "-", "not authorised", 401),
        ("administrator-script", "administrator", "done", 200),
    ]
    assert all(e["address"] == "10.9.8.7" and e["server"] == "n1" for e in entries)
    assert entries[0]["what"] == "POST /v1/hierarchies/web/out-of-service (timeout=1)"
    assert "needs the operator role" in str(entries[0]["detail"])
    assert entries[2]["what"] == "PATCH /v1/servers/n1/policies (failover=false)"
    async with api.client("operator") as operator:
        assert (await operator.get("/v1/audit")).status_code == 403  # administrators only


async def test_the_audit_keeps_no_property_value_nor_secret(api: Api) -> None:
    body = (
        b'{"tag": "db", "kit": "app", "server": "n1", "properties": {"bind_password": "pw1",'
        b' "restore": "/opt/x"}, "password": "pw2", "timeout": 5}'
    )
    summary = summarize(body, "application/json")
    assert "pw1" not in summary and "pw2" not in summary and "/opt/x" not in summary
    assert "properties: [bind_password, restore]" in summary and "password=********" in summary
    assert summarize(b"user=ann&password=pw3", "application/x-www-form-urlencoded") == (
        "user, password=********"
    )
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert _login_user("/ui/login", b"user=ann&password=pw3", form) == "ann (web login)"
    assert _login_user("/v1/resources", b"user=ann", form) == "(no valid credentials)"
    async with api.client() as admin:
        await admin.post(
            "/v1/resources", content=body, headers={"content-type": "application/json"}
        )
    entries = await api.audit()
    assert entries and "pw1" not in str(entries) and TOKENS["administrator"] not in str(entries)


async def test_health_of_a_hierarchy_for_load_balancers(api: Api) -> None:
    async with api.client(None) as balancer:  # no token needed
        here = await balancer.get("/v1/health/hierarchy/web")
        assert here.status_code == 200, here.text
        assert here.json()["states"] == {"web": "ISP"}
        assert SECRET not in here.text and "password" not in here.text
        assert (await balancer.head("/v1/health/hierarchy/web")).status_code == 200
        assert (await balancer.get("/v1/health/hierarchy/nope")).status_code == 404
        old = await balancer.get("/v1/hierarchies/web/in-service-here")
        assert old.status_code == 200
        await api.store.put(
            key("state", "n1", "web"), StateRecord(state=InstanceState.ISU, reason="m").dump()
        )
        await asyncio.sleep(0.3)  # the agent's watch
        unprotected = await balancer.get("/v1/health/hierarchy/web")
        assert unprotected.status_code == 503  # in service but not protected
        assert (await balancer.head("/v1/health/hierarchy/web")).status_code == 503
        assert (await balancer.get("/v1/hierarchies/web/in-service-here")).status_code == 200


async def test_metrics_follow_ha_cluster_exporter_names(api: Api) -> None:
    async with api.client(None) as prometheus:
        answer = await prometheus.get("/metrics")
    assert answer.status_code == 200
    text = answer.text
    assert 'ha_cluster_vigil_nodes{node="n1",status="alive"} 1.0' in text
    assert (
        'ha_cluster_vigil_resources{agent="app",hierarchy="web",node="n1",resource="web",'
        'status="ISP"} 1.0'
    ) in text
    assert 'ha_cluster_vigil_hierarchies{hierarchy="web",node="n1",status="OSF"} 0.0' in text
    assert 'ha_cluster_scrape_success{collector="vigil"} 1.0' in text
    for name in (
        "ha_cluster_vigil_store_request_duration_seconds",
        "ha_cluster_vigil_lease_renewals_total",
        "ha_cluster_vigil_failovers_total",
        "ha_cluster_vigil_local_recoveries_total",
        "ha_cluster_vigil_check_duration_seconds",
        "ha_cluster_vigil_mirror_out_of_sync_bytes",
    ):
        assert f"# HELP {name}" in text
    assert SECRET not in text


async def test_rotation_reseals_every_secret_with_the_new_key(api: Api, tmp_path: Path) -> None:
    before = (await api.store.get(key("resources", "web"))).value  # type: ignore[union-attr]
    old_keys = api.box.fingerprints()
    new = add_key(api.key_file)  # every server gets this file (here: one agent)
    async with api.client() as admin:
        answer = await admin.post("/v1/secrets/rotate")
        assert answer.status_code == 200, answer.text
        done = answer.json()
        assert done["key"] == new and done["resealed"] == 1 and done["transactions"] == 1
        assert SECRET not in answer.text
        shown = (await admin.get("/v1/resources/web")).json()
        assert shown["properties"]["password"] == "********"
        keys = (await admin.get("/v1/secrets/keys")).json()["servers"]["n1"]["keys"]
        assert keys == [new, *old_keys]
    after = (await api.store.get(key("resources", "web"))).value  # type: ignore[union-attr]
    assert after != before and SECRET.encode() not in after and SEALED_PREFIX.encode() in after
    assert retire_keys(api.key_file) == old_keys
    stored = ResourceRecord.model_validate_json(after)
    assert SecretBox(api.key_file).open(str(stored.properties["password"])) == SECRET
    entries = await api.audit()
    assert entries[-1]["what"] == "POST /v1/secrets/rotate" and entries[-1]["outcome"] == "done"


async def test_rotation_is_refused_for_an_operator(api: Api) -> None:
    async with api.client("operator") as operator:
        answer = await operator.post("/v1/secrets/rotate")
    assert answer.status_code == 403
