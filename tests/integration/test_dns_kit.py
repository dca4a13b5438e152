"""The dns kit in a real lab, against a real BIND, through the API.

One lab of three servers for the module. BIND runs inside node3 (port 53 on its address)
and serves ``lab.example.`` and the lab subnet's reverse zone, both updatable with a fresh
TSIG key; ``web.lab.example.`` starts out pointing at an old address (10.213.35.77, with
its PTR). The hierarchy ``web`` (the sample service, app kit) → ``web-dns`` (dns kit) is
created on node1, extended to node2 (the address proposed by the kit), switched over;
after each step BIND is asked from the host what the name (and the PTR) answers, and a
client resolving the name reaches the service where the hierarchy is in service. The
tests run in order and build on each other.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from typing import Any

import dns.query
import dns.resolver
import dns.tsig
import dns.update
import httpx
import pytest

from tests.bind_server import BindServer, bind_server, named_processes
from tests.integration.helpers import Api, answering, service_commands, wait_for
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab

pytestmark = pytest.mark.lab

PORT = 8080
OLD = "10.213.35.77"
NAME = "web"
#: wrong secrets tried: no more to be seen in the logs than the right one
WRONG_SECRETS: list[str] = []


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabInfo]]:
    lab = Lab("tdns", subnet_index=35)
    lab.down()
    try:
        yield lab, lab.up(3)
    finally:
        lab.down()


@pytest.fixture(scope="module")
def bind(lab: tuple[Lab, LabInfo]) -> Iterator[BindServer]:
    with bind_server(
        lab=lab[0], server="node3", network=lab[1].subnet, records={NAME: OLD}
    ) as running:
        yield running
    assert not named_processes(str(running.directory)), "named was left running"


@pytest.fixture(scope="module")
def api(lab: tuple[Lab, LabInfo], bind: BindServer) -> Iterator[Api]:
    info = lab[1]
    client = Api(info)
    one, two = info.server("node1"), info.server("node2")
    client.ok(
        "POST",
        "/v1/commpaths",
        {
            "local": "node1",
            "local_address": one.address,
            "remote": "node2",
            "remote_address": two.address,
        },
    )
    body = {"tag": "web", "kit": "app", "server": "node1", "properties": service_commands(PORT)}
    client.ok("POST", "/v1/resources", body)
    yield client
    client.close()


def address(info: LabInfo, server: str) -> str:
    return info.server(server).address


def dns_body(bind: BindServer, info: LabInfo, **changes: Any) -> dict[str, Any]:
    properties = bind.kit_properties(NAME, address(info, "node1"), ttl=5, request_timeout=3)
    properties.update(changes)
    return {"tag": "web-dns", "kit": "dns", "server": "node1", "properties": properties}


def resolve_and_fetch(bind: BindServer) -> str:
    """What a client gets that resolves ``web.lab.example`` with BIND and fetches ``/``."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [bind.address]
    resolver.port = bind.port
    resolver.cache = None
    (record,) = resolver.resolve(bind.fqdn(NAME), "A")
    with httpx.Client(timeout=3.0, trust_env=False) as client:
        return client.get(f"http://{record.to_text()}:{PORT}/").text.splitlines()[0]


def states(api: Api, tag: str) -> dict[str, str]:
    return {server: i["state"] for server, i in api.instances(tag).items()}


def test_a_wrong_secret_is_refused_naming_the_key_and_changes_nothing(
    lab: tuple[Lab, LabInfo], bind: BindServer, api: Api
) -> None:
    before = api.configuration()
    wrong = base64.b64encode(os.urandom(32)).decode()
    WRONG_SECRETS.append(wrong)
    refused = api.post("/v1/resources", dns_body(bind, lab[1], tsig_secret=wrong))
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]
    assert f"TSIG key {bind.key_name} rejected by {bind.address}" in message
    assert "check the key name, algorithm and secret" in message
    assert wrong not in refused.text
    unknown = api.post("/v1/resources", dns_body(bind, lab[1], tsig_key="nobody"))
    assert unknown.status_code == 400
    assert "TSIG key nobody rejected" in unknown.json()["error"]
    assert api.configuration() == before
    assert bind.lookup(NAME) == {OLD}
    assert bind.ptr(OLD) == {bind.fqdn(NAME)}


def test_create_points_the_name_at_node1_and_moves_the_ptr(
    lab: tuple[Lab, LabInfo], bind: BindServer, api: Api
) -> None:
    info = lab[1]
    result = api.ok("POST", "/v1/resources", dns_body(bind, info))
    assert "in service on node1" in result["detail"]
    node1 = address(info, "node1")
    assert bind.lookup(NAME) == {node1}
    assert bind.ptr(node1) == {bind.fqdn(NAME)}
    assert bind.ptr(OLD) == set()
    assert states(api, "web-dns") == {"node1": "ISP"}
    assert resolve_and_fetch(bind) == "node1"


def test_extend_proposes_node2s_own_address(
    lab: tuple[Lab, LabInfo], bind: BindServer, api: Api
) -> None:
    api.ok("POST", "/v1/dependencies", {"parent": "web", "child": "web-dns"})
    api.ok("POST", "/v1/hierarchies/web/extend", {"server": "node2"})
    shown = api.ok("GET", "/v1/resources/web-dns")
    assert shown["server_properties"]["node2"]["address"] == address(lab[1], "node2")
    assert shown["server_properties"]["node1"]["address"] == address(lab[1], "node1")
    wait_for(lambda: states(api, "web-dns") == {"node1": "ISP", "node2": "OSU"}, what="OSU")
    assert bind.lookup(NAME) == {address(lab[1], "node1")}


def test_switchover_moves_the_records_and_clients_follow(
    lab: tuple[Lab, LabInfo], bind: BindServer, api: Api
) -> None:
    info = lab[1]
    api.ok("POST", "/v1/hierarchies/web/in-service", {"server": "node2"})
    node1, node2 = address(info, "node1"), address(info, "node2")
    assert states(api, "web-dns") == {"node1": "OSU", "node2": "ISP"}
    assert bind.lookup(NAME) == {node2}
    assert bind.ptr(node2) == {bind.fqdn(NAME)}
    assert bind.ptr(node1) == set()
    assert answering(info, PORT) == {"node2": "node2"}
    assert resolve_and_fetch(bind) == "node2"


def test_a_record_changed_behind_vigils_back_is_recovered(
    lab: tuple[Lab, LabInfo], bind: BindServer, api: Api
) -> None:
    update = dns.update.UpdateMessage(bind.zone)
    update.use_tsig(dns.tsig.Key(bind.key_name, base64.b64decode(bind.secret), bind.algorithm))
    update.replace(bind.fqdn(NAME), 5, "A", "10.213.35.99")
    dns.query.tcp(update, bind.address, timeout=5, port=bind.port)
    assert bind.lookup(NAME) == {"10.213.35.99"}
    node2 = address(lab[1], "node2")
    wait_for(lambda: bind.lookup(NAME) == {node2}, timeout=40, what="the record recovered")

    def events() -> list[tuple[str, str]]:
        return [(e["kind"], e["message"]) for e in api.ok("GET", "/v1/events?limit=500")]

    # the record is back a moment before the recovery's check and its event are done
    wait_for(
        lambda: any(k == "recovered" and "web-dns" in m for k, m in events()),
        timeout=20,
        what="the recovered event",
    )
    kinds = events()
    assert any(
        kind == "check-failed" and "web-dns" in detail and "10.213.35.99" in detail
        for kind, detail in kinds
    ), kinds
    assert any(kind == "recovered" and "web-dns" in detail for kind, detail in kinds), kinds
    assert states(api, "web-dns") == {"node1": "OSU", "node2": "ISP"}


def test_out_of_service_leaves_the_records_and_in_service_rewrites_them(
    lab: tuple[Lab, LabInfo], bind: BindServer, api: Api
) -> None:
    info = lab[1]
    api.ok("POST", "/v1/hierarchies/web/out-of-service", {})
    assert set(states(api, "web-dns").values()) == {"OSU"}
    assert bind.lookup(NAME) == {address(info, "node2")}  # left, as the original product
    api.ok("POST", "/v1/hierarchies/web/in-service", {"server": "node1"})
    assert bind.lookup(NAME) == {address(info, "node1")}
    assert bind.ptr(address(info, "node2")) == set()
    assert resolve_and_fetch(bind) == "node1"


def test_the_secret_is_in_no_agent_log(lab: tuple[Lab, LabInfo], bind: BindServer) -> None:
    time.sleep(1.0)  # let the agents' log queues drain
    root = lab[1].root
    logs = [root / s.name / name for s in lab[1].servers for name in ("agent.log", "agent.out")]
    texts = {path: path.read_text(errors="replace") for path in logs if path.exists()}
    assert any("now points at" in text for text in texts.values()), "no dns kit log line"
    for path, text in texts.items():
        for secret in (bind.secret, *WRONG_SECRETS):
            assert secret not in text, f"{path} shows a TSIG secret"


def test_the_secret_is_in_no_api_view(bind: BindServer, api: Api) -> None:
    for path in ("/v1/resources/web-dns", "/v1/status", "/v1/events?limit=1000", "/v1/kits"):
        answer = api.get(path)
        assert answer.status_code == 200, (path, answer.text)
        assert bind.secret not in answer.text, f"GET {path} shows the TSIG secret"
    shown = api.ok("GET", "/v1/resources/web-dns")["properties"]
    assert shown["tsig_secret"] != bind.secret and shown["tsig_key"] == bind.key_name


def test_delete_leaves_the_records(lab: tuple[Lab, LabInfo], bind: BindServer, api: Api) -> None:
    api.ok("DELETE", "/v1/hierarchies/web")
    assert api.status()["hierarchies"] == []
    assert bind.lookup(NAME) == {address(lab[1], "node1")}
