"""Issue 13 on a real lab (``tsec``, 10.213.102.0/24, three servers): the API over HTTPS
only, checked against the lab's CA; forwarding refuses an agent whose certificate the CA
did not sign; the load balancer's health endpoint; ``/metrics``; the audit log of a
refusal and of a forwarded change; a key rotation through the CLI; and ``vigil drill``
with a client probing the service's address all along.

The hierarchy: ``sweb`` (the sample HTTP service on 0.0.0.0:8080) on top of ``svip``
(10.213.102.100/24 on eth0), created on node1, extended to node2 and node3.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.helpers import Api, service_commands, wait_for
from vigil.agent.ca import init_ca, issue
from vigil.agent.tls import client_context
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab

pytestmark = pytest.mark.lab

PORT = 8080
VIP = "10.213.102.100"
SERVERS = ("node1", "node2", "node3")


def vigil(info: LabInfo, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VIGIL_CLIENT_CONFIG": str(info.client_file)}
    for name in ("VIGIL_URL", "VIGIL_TOKEN", "VIGIL_CA_FILE"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "vigil", *args], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabInfo]]:
    built = Lab("tsec", subnet_index=102)
    built.down()
    try:
        info = built.up(3)
        api = Api(info)
        try:
            for i, one in enumerate(SERVERS):
                for other in SERVERS[i + 1 :]:
                    api.ok("POST", "/v1/commpaths", {
                        "local": one, "local_address": info.server(one).address,
                        "remote": other, "remote_address": info.server(other).address,
                    })  # fmt: skip
            vip = {"address": VIP, "prefix": 24, "interface": "eth0"}
            api.ok("POST", "/v1/resources", {"tag": "svip", "kit": "ip", "server": "node1",
                                              "properties": vip})  # fmt: skip
            api.ok("POST", "/v1/resources", {"tag": "sweb", "kit": "app", "server": "node1",
                                              "properties": service_commands(PORT)})  # fmt: skip
            api.ok("POST", "/v1/dependencies", {"parent": "sweb", "child": "svip"})
            api.ok("POST", "/v1/hierarchies/sweb/extend", {"server": "node2"})
            api.ok("POST", "/v1/hierarchies/sweb/extend", {"server": "node3", "priority": 20})
            wait_for(
                lambda: api.instances("sweb")["node1"]["state"] == "ISP",
                what="sweb in service on node1",
            )
        finally:
            api.close()
        yield built, info
    finally:
        built.down()


def test_the_api_speaks_https_only_and_proves_it_is_the_agent(lab: tuple[Lab, LabInfo]) -> None:
    info = lab[1]
    url = info.server("node1").api_url
    assert url.startswith("https://")
    with httpx.Client(trust_env=False, verify=info.ssl_context(), timeout=5) as trusted:
        assert trusted.get(f"{url}/v1/health").status_code == 200
    with (
        httpx.Client(trust_env=False, verify=client_context(None), timeout=5) as system,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        system.get(f"{url}/v1/health")  # the system's CAs do not know the lab's
    with (
        httpx.Client(trust_env=False, timeout=5) as plain,
        pytest.raises(httpx.HTTPError),
    ):
        plain.get(url.replace("https://", "http://") + "/v1/health")


def test_health_of_the_hierarchy_where_it_runs_and_elsewhere(lab: tuple[Lab, LabInfo]) -> None:
    info = lab[1]
    with httpx.Client(trust_env=False, verify=info.ssl_context(), timeout=5) as balancer:
        for server, code in (("node1", 200), ("node2", 503), ("node3", 503)):
            url = f"{info.server(server).api_url}/v1/health/hierarchy/sweb"
            assert balancer.get(url).status_code == code, server
            assert balancer.head(url).status_code == code, server
        answer = balancer.get(f"{info.server('node1').api_url}/v1/health/hierarchy/svip")
        assert answer.json()["states"] == {"svip": "ISP", "sweb": "ISP"}


def test_metrics_of_an_agent(lab: tuple[Lab, LabInfo]) -> None:
    info = lab[1]
    url = f"{info.server('node1').api_url}/metrics"
    with httpx.Client(trust_env=False, verify=info.ssl_context(), timeout=5) as prometheus:

        def scraped() -> str | None:
            text = prometheus.get(url).text
            return (
                text
                if 'ha_cluster_vigil_check_duration_seconds_count{agent="app"' in text
                else None
            )

        text = wait_for(scraped, what="a check of sweb measured", timeout=30)
    assert (
        'ha_cluster_vigil_resources{agent="app",hierarchy="sweb",node="node1",resource="sweb",'
        'status="ISP"} 1.0'
    ) in text
    assert 'ha_cluster_vigil_nodes{node="node3",status="alive"} 1.0' in text
    assert 'ha_cluster_vigil_lease_renewals_total{node="node1",outcome="ok"}' in text
    assert 'ha_cluster_vigil_store_request_duration_seconds_count{connection="lease"' in text
    assert 'ha_cluster_scrape_success{collector="vigil"} 1.0' in text


def test_the_audit_log_records_a_refusal_and_a_forwarded_change(
    lab: tuple[Lab, LabInfo],
) -> None:
    info = lab[1]
    host = info.host_address
    operator, admin = Api(info, "operator"), Api(info)
    try:
        assert (
            operator.post("/v1/hierarchies/sweb/unextend", {"server": "node3"}).status_code == 403
        )
        commands = {"restore": "true", "remove": "true", "quick_check": "true"}
        body = {"tag": "ssolo", "kit": "app", "server": "node2", "properties": commands}
        admin.ok("POST", "/v1/resources", body)  # forwarded by node1 to node2
        admin.ok("DELETE", "/v1/hierarchies/ssolo")

        def entries() -> list[dict[str, object]] | None:
            found = admin.ok("GET", "/v1/audit?limit=50")
            return found if any(e["what"].startswith("DELETE") for e in found) else None

        found = wait_for(entries, what="the audit entries", timeout=15)
    finally:
        operator.close()
        admin.close()
    refused = next(e for e in found if "unextend" in str(e["what"]))
    assert (refused["who"], refused["role"], refused["outcome"]) == (
        "operator",
        "operator",
        "not authorised",
    )
    assert refused["address"] == host and refused["server"] == "node1"
    created = next(
        e for e in found if str(e["what"]).startswith("POST /v1/resources") and "ssolo" in str(e)
    )
    assert (created["server"], created["forwarded_by"], created["address"]) == (
        "node2",
        "node1",
        host,
    )
    assert created["outcome"] == "done" and "properties: [restore, remove, quick_check]" in str(
        created["what"]
    )
    assert info.tokens["administrator"] not in json.dumps(found)
    shown = vigil(info, "audit", "--refused")
    assert shown.returncode == 0 and "not authorised" in shown.stdout


def test_a_key_rotation_through_the_cli(lab: tuple[Lab, LabInfo]) -> None:
    info = lab[1]
    added = vigil(
        info, "secrets", "add-key", "--key-file", str(info.root / "cluster.key"), "--json"
    )
    assert added.returncode == 0, added.stderr
    new = json.loads(added.stdout)["key"]
    rotated = vigil(info, "secrets", "rotate", "--json")
    assert rotated.returncode == 0, rotated.stderr + rotated.stdout
    done = json.loads(rotated.stdout)
    assert done["key"] == new and set(done["servers"]) == set(SERVERS)
    assert all(keys[0] == new for keys in done["servers"].values())
    retired = vigil(info, "secrets", "retire-keys", "--key-file", str(info.root / "cluster.key"))
    assert retired.returncode == 0, retired.stderr


def test_drill_switches_over_and_back_with_the_clients_outage(lab: tuple[Lab, LabInfo]) -> None:
    info = lab[1]
    done = vigil(info, "drill", "sweb", "--probe", f"{VIP}:{PORT}", "--pause", "1", "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(done.stdout)
    assert (report["home"], report["away"]) == ("node1", "node2")
    steps = report["steps"]
    assert [(s["source"], s["target"]) for s in steps] == [("node1", "node2"), ("node2", "node1")]
    for step in steps:
        assert step["ok"] and 0 < step["seconds"] < 60
        assert step["healthy_after"] >= step["seconds"]
        assert step["outage"] is not None and step["outage"] < 30
    shown = vigil(info, "drill", "sweb", "--to", "node3", "--pause", "0")
    assert shown.returncode == 0, shown.stderr
    assert "drill of sweb: node1 -> node3 -> back" in shown.stdout  # a table for people
    assert shown.stdout.count("ok") >= 2


def _listens(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
    except OSError:
        return False
    return True


def test_forwarding_refuses_an_agent_the_cluster_ca_did_not_sign(
    lab: tuple[Lab, LabInfo], tmp_path_factory: pytest.TempPathFactory
) -> None:
    built, info = lab
    names = built.names
    cert, key = names.cert_file("node3"), names.key_file("node3")
    saved = cert.read_bytes(), key.read_bytes()
    rogue = tmp_path_factory.mktemp("rogue")
    init_ca(rogue, "not the cluster's CA")
    made = issue(rogue, "node3", [info.server("node3").address])
    try:
        cert.write_bytes(made.cert_file.read_bytes())
        key.write_bytes(made.key_file.read_bytes())
        built.stop_agent("node3", signal.SIGTERM)
        built.start_agent("node3", wait=False)  # the lab's own check would refuse it
        # until it listens, forwarding fails for that reason ("All connection attempts
        # failed"); once it serves its rogue certificate, only the certificate can be why
        where = httpx.URL(info.server("node3").api_url)
        wait_for(lambda: _listens(where.host, where.port or 443), 60, "node3's API listening")
        api = Api(info)
        try:
            body = {"tag": "srogue", "kit": "app", "server": "node3",
                    "properties": {"restore": "true", "remove": "true"}}  # fmt: skip
            answer = wait_for(
                lambda: (a := api.post("/v1/resources", body)).status_code == 503 and a,
                what="node1 refusing to forward to node3",
                timeout=30,
            )
            assert "certificate is not trusted" in answer.json()["error"]
            assert "srogue" not in str(api.status())
        finally:
            api.close()
    finally:
        cert.write_bytes(saved[0])
        key.write_bytes(saved[1])
        built.stop_agent("node3", signal.SIGTERM)
        built.start_agent("node3")
