"""Helpers for integration tests: an API client for a lab, the sample service's commands,
and a probe of where the protected service really answers."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from vigil.lab.info import LabInfo


class Api:
    """A thin client of one agent's REST API, as a given role."""

    def __init__(self, info: LabInfo, role: str = "administrator", server: str = "node1") -> None:
        self.info = info
        self.base = info.server(server).api_url
        token = info.tokens[role]
        self.client = httpx.Client(
            base_url=self.base,
            headers={"authorization": f"Bearer {token}"},
            timeout=180.0,
            trust_env=False,
            verify=info.ssl_context(),  # the lab's agents serve HTTPS (the lab's CA)
        )

    def close(self) -> None:
        self.client.close()

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path)

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return self.client.post(path, json=body)

    def patch(self, path: str, body: Any) -> httpx.Response:
        return self.client.patch(path, json=body)

    def delete(self, path: str) -> httpx.Response:
        return self.client.delete(path)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.client.request(method, path, json=body)
        assert answer.status_code == 200, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json()

    def status(self) -> dict[str, Any]:
        return self.ok("GET", "/v1/status")

    def instances(self, tag: str) -> dict[str, dict[str, Any]]:
        """server -> {state, reason, priority} for ``tag``."""
        data = self.ok("GET", f"/v1/resources/{tag}")
        return {i["server"]: i for i in data["instances"]}

    def configuration(self) -> dict[str, Any]:
        """Everything an operation may change, without the moving parts (heartbeats, times)."""
        status = self.status()
        paths = sorted(p["id"] for p in status["comm_paths"])
        resources = {}
        for h in status["hierarchies"]:
            for r in h["resources"]:
                resources[r["tag"]] = {
                    "kit": r["kit"],
                    "parents": r["parents"],
                    "children": r["children"],
                    "properties": r["properties"],
                    "server_properties": r["server_properties"],
                    "priorities": {i["server"]: i["priority"] for i in r["instances"]},
                    "wanted_on": h["wanted_on"],
                }
        return {"paths": paths, "resources": resources}


def service_commands(port: int, name: str = "$VIGIL_SERVER") -> dict[str, str]:
    """App-kit commands for the sample HTTP service on ``port`` (answers its server's name)."""
    service = f"{sys.executable} -m vigil.kits.app.sample_service"
    pidfile = f"--pidfile $VIGIL_STATE_DIR/service-{port}.pid"
    return {
        "restore": f"{service} start {pidfile} --bind 0.0.0.0 --port {port} --name {name}",
        "remove": f"{service} stop {pidfile}",
        "quick_check": f"{service} status {pidfile} --port {port}",
    }


def answering(info: LabInfo, port: int) -> dict[str, str]:
    """server -> what the service on ``port`` answers there, for every server that answers."""
    seen = {}
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        for server in info.servers:
            try:
                answer = client.get(f"http://{server.address}:{port}/")
            except httpx.HTTPError:
                continue
            seen[server.name] = answer.text.strip().splitlines()[0]
    return seen


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
