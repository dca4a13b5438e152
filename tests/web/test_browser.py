"""The web UI in a real browser (Debian's Chromium, driven by playwright) against a lab of
three real agents: login per role, a guest sees no actions (and the API refuses anyway),
a switchover clicked in the UI moves the hierarchy, a change made by the CLI shows within
1 s without a reload, refusals show the API's message, keyboard navigation, the create and
extend wizards, properties and policies, a failover confirmed in the UI and its timeline,
a mirror's page following a pause and a continue clicked there (with the resync's
progress), and an accessibility scan (axe-core) of every page. Screenshots of every page
go to docs/screenshots/. The tests run in order and build on each other."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import Api, wait_for
from tests.integration.mirror_lab import TAG as MIRROR
from tests.integration.mirror_lab import MirrorLab
from tests.web.conftest import HTTPS_OPTIONS, Person, base_url, login, screenshot, vigil_cli
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab

pytestmark = pytest.mark.lab

AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"


def cell(page: Any, tag: str, server: str) -> Any:
    return page.locator(f'td.cell[data-tag="{tag}"][data-server="{server}"]').first


def wait_active(api: Api, tag: str, server: str) -> None:
    wait_for(lambda: api.instances(tag)[server]["state"] == "ISP", what=f"{tag} ISP on {server}")


@pytest.fixture(scope="module")
def api(lab: tuple[Lab, LabInfo]) -> Any:
    client = Api(lab[1])
    yield client
    client.close()


def test_login_is_refused_with_a_reason(
    browser: Any, lab: tuple[Lab, LabInfo], people: dict[str, Person]
) -> None:
    info = lab[1]
    context = browser.new_context(base_url=base_url(info), **HTTPS_OPTIONS)
    page = context.new_page()
    page.goto("/ui/login")
    screenshot(page, "login")
    page.fill("#user", people["operator"].user)
    page.fill("#password", "not-the-password")
    page.click("button[type=submit]")
    assert "wrong user name or password" in page.locator("#login-error").inner_text()
    nobody = people["none"]
    page.fill("#user", nobody.user)
    page.fill("#password", nobody.password)
    page.click("button[type=submit]")
    assert (
        "in none of the groups vigil-admin, vigil-oper, vigil-guest"
        in page.locator("#login-error").inner_text()
    )
    context.close()


@pytest.mark.parametrize("role", ["administrator", "operator", "guest"])
def test_each_role_logs_in_and_sees_what_it_may_do(
    browser: Any, lab: tuple[Lab, LabInfo], people: dict[str, Person], role: str
) -> None:
    page = login(browser, lab[1], people[role])
    assert f"({role})" in page.locator("header .who").inner_text()
    assert cell(page, "web", "node1").locator(".badge").inner_text() == "ISP"
    menus = page.locator(".menu-button").count()
    create = page.locator("nav a[href='/ui/create']").count()
    if role == "guest":
        assert menus == 0 and create == 0
        page.goto("/ui/hierarchies/web")
        assert page.locator("#actions-h").count() == 0
        assert page.locator("form.api").count() == 0
        screenshot(page, "hierarchy-guest")
    elif role == "operator":
        assert menus == 3 and create == 0
    else:
        assert menus == 3 and create == 1
        screenshot(page, "status")
    page.context.close()


def test_the_api_refuses_a_guest_whatever_the_page_shows(
    browser: Any, lab: tuple[Lab, LabInfo], people: dict[str, Person]
) -> None:
    page = login(browser, lab[1], people["guest"])
    answer = page.evaluate(
        """async () => {
            const csrf = document.querySelector('meta[name=csrf-token]').content;
            const r = await fetch('/v1/hierarchies/web/in-service', {method: 'POST',
                headers: {'content-type': 'application/json', 'x-csrf-token': csrf},
                body: JSON.stringify({server: 'node2'})});
            return [r.status, (await r.json()).error];
        }"""
    )
    assert answer[0] == 403
    assert "needs the operator role" in answer[1]
    page.context.close()


def test_a_switchover_clicked_in_the_ui_moves_the_hierarchy(
    browser: Any, lab: tuple[Lab, LabInfo], people: dict[str, Person], api: Api
) -> None:
    page = login(browser, lab[1], people["operator"])
    page.goto("/ui/hierarchies/web")
    page.select_option("#in-service-server", "node2")
    page.click("#in-service-button")
    page.wait_for_selector("#messages:has-text('web is in service on node2')", timeout=60_000)
    wait_active(api, "web", "node2")
    # the page followed by itself
    page.wait_for_selector('td.cell[data-tag="web"][data-server="node2"][data-state="ISP"]')
    page.wait_for_selector('td.cell[data-tag="web"][data-server="node1"][data-state="OSU"]')
    page.context.close()


def test_a_change_made_by_the_cli_shows_within_a_second(
    browser: Any, lab: tuple[Lab, LabInfo], people: dict[str, Person], api: Api
) -> None:
    info = lab[1]
    page = login(browser, info, people["guest"])
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    done = vigil_cli(info, "in-service", "web", "--on", "node1")
    assert done.returncode == 0, done.stderr
    returned = time.monotonic()
    page.wait_for_selector(
        'td.cell[data-tag="web"][data-server="node1"][data-state="ISP"][data-active="yes"]',
        timeout=1000,
    )
    shown = time.monotonic() - returned
    assert shown <= 1.0
    # pushed, not polled: the page asked for its fragment only after the stream said so
    fragments = [u for u in requests if "/ui/fragments/" in u]
    assert fragments, "the page did not refresh its status"
    page.context.close()


def test_a_refusal_shows_the_api_message(
    browser: Any, lab: tuple[Lab, LabInfo], people: dict[str, Person], api: Api
) -> None:
    expected = api.post("/v1/dependencies", {"parent": "web", "child": "web"}).json()["error"]
    page = login(browser, lab[1], people["administrator"])
    page.goto("/ui/hierarchies/web")
    page.select_option("#dep-parent", "web")
    page.select_option("#dep-child", "web")
    page.click("text=Add dependency")
    page.wait_for_selector("#alerts .message.error")
    assert expected in page.locator("#alerts").inner_text()
    page.context.close()


def test_keyboard_navigation(
    browser: Any, lab: tuple[Lab, LabInfo], people: dict[str, Person]
) -> None:
    page = login(browser, lab[1], people["operator"])
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    for _ in range(40):
        page.keyboard.press("Tab")
        if "menu-button" in page.evaluate("document.activeElement.className"):
            break
    else:
        pytest.fail("no actions button reachable with Tab")
    opener = page.evaluate("document.activeElement.id")
    page.keyboard.press("Enter")
    assert page.locator("#menu").is_visible()
    first = page.evaluate("document.activeElement.textContent")
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.getAttribute('role')") == "menuitem"
    assert page.evaluate("document.activeElement.textContent") != first
    page.keyboard.press("Escape")
    assert not page.locator("#menu").is_visible()
    assert page.evaluate("document.activeElement.id") == opener
    page.keyboard.press("Shift+F10")  # the context-menu key on the same cell
    assert page.locator("#menu").is_visible()
    screenshot(page, "instance-menu")
    page.keyboard.press("Escape")
    page.context.close()


def test_the_instance_menu_switches_over(
    browser: Any, lab: tuple[Lab, LabInfo], people: dict[str, Person], api: Api
) -> None:
    page = login(browser, lab[1], people["operator"])
    cell(page, "web", "node3").click(button="right")
    page.click("#menu >> text=Bring web in service on node3")
    page.wait_for_selector("#messages:has-text('web is in service on node3')", timeout=60_000)
    wait_active(api, "web", "node3")
    assert vigil_cli(lab[1], "in-service", "web", "--on", "node1").returncode == 0
    page.context.close()


def test_create_and_extend_wizards(
    browser: Any, lab: tuple[Lab, LabInfo], people: dict[str, Person], api: Api
) -> None:
    """An ip resource created with the schema-driven wizard, then extended to node2 with
    the values node2's agent proposes (its interface)."""
    info = lab[1]
    page = login(browser, info, people["administrator"])
    page.click("nav >> text=Create hierarchy")
    page.select_option("#kit", "ip")
    page.wait_for_selector("#k-address")
    page.fill("#create-tag", "vip")
    page.select_option("#create-server", "node1")
    page.fill("#k-address", info.server("node1").address.rsplit(".", 1)[0] + ".100")
    page.fill("#k-prefix", "24")
    page.fill("#k-interface", "eth0")
    screenshot(page, "create-wizard")
    page.click("#create-form button[type=submit]")
    page.wait_for_url("**/ui/hierarchies/vip", timeout=60_000)
    wait_active(api, "vip", "node1")
    page.goto("/ui/hierarchies/vip/extend")
    page.select_option("#extend-server", "node2")
    page.wait_for_selector("#extend-problems:has-text('found no problem')", timeout=30_000)
    assert page.input_value("#x-vip-interface") == "eth0"  # proposed by node2's agent
    screenshot(page, "extend-wizard")
    page.click("#extend-form button[type=submit]")
    page.wait_for_url("**/ui/hierarchies/vip", timeout=60_000)
    wait_for(lambda: api.instances("vip").get("node2", {}).get("state") == "OSU", what="vip OSU")
    assert api.instances("vip")["node2"]["priority"] == 10
    page.context.close()


def test_properties_and_policies(
    browser: Any, lab: tuple[Lab, LabInfo], people: dict[str, Person], api: Api
) -> None:
    page = login(browser, lab[1], people["administrator"])
    page.goto("/ui/resources/web")
    page.fill("#pol-recovery_limit", "5")
    page.click("text=Save policies")
    page.wait_for_selector("#messages .message.ok")
    assert api.ok("GET", "/v1/resources/web")["policies"]["recovery_limit"] == 5
    page.fill("#p-quick_check", api.ok("GET", "/v1/resources/web")["properties"]["quick_check"])
    screenshot(page, "resource")
    page.goto("/ui/servers/node2")
    page.check("#spol-confirm_failover")
    page.click("text=Save policies")
    page.wait_for_selector("#messages .message.ok")
    assert api.ok("GET", "/v1/servers/node2/policies")["confirm_failover"] is True
    screenshot(page, "server")
    page.goto("/ui/what-if")
    page.select_option("#what-if-server", "node1")
    page.wait_for_selector("#what-if-live >> text=web")
    screenshot(page, "what-if")
    page.goto("/ui/events")
    screenshot(page, "events")
    page.context.close()


def test_a_failover_confirmed_in_the_ui_and_its_timeline(
    browser: Any, lab: tuple[Lab, LabInfo], people: dict[str, Person], api: Api
) -> None:
    """node1 dies with web in service there; node2 asks an operator (confirm_failover, set
    in the previous test); the operator confirms in node2's UI; the timeline shows it."""
    built, info = lab
    page = login(browser, info, people["operator"], server="node2")
    page.goto("/ui/hierarchies/web")
    built.stop_agent("node1", signal.SIGKILL)
    try:
        page.wait_for_selector("#confirm-yes", timeout=30_000)  # shown live
        screenshot(page, "failover-confirm")
        page.click("#confirm-yes")
        page.wait_for_selector(
            'td.cell[data-tag="web"][data-server="node2"][data-state="ISP"]', timeout=60_000
        )
        page.wait_for_selector("#why-live table.timeline", timeout=10_000)
        text = page.locator("#why-live table.timeline").first.inner_text()
        assert "detected" in text and "in service on node2" in text
        screenshot(page, "hierarchy-failover")
    finally:
        built.start_agent("node1")
    page.context.close()


def copy_in(page: Any, server: str, state: str, timeout: float = 10_000) -> None:
    """Wait until the mirror page shows ``server``'s copy in ``state``."""
    page.wait_for_selector(
        f'tr.copy[data-server="{server}"][data-state="{state}"]', timeout=timeout
    )


def test_the_mirror_page_follows_a_pause_and_a_continue(
    browser: Any, lab: tuple[Lab, LabInfo], people: dict[str, Person], mirror: MirrorLab
) -> None:
    """An operator opens the mirror's page from its hierarchy, pauses node2 (Paused shows
    by itself, and the bytes written meanwhile), continues it (the partial resync's
    progress shows, then Mirroring again, and the resync in the history)."""
    page = login(browser, lab[1], people["operator"])
    page.goto(f"/ui/hierarchies/{MIRROR}")
    page.click(f"text=Mirror: {MIRROR}")
    page.wait_for_url(f"**/ui/mirror/{MIRROR}")
    copy_in(page, "node1", "Source")
    copy_in(page, "node2", "Mirroring")
    page.wait_for_selector('tr.resync[data-kind="full"][data-target="node2"]')
    page.click("#mirror-pause-node2")
    page.wait_for_selector("#messages:has-text('node2 is Paused; writes are tracked')")
    copy_in(page, "node2", "Paused")
    mirror.write("node1", "while-paused", 12)
    behind = 'tr.copy[data-server="node2"] td.bytes'
    page.wait_for_selector(f"{behind}:has-text('MiB')")  # polled: not in the store
    page.wait_for_selector('tr.copy[data-server="node2"] td.take-over[data-eligible="no"]')
    page.click("#mirror-continue-node2")
    page.wait_for_selector("#messages:has-text('a partial resync follows')")
    copy_in(page, "node2", "Resynchronizing")
    page.wait_for_selector('tr.copy[data-server="node2"] progress', timeout=5_000)
    screenshot(page, "mirror")
    copy_in(page, "node2", "Mirroring", timeout=60_000)
    page.wait_for_selector('tr.resync[data-kind="partial"][data-target="node2"]')
    assert page.locator(f"{behind}").inner_text().strip() == "0 B"
    page.context.close()


def test_a_guest_sees_the_mirror_but_no_action(
    browser: Any, lab: tuple[Lab, LabInfo], people: dict[str, Person], mirror: MirrorLab
) -> None:
    page = login(browser, lab[1], people["guest"])
    page.goto(f"/ui/mirror/{MIRROR}")
    copy_in(page, "node2", "Mirroring")
    assert page.locator("#mirror-actions-h").count() == 0
    assert page.locator("form.api").count() == 0
    answer = page.evaluate(
        """async (path) => {
            const csrf = document.querySelector('meta[name=csrf-token]').content;
            const r = await fetch(path, {method: 'POST',
                headers: {'content-type': 'application/json', 'x-csrf-token': csrf},
                body: JSON.stringify({target: 'node2'})});
            return [r.status, (await r.json()).error];
        }""",
        f"/v1/mirror/{MIRROR}/pause",
    )
    assert answer[0] == 403 and "needs the operator role" in answer[1], answer
    page.context.close()


PAGES = [
    "/ui/",
    "/ui/hierarchies/web",
    "/ui/hierarchies/web/extend",
    "/ui/resources/web",
    "/ui/servers/node1",
    "/ui/events",
    "/ui/what-if",
    "/ui/create?kit=mail",
    f"/ui/mirror/{MIRROR}",
]


def test_no_serious_accessibility_violation(
    browser: Any, lab: tuple[Lab, LabInfo], people: dict[str, Person], mirror: MirrorLab
) -> None:
    """axe-core on every page (and the login page): nothing serious or critical."""
    info = lab[1]
    context = browser.new_context(
        base_url=base_url(info), bypass_csp=True, **HTTPS_OPTIONS
    )  # to inject axe
    page = context.new_page()
    found = {}
    page.goto("/ui/login")
    found["/ui/login"] = _axe(page)
    page.fill("#user", people["administrator"].user)
    page.fill("#password", people["administrator"].password)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/")
    for path in PAGES:
        page.goto(path)
        page.wait_for_load_state("networkidle")
        found[path] = _axe(page)
    bad = {path: v for path, v in found.items() if v}
    assert not bad, bad
    context.close()


def _axe(page: Any) -> list[str]:
    # no fragment swapped in while axe looks (the mirror page polls every second)
    page.evaluate("document.body.addEventListener('htmx:beforeRequest', (e) => e.preventDefault())")
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document)")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
