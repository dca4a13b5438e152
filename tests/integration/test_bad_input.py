"""Bad input gets a message that names the problem, and changes nothing.

Each request below is refused with the right HTTP status and a message naming what is
wrong; the cluster's configuration (paths, resources, dependencies, priorities,
properties, where each hierarchy is wanted) is the same after it as before.
"""

from __future__ import annotations

from collections.abc import Iterator
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


# (name, role, method, path, body, expected status, words the message must contain)
CASES: list[tuple[str, str, str, str, Any, int, list[str]]] = [
    ("unknown server", "administrator", "POST", "/v1/resources", _create("x", server="node9"), 404, ["unknown server", "node9"]),
    ("unknown kit", "administrator", "POST", "/v1/resources", _create("x", kit="nope"), 400, ["unknown kit 'nope'", "app"]),
    ("duplicate tag", "administrator", "POST", "/v1/resources", _create("web"), 400, ["'web'", "already used"]),
    ("tag with spaces", "administrator", "POST", "/v1/resources", _create("my web"), 400, ["whitespace"]),
    ("tag too long", "administrator", "POST", "/v1/resources", _create("t" * 65), 400, ["65 characters", "at most 64"]),
    ("priority 0", "administrator", "POST", "/v1/hierarchies/web/extend", {"server": "node3", "priority": 0}, 400, ["priority 0", "1"]),
    ("priority 1000", "administrator", "POST", "/v1/hierarchies/web/extend", {"server": "node3", "priority": 1000}, 400, ["priority 1000", "999"]),
    ("priority used", "administrator", "POST", "/v1/hierarchies/web/extend", {"server": "node3", "priority": 10}, 409, ["priority 10", "already used by node2"]),
    ("dependency cycle", "administrator", "POST", "/v1/dependencies", {"parent": "db", "child": "web"}, 409, ["cycle", "db -> web -> db"]),
    ("extend without comm path", "administrator", "POST", "/v1/hierarchies/web/extend", {"server": "node3"}, 409, ["no comm path", "node3"]),
    ("unextend where in service", "administrator", "POST", "/v1/hierarchies/web/unextend", {"server": "node1"}, 409, ["in service on node1"]),
    ("delete a needed resource", "administrator", "DELETE", "/v1/hierarchies/db", None, 409, ["db is needed by web"]),
    ("operator doing admin work", "operator", "POST", "/v1/resources", _create("x"), 403, ["operator", "administrator role"]),
    ("guest switching over", "guest", "POST", "/v1/hierarchies/web/in-service", {"server": "node2"}, 403, ["guest", "operator role"]),
    ("unknown resource", "administrator", "POST", "/v1/hierarchies/nope/in-service", {"server": "node2"}, 404, ["'nope'"]),
    ("unknown field", "administrator", "POST", "/v1/hierarchies/web/extend", {"server": "node3", "prio": 5}, 422, ["prio"]),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_refused_and_nothing_changed(
    lab: LabInfo, case: tuple[str, str, str, str, Any, int, list[str]]
) -> None:
    _, role, method, path, body, expected, words = case
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
    answer = httpx.post(f"{lab.url}/v1/resources", json=_create("x"), trust_env=False)
    assert answer.status_code == 401
    assert "no token" in answer.json()["error"]
    wrong = httpx.get(
        f"{lab.url}/v1/status",
        headers={"authorization": "Bearer nope-nope-nope-nope"},
        trust_env=False,
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
