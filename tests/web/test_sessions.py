"""The web UI without a browser: PAM login with real operating-system users, sessions and
their CSRF token on the API, tokens still working, the live stream's first notice, the
vendored htmx, the mail and mirror pages, and the pure parts (form fields from a kit's
schema, failover timelines, a mirror's copies and resync history).
The app runs over httpx's ASGI transport on a real embedded store."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.web.conftest import Person
from vigil.agent.cache import ClusterCache
from vigil.agent.config import TokenEntry, TokensFile, WebSettings
from vigil.agent.kitrunner import KitRunner
from vigil.agent.operations import Operations
from vigil.api.app import create_app
from vigil.api.auth import Authenticator
from vigil.api.sessions import COOKIE, SESSIONS_PREFIX
from vigil.kits.registry import load_kits
from vigil.model.records import ResourceRecord, ServerRecord, key
from vigil.store.base import Store
from vigil.store.embedded import EmbeddedStore
from vigil.web.forms import kit_fields
from vigil.web.live import end_streams
from vigil.web.mirrorpage import copies, history
from vigil.web.timeline import failover_timelines

TOKEN = "web-test-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await EmbeddedStore.open(str(tmp_path / "store.db"))
    await opened.put(key("servers", "n1"), ServerRecord(name="n1", api_url="http://n1").dump())
    yield opened
    await opened.close()


@pytest.fixture
async def app(store: Store, tmp_path: Path) -> AsyncIterator[Any]:
    cache = ClusterCache(store)
    await cache.reload()
    watch = asyncio.create_task(cache.run())
    runner = KitRunner(load_kits(), "n1", tmp_path, ())
    tokens = TokensFile(token=[TokenEntry(name="script", role="operator", token=TOKEN)])
    made = create_app(Operations(store, runner, "n1", cache), Authenticator(tokens))
    made.state.web = WebSettings(session_timeout=60)
    yield made
    end_streams(made)
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def log_in(browser: httpx.AsyncClient, person: Person) -> httpx.Response:
    form = await browser.get("/ui/login")
    token = form.text.split('name="token" value="', 1)[1].split('"', 1)[0]
    data = {"user": person.user, "password": person.password, "token": token, "next": "/ui/"}
    return await browser.post("/ui/login", data=data)


async def test_login_sets_a_safe_cookie_and_the_session_is_in_the_store(
    app: Any, store: Store, people: dict[str, Person]
) -> None:
    async with client(app) as browser:
        answer = await log_in(browser, people["operator"])
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/"
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Secure" not in cookie  # plain HTTP here; under TLS it is set
        me = (await browser.get("/v1/whoami")).json()
        assert me == {"name": people["operator"].user, "role": "operator", "server": "n1"}
        session_id = browser.cookies[COOKIE]
        stored = await store.get(SESSIONS_PREFIX + hashlib.sha256(session_id.encode()).hexdigest())
        assert stored is not None and session_id.encode() not in stored.value


async def test_wrong_password_and_no_group_are_refused(app: Any, people: dict[str, Person]) -> None:
    async with client(app) as browser:
        wrong = Person("operator", people["operator"].user, "wrong-password")
        answer = await log_in(browser, wrong)
        assert answer.status_code == 401 and "wrong user name or password" in answer.text
        answer = await log_in(browser, people["none"])
        assert answer.status_code == 401 and "in none of the groups" in answer.text
        assert (await browser.get("/v1/whoami")).status_code == 401


async def test_a_change_needs_the_csrf_token_and_a_token_needs_none(
    app: Any, people: dict[str, Person]
) -> None:
    async with client(app) as browser:
        await log_in(browser, people["administrator"])
        page = (await browser.get("/ui/")).text
        csrf = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        body = {"parent": "a", "child": "b"}
        without = await browser.post("/v1/dependencies", json=body)
        assert without.status_code == 403 and "CSRF" in without.json()["error"]
        forged = await browser.post("/v1/dependencies", json=body, headers={"x-csrf-token": "x"})
        assert forged.status_code == 403
        allowed = await browser.post("/v1/dependencies", json=body, headers={"x-csrf-token": csrf})
        assert allowed.status_code == 404  # past authentication: the engine's refusal
    async with client(app) as script:
        answer = await script.post(
            "/v1/dependencies", json=body, headers={"authorization": f"Bearer {TOKEN}"}
        )
        assert answer.status_code == 403 and "needs the administrator role" in answer.text


async def test_logout_ends_the_session_everywhere(app: Any, people: dict[str, Person]) -> None:
    async with client(app) as browser:
        await log_in(browser, people["guest"])
        page = (await browser.get("/ui/")).text
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        session_id = browser.cookies[COOKIE]
        await browser.post("/ui/logout", data={"csrf": csrf})
    async with client(app) as stale:
        stale.cookies.set(COOKIE, session_id)
        assert (await stale.get("/v1/whoami")).status_code == 401
        assert (await stale.get("/ui/")).headers["location"].startswith("/ui/login")


async def test_pages_carry_a_strict_content_security_policy(
    app: Any, people: dict[str, Person]
) -> None:
    async with client(app) as browser:
        await log_in(browser, people["guest"])
        answer = await browser.get("/ui/")
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert "<script>" not in answer.text  # no inline script
        assert (await browser.get("/ui/static/../render.py")).status_code == 404


def test_the_vendored_htmx_is_the_released_file() -> None:
    released = ROOT / "tests/web/node_modules/htmx.org/dist/htmx.min.js"
    if not released.exists():
        pytest.skip("tests/web's npm packages are not installed (scripts/setup.sh test)")
    vendored = ROOT / "src/vigil/web/static/vendor/htmx.min.js"
    assert vendored.read_bytes() == released.read_bytes()
    assert (ROOT / "src/vigil/web/static/vendor/htmx.LICENSE").exists()


def test_form_fields_come_from_the_kit_schema() -> None:
    kits = load_kits()
    fields = {f.name: f for f in kit_fields(kits.get("ip").describe())}
    assert fields["address"].required and fields["address"].unique
    assert fields["interface"].per_server and fields["prefix"].kind == "int"
    dns = {f.name: f for f in kit_fields(kits.get("dns").describe())}
    assert dns["tsig_secret"].secret and dns["tsig_algorithm"].kind == "choice"
    assert dns["servers"].kind == "lines"


def test_a_failover_timeline_is_timed_step_by_step() -> None:
    events = [
        {"at": 100.0, "server": "n2", "kind": "server-down", "message":
         "n1 is down: its heartbeat did not advance for 1.50s by n2's clock", "hierarchy": None},
        {"at": 100.2, "server": "n2", "kind": "failover-started", "message": "failing web over",
         "hierarchy": "web"},
        {"at": 100.3, "server": "n2", "kind": "restore-started", "message": "", "hierarchy": "web"},
        {"at": 101.0, "server": "n2", "kind": "restored", "message": "", "hierarchy": "web"},
    ]  # fmt: skip
    states = {"web": {"server": "n2", "state": "ISP", "since": 100.9}}
    [timeline] = failover_timelines(events, states)
    assert [round(s.offset, 2) for s in timeline.steps] == [0.0, 1.5, 1.7, 1.8, 2.4, 2.5]
    assert timeline.steps[0].label == "last heartbeat of the dead server"
    assert timeline.steps[4].label == "web in service (ISP)"
    assert timeline.ok and round(timeline.total, 2) == 2.5


async def test_the_mail_page_reads_the_mail_api(
    app: Any, store: Store, people: dict[str, Person]
) -> None:
    """A mail hierarchy's page asks the mail API for the failed-users log and the services
    (the browser tests' lab has no mail organisation; tests/integration covers the API)."""
    record = ResourceRecord(tag="mail", kit="mail", instances={"n1": 1})
    await store.put(key("resources", "mail"), record.dump())
    async with client(app) as browser:
        await log_in(browser, people["guest"])
        page = await browser.get("/ui/mail/mail")
        assert page.status_code == 200
        assert 'data-api-get="/v1/mail/mail/failed-users"' in page.text
        assert 'data-api-get="/v1/mail/mail/services"' in page.text
        assert (await browser.get("/ui/mail/nothing")).status_code == 404


async def test_the_mirror_page_reads_the_mirror_api(
    app: Any, store: Store, people: dict[str, Person]
) -> None:
    """A mirror's page shows what ``GET /v1/mirror/{tag}`` says (here: no copy set up, in
    service nowhere: no action), polls it, and refuses a resource of another kit (the
    browser tests run a real mirror)."""
    await store.put(
        key("resources", "data"),
        ResourceRecord(tag="data", kit="mirror", instances={"n1": 1}).dump(),
    )
    await store.put(
        key("resources", "site"), ResourceRecord(tag="site", kit="app", instances={"n1": 1}).dump()
    )
    async with client(app) as browser:
        await log_in(browser, people["operator"])
        page = await browser.get("/ui/mirror/data")
        assert page.status_code == 200
        assert 'hx-get="/ui/fragments/mirror/data" hx-trigger="every 1s' in page.text
        assert "No source runs: data is in service nowhere" in page.text
        assert 'data-server="n1" data-state="unknown"' in page.text
        fragment = await browser.get("/ui/fragments/mirror/data")
        assert fragment.status_code == 200 and "No resync yet." in fragment.text
        other = await browser.get("/ui/mirror/site")
        assert other.status_code == 404 and "not a mirror" in other.text
        assert (await browser.get("/ui/mirror/nothing")).status_code == 404
        gone = await browser.get("/ui/fragments/mirror/nothing")  # deleted while open
        assert gone.status_code == 200 and "no resource is tagged" in gone.text


def test_mirror_copies_and_history_from_the_api_status() -> None:
    split = {"source": "n1", "ancestor": "g1", "source_regions": -1, "target_regions": 3, "at": 5.0}
    progress = {"kind": "partial", "regions": 40, "done": 10, "percent": 25.0, "mb_per_s": 4.0,
                "eta_s": 75.4}  # fmt: skip
    resync = {"target": "n2", "kind": "full", "regions": 32, "bytes": 2**25, "seconds": 8.0}
    status = {
        "tag": "data", "mode": "sync", "source": "n1",
        "targets": {"n2": {"state": "Resynchronizing", "dirty_bytes": 2**20, "since": 9.0,
                           "progress": progress, "split_brain": False},
                    "n3": {"state": "Resync Pending", "dirty_bytes": 0, "split_brain": True}},
        "servers": [
            {"server": "n1", "priority": 1, "role": "source", "state": "Mirroring", "reason": "",
             "eligible": True, "eligibility": "the source", "view": {"resyncs": [
                 {**resync, "at": 1.0}, {**resync, "target": "n3", "at": 2.0}]}},
            {"server": "n2", "priority": 10, "role": "target", "state": "Resynchronizing",
             "reason": "copying", "eligible": False, "eligibility": "not in sync", "view": {}},
            {"server": "n3", "priority": 20, "role": "target", "state": "Resync Pending",
             "reason": "", "eligible": None, "eligibility": "",
             "view": {"split_brain": split, "resyncs": [{**resync, "target": "n1", "at": 0.5}]}},
        ],
        "resyncs": [{**resync, "at": 2.0, "target": "n3"}],
    }  # fmt: skip
    source, n2, n3 = copies(status)
    assert (source.state, source.out_of_sync) == ("Source", None)
    assert n2.progress is not None and n2.progress.eta == "1 min 15 s"
    assert (n2.out_of_sync, n2.split_brain) == (2**20, False)
    assert n3.split_brain and n3.split is not None and n3.split.source_regions == -1
    assert [(r["by"], r["target"], r["at"]) for r in history(status)] == [
        ("n1", "n3", 2.0), ("n1", "n2", 1.0), ("n3", "n1", 0.5)
    ]  # fmt: skip
