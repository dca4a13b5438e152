"""Fixtures of the web UI's tests: real operating-system users and groups (created with
useradd/groupadd, removed afterwards), a lab of three servers with comm paths and a
hierarchy, a mirror on that lab, and Debian's Chromium driven by Python's playwright
(launched by path: nothing downloaded)."""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import Api, service_commands, wait_for
from tests.integration.mirror_lab import MirrorLab
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab

CHROMIUM = "/usr/bin/chromium"
GROUPS = {"administrator": "vigil-admin", "operator": "vigil-oper", "guest": "vigil-guest"}
#: user name per role; "nobody" is in none of the groups
USERS = {"administrator": "vwadmin", "operator": "vwoper", "guest": "vwguest", "none": "vwnobody"}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SERVICE_PORT = 8090
#: the mirror's disk on each server (MiB), the most MB/s its link carries and its queue
#: (MiB): the initial synchronization takes about 8 s, and a resync of a few MiB lasts a few
#: seconds, its progress (the regions the source queued for the link, at most half the
#: queue ahead of what was sent) moving at the link's pace for the page to show
MIRROR_DISK_MB = 32
MIRROR_MBPS = 4.0
MIRROR_QUEUE_MB = 4


@dataclass(frozen=True)
class Person:
    role: str
    user: str
    password: str


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def _exists(kind: str, name: str) -> bool:
    try:
        (grp.getgrnam if kind == "group" else pwd.getpwnam)(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="session")
def people() -> Iterator[dict[str, Person]]:
    """A user per role (and one in no vigil group), with random passwords."""
    if os.geteuid() != 0:
        pytest.skip("creating operating-system users needs root")
    made_groups = [g for g in GROUPS.values() if not _exists("group", g)]
    for group in made_groups:
        _run("groupadd", group)
    made_users = []
    found: dict[str, Person] = {}
    try:
        for role, user in USERS.items():
            if _exists("user", user):
                _run("userdel", "-r", user)
            password = secrets.token_urlsafe(12)
            extra = ["-G", GROUPS[role]] if role in GROUPS else []
            _run("useradd", "-M", "-s", "/usr/sbin/nologin", *extra, user)
            made_users.append(user)
            subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True)
            found[role] = Person(role, user, password)
        yield found
    finally:
        for user in made_users:
            subprocess.run(["userdel", user], capture_output=True, check=False)
        for group in made_groups:
            subprocess.run(["groupdel", group], capture_output=True, check=False)


def vigil_cli(info: LabInfo, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VIGIL_CLIENT_CONFIG": str(info.client_file)}
    env.pop("VIGIL_URL", None)
    env.pop("VIGIL_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "vigil", *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabInfo]]:
    """Three servers, a comm path between each pair, and the hierarchy ``web`` (the sample
    HTTP service) in service on node1, extended to node2 and node3."""
    built = Lab("tweb", subnet_index=80)
    built.down()
    try:
        info = built.up(3)
        for one, other in (("node1", "node2"), ("node1", "node3"), ("node2", "node3")):
            done = vigil_cli(
                info, "commpath", "create",
                "--local", one, "--local-address", info.server(one).address,
                "--remote", other, "--remote-address", info.server(other).address,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        api = Api(info)
        try:
            body = {"tag": "web", "kit": "app", "server": "node1"}
            body["properties"] = service_commands(SERVICE_PORT)  # type: ignore[assignment]
            api.ok("POST", "/v1/resources", body)
            api.ok("POST", "/v1/hierarchies/web/extend", {"server": "node2"})
            api.ok("POST", "/v1/hierarchies/web/extend", {"server": "node3", "priority": 20})
            wait_for(
                lambda: all(i["state"] in ("ISP", "OSU") for i in api.instances("web").values()),
                what="web ISP on node1, OSU elsewhere",
            )
        finally:
            api.close()
        yield built, info
    finally:
        built.down()


@pytest.fixture(scope="module")
def mirror(lab: tuple[Lab, LabInfo]) -> Iterator[MirrorLab]:
    """The mirror ``data`` on the web lab (as tests/integration's mirror tests make it):
    every server its own disk, created on node1 and in service there, extended to node2,
    Mirroring after its initial full synchronization; deleted afterwards."""
    built, info = lab
    disks = {s: d.device for s, d in built.add_local_disks(MIRROR_DISK_MB).items()}
    made = MirrorLab(built, info, Api(info), disks)
    try:
        made.create(bandwidth_mbps=MIRROR_MBPS, async_queue_mb=MIRROR_QUEUE_MB)
        made.extend("node2")
        made.wait_mirroring("node2")
        yield made
    finally:
        try:
            made.delete()
        finally:
            made.api.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one module: playwright's sync API holds an event loop in this thread
    while it runs, which the asyncio tests of the next module must not meet."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (scripts/setup.sh test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-quic",
                "--no-first-run", "--no-proxy-server",
            ],
        )  # fmt: skip
        try:
            yield launched
        finally:
            launched.close()  # playwright made it a fresh profile, and removes it


#: the lab's agents serve HTTPS with certificates of the lab's own CA, which Chromium does
#: not know (its trust store is not the lab's); the Secure cookie flag is exercised
HTTPS_OPTIONS: dict[str, Any] = {"ignore_https_errors": True}


def base_url(info: LabInfo, server: str = "node1") -> str:
    return info.server(server).api_url


def login(browser: Any, info: LabInfo, person: Person, server: str = "node1") -> Any:
    """A new browser context (its own cookies) logged in as ``person``; returns its page."""
    viewport = {"width": 1280, "height": 900}
    context = browser.new_context(
        base_url=base_url(info, server), viewport=viewport, **HTTPS_OPTIONS
    )
    page = context.new_page()
    page.goto("/ui/")
    assert "/ui/login" in page.url
    page.fill("#user", person.user)
    page.fill("#password", person.password)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/")
    page.wait_for_selector("#live-state:has-text('live')")
    return page


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
