"""Bad input gets a message that names the problem, and changes nothing.

Each request below is refused with the right HTTP status and a message naming what is
wrong; the cluster's configuration (paths, resources, dependencies, priorities,
properties, where each hierarchy is wanted) is the same after it as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration.helpers import Api, service_commands
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab() -> Iterator[LabInfo]:
    lab = Lab("itbad", subnet_index=22)
    lab.down()
    try:
        info = lab.up(3)
        api = Api(info)
        one, two = info.server("node1"), info.server("node2")
        api.ok(
            "POST",
            "/v1/commpaths",
            {
                "local": "node1",
                "local_address": one.address,
                "remote": "node2",
                "remote_address": two.address,
            },
        )
        for tag, port in (("web", 8080), ("db", 8081)):
            body = {
                "tag": tag,
                "kit": "app",
                "server": "node1",
                "properties": service_commands(port),
            }
            api.ok("POST", "/v1/resources", body)
            api.ok("POST", f"/v1/hierarchies/{tag}/extend", {"server": "node2"})
        api.ok("POST", "/v1/dependencies", {"parent": "web", "child": "db"})
        api.close()
        yield info
    finally:
        lab.down()


def _create(tag: str, kit: str = "app", server: str = "node1") -> dict[str, Any]:
    return {"tag": tag, "kit": kit, "server": server, "properties": service_commands(8090)}


@dataclass(frozen=True)
class Case:
    """A refused request: who sends it, what, and what the answer must say."""

    name: str
    role: str
    method: str
    path: str
    body: Any
    status: int
    words: list[str]


ADMIN, EXTEND, CREATE = "administrator", "/v1/hierarchies/web/extend", "/v1/resources"
CASES = [
    Case(
        "unknown server",
        ADMIN,
        "POST",
        CREATE,
        _create("x", server="node9"),
        404,
        ["unknown server", "node9"],
    ),
    Case(
        "unknown kit",
        ADMIN,
        "POST",
        CREATE,
        _create("x", kit="nope"),
        400,
        ["unknown kit 'nope'", "app"],
    ),
    Case("duplicate tag", ADMIN, "POST", CREATE, _create("web"), 400, ["'web'", "already used"]),
    Case("tag with spaces", ADMIN, "POST", CREATE, _create("my web"), 400, ["whitespace"]),
    Case(
        "tag too long",
        ADMIN,
        "POST",
        CREATE,
        _create("t" * 65),
        400,
        ["65 characters", "at most 64"],
    ),
    Case(
        "priority 0",
        ADMIN,
        "POST",
        EXTEND,
        {"server": "node3", "priority": 0},
        400,
        ["priority 0", "1"],
    ),
    Case(
        "priority 1000",
        ADMIN,
        "POST",
        EXTEND,
        {"server": "node3", "priority": 1000},
        400,
        ["priority 1000", "999"],
    ),
    Case(
        "priority used",
        ADMIN,
        "POST",
        EXTEND,
        {"server": "node3", "priority": 10},
        409,
        ["priority 10", "already used by node2"],
    ),
    Case(
        "dependency cycle",
        ADMIN,
        "POST",
        "/v1/dependencies",
        {"parent": "db", "child": "web"},
        409,
        ["cycle", "db -> web -> db"],
    ),
    Case(
        "extend without comm path",
        ADMIN,
        "POST",
        EXTEND,
        {"server": "node3"},
        409,
        ["no comm path", "node3"],
    ),
    Case(
        "unextend where in service",
        ADMIN,
        "POST",
        "/v1/hierarchies/web/unextend",
        {"server": "node1"},
        409,
        ["in service on node1"],
    ),
    Case(
        "delete a needed resource",
        ADMIN,
        "DELETE",
        "/v1/hierarchies/db",
        None,
        409,
        ["db is needed by web"],
    ),
    Case(
        "operator doing admin work",
        "operator",
        "POST",
        CREATE,
        _create("x"),
        403,
        ["operator", "administrator role"],
    ),
    Case(
        "guest switching over",
        "guest",
        "POST",
        "/v1/hierarchies/web/in-service",
        {"server": "node2"},
        403,
        ["guest", "operator role"],
    ),
    Case(
        "unknown resource",
        ADMIN,
        "POST",
        "/v1/hierarchies/nope/in-service",
        {"server": "node2"},
        404,
        ["'nope'"],
    ),
    Case("unknown field", ADMIN, "POST", EXTEND, {"server": "node3", "prio": 5}, 422, ["prio"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused_and_nothing_changed(lab: LabInfo, case: Case) -> None:
    role, method, path, body = case.role, case.method, case.path, case.body
    expected, words = case.status, case.words
    admin, caller = Api(lab), Api(lab, role=role)
    try:
        before = admin.configuration()
        answer = caller.client.request(method, path, json=body)
        assert answer.status_code == expected, answer.text
        message = answer.json()["error"]
        for word in words:
            assert word in message, f"{word!r} not in {message!r}"
        assert admin.configuration() == before
    finally:
        admin.close()
        caller.close()


def test_request_without_a_token_is_refused(lab: LabInfo) -> None:
    verify = lab.ssl_context()
    answer = httpx.post(
        f"{lab.url}/v1/resources", json=_create("x"), trust_env=False, verify=verify
    )
    assert answer.status_code == 401
    assert "no token" in answer.json()["error"]
    wrong = httpx.get(
        f"{lab.url}/v1/status",
        headers={"authorization": "Bearer nope-nope-nope-nope"},
        trust_env=False,
        verify=verify,
    )
    assert wrong.status_code == 401


def test_malformed_json_body_is_refused(lab: LabInfo) -> None:
    admin = Api(lab)
    try:
        before = admin.configuration()
        answer = admin.client.post(
            "/v1/resources", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert answer.status_code == 422
        assert "malformed request" in answer.json()["error"]
        assert admin.configuration() == before
    finally:
        admin.close()


def test_the_cli_reports_a_refusal_with_exit_code_2(lab: LabInfo) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "VIGIL_CLIENT_CONFIG": str(lab.client_file)}
    done = subprocess.run(
        [sys.executable, "-m", "vigil", "extend", "web", "--to", "node2", "--priority", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "priority" in done.stderr
