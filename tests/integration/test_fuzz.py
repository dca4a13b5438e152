"""The API fuzzed with a token of each role (``tests.api_fuzz``), bounded: a lab of two
servers (``tfuzz``, 10.213.101.0/24) with the sample service's hierarchy ``web`` on node1,
extended to node2, and a dns resource whose TSIG secret is in the store (sealed), so that
an answer showing a secret has one to show. No 5xx, no refused request that changes
anything, no secret in any answer. ``bench/fuzz.py`` is the longer run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api_fuzz import Fuzzer, lab_secrets
from tests.bind_server import BindServer, bind_server
from tests.integration.helpers import Api, service_commands, wait_for
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab

pytestmark = pytest.mark.lab

PORT = 8080
#: generated requests per operation and role (valid and invalid ones)
EXAMPLES = 4


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabInfo]]:
    built = Lab("tfuzz", subnet_index=101)
    built.down()
    try:
        yield built, built.up(2)
    finally:
        built.down()


@pytest.fixture(scope="module")
def bind(lab: tuple[Lab, LabInfo]) -> Iterator[BindServer]:
    with bind_server(
        lab=lab[0], server="node2", network=lab[1].subnet, records={"web": "10.213.101.77"}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def protected(lab: tuple[Lab, LabInfo], bind: BindServer) -> LabInfo:
    info = lab[1]
    api = Api(info)
    try:
        one, two = info.server("node1"), info.server("node2")
        path = {"local": "node1", "local_address": one.address}
        api.ok("POST", "/v1/commpaths", {**path, "remote": "node2", "remote_address": two.address})
        body = {"tag": "web", "kit": "app", "server": "node1", "properties": service_commands(PORT)}
        api.ok("POST", "/v1/resources", body)
        properties = bind.kit_properties("web", one.address, ttl=5, request_timeout=3)
        api.ok("POST", "/v1/resources", {"tag": "webdns", "kit": "dns", "server": "node1",
                                          "properties": properties})  # fmt: skip
        api.ok("POST", "/v1/hierarchies/web/extend", {"server": "node2"})
        wait_for(
            lambda: api.instances("web")["node1"]["state"] == "ISP",
            what="web in service on node1",
        )
    finally:
        api.close()
    return info


def test_fuzz_every_operation_with_each_role(protected: LabInfo, bind: BindServer) -> None:
    fuzzer = Fuzzer(protected, lab_secrets(protected, [bind.secret]))
    try:
        report = fuzzer.run(examples=EXAMPLES)
    finally:
        fuzzer.close()
    print(f"fuzz: {report.requests} requests, {report.refused} refused changes, "
          f"statuses {sorted(report.by_status.items())}, {report.seconds:.0f} s")  # fmt: skip
    assert report.requests > 100, report
    assert report.refused > 0  # the guest's and operator's changes, bad input
    assert not report.findings, "\n".join(str(f) for f in report.findings[:30])
