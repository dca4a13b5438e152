"""A property-based fuzz of an agent's API (schemathesis, from the agent's own OpenAPI
document), with a token of each role, against a lab: for the bounded run in the test suite
(``tests/integration/test_fuzz.py``) and the longer one (``bench/fuzz.py``).

Every generated request (path parameters, query, body: valid and invalid) is sent over
HTTPS to the agent, and three properties are checked:

* **no 5xx**: an answer of 500 or more is a finding, except the 503 the health endpoints
  give by design (not in service here) and a 503 that says the store or another agent
  could not be reached while one was down on purpose (none is, in these runs);
* **a refused request changes nothing**: for every request answered 4xx that is not a GET,
  the cluster's configuration (``GET /v1/status`` without its moving parts: times,
  heartbeats, revisions) is the same before and after;
* **no secret in any answer**: no token, no key of the cluster key file, no sealed value,
  no TSIG secret of the lab's DNS server (a dns resource holds it), no CA private key.

Operations that would take the lab itself away are left out: stopping an agent
(``POST /v1/servers/{server}/stop``), and the event log's long poll is asked without its
wait. What the administrator's requests change (a policy, a comm path) is what any
administrator may change: each role's run starts from the lab as it is.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from vigil.lab.info import LabInfo

ROLES = ("guest", "operator", "administrator")
#: (method, path template) never fuzzed: they take the lab itself away
LEFT_OUT = {("POST", "/v1/servers/{server}/stop")}
#: paths whose 503 is their answer by design
HEALTH_PATHS = ("/v1/health/hierarchy/", "/in-service-here")
#: fields of GET /v1/status that move by themselves
MOVING = {"revision", "since", "last_heartbeat", "reason", "state", "status", "active_server"}


@dataclass
class Finding:
    """One request that broke a property."""

    role: str
    what: str
    status: int
    problem: str

    def __str__(self) -> str:
        return f"[{self.role}] {self.what} -> {self.status}: {self.problem}"


@dataclass
class Report:
    """What a fuzz run sent and found."""

    requests: int = 0
    refused: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0


def _still(data: Any) -> Any:
    """``data`` without the fields that move by themselves."""
    if isinstance(data, dict):
        return {k: _still(v) for k, v in data.items() if k not in MOVING}
    if isinstance(data, list):
        return [_still(v) for v in data]
    return data


def lab_secrets(info: LabInfo, extra: Iterable[str] = ()) -> list[str]:
    """Every secret of the lab an answer must never show."""
    found = list(info.tokens.values()) + [s for s in extra if s]
    key_file = info.root / "cluster.key"
    if key_file.exists():
        found += [line for line in key_file.read_text().splitlines() if line.strip()]
    ca_key = info.root / "tls" / "ca.key"
    if ca_key.exists():
        found += [line for line in ca_key.read_text().splitlines() if "-----" not in line]
    return [s for s in found if len(s) >= 12] + ["vigil-sealed:"]


class Fuzzer:
    """Sends generated requests to one agent and checks each answer."""

    def __init__(self, info: LabInfo, secrets: list[str], server: str = "node1") -> None:
        self.info = info
        self.base = info.server(server).api_url
        self.secrets = secrets
        self.http = httpx.Client(
            timeout=httpx.Timeout(60.0, connect=5.0), trust_env=False, verify=info.ssl_context()
        )
        admin = {"authorization": f"Bearer {info.tokens['administrator']}"}
        self.admin = admin
        document = self.http.get(f"{self.base}/openapi.json", headers=admin).json()
        self.schema = schemathesis.openapi.from_dict(document)
        self.report = Report()

    def close(self) -> None:
        self.http.close()

    def configuration(self) -> Any:
        answer = self.http.get(f"{self.base}/v1/status", headers=self.admin)
        return _still(answer.json())

    def operations(self) -> list[Any]:
        found = []
        for result in self.schema.get_all_operations():
            operation = result.ok()
            if (operation.method.upper(), operation.path) in LEFT_OUT:
                continue
            found.append(operation)
        return found

    def send(self, role: str, case: Any) -> None:
        """Send one generated request as ``role`` and check its answer."""
        headers = {"authorization": f"Bearer {self.info.tokens[role]}"}
        kwargs = case.as_transport_kwargs(base_url=self.base, headers=headers)
        method, url = kwargs["method"], kwargs["url"]
        if case.path == "/v1/events":
            kwargs["params"] = {**(kwargs.get("params") or {}), "wait": 0}
        changes = method not in ("GET", "HEAD", "OPTIONS")
        before = self.configuration() if changes else None
        what = f"{method} {url.removeprefix(self.base)}"
        try:
            answer = self.http.request(
                method,
                url,
                headers={k: v for k, v in kwargs["headers"].items() if k.lower() != "connection"},
                params=kwargs.get("params") or None,
                json=kwargs.get("json"),
                content=kwargs.get("data") if isinstance(kwargs.get("data"), bytes | str) else None,
            )
        except httpx.HTTPError as exc:
            self._found(role, what, 0, f"no answer: {exc!r}")
            return
        self._check(role, case, what, answer, before)

    def _check(self, role: str, case: Any, what: str, answer: httpx.Response, before: Any) -> None:
        status = answer.status_code
        self.report.requests += 1
        self.report.by_status[status] = self.report.by_status.get(status, 0) + 1
        by_design = status == 503 and any(p in case.path for p in HEALTH_PATHS)
        if status >= 500 and not by_design:
            self._found(role, what, status, f"server error: {answer.text[:300]}")
        text = answer.text
        for secret in self.secrets:
            if secret in text:
                at = text.index(secret)
                around = text[max(0, at - 120) : at].replace("\n", " ")
                self._found(
                    role,
                    what,
                    status,
                    f"the answer shows a secret ({secret[:6]}...) after {around!r}",
                )
        if before is not None and 400 <= status < 500:
            self.report.refused += 1
            after = self.configuration()
            if after != before:
                self._found(role, what, status, "refused, but the configuration changed")

    def _found(self, role: str, what: str, status: int, problem: str) -> None:
        self.report.findings.append(Finding(role, what[:300], status, problem))

    def run(
        self,
        roles: Iterable[str] = ROLES,
        examples: int = 10,
        progress: Callable[[str], None] = lambda line: None,
    ) -> Report:
        """Fuzz every operation as every role, ``examples`` requests each (at most)."""
        started = time.monotonic()
        for role in roles:
            for operation in self.operations():
                progress(f"{role}: {operation.method.upper()} {operation.path}")
                self._fuzz(role, operation, examples)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _fuzz(self, role: str, operation: Any, examples: int) -> None:
        strategies = [operation.as_strategy()]
        # invalid requests too, where the operation has anything to get wrong
        with contextlib.suppress(Exception):
            negative = schemathesis.GenerationMode.NEGATIVE
            strategies.append(operation.as_strategy(generation_mode=negative))
        strategy = st.one_of(*strategies)

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def fuzz(case: Any) -> None:
            self.send(role, case)

        with contextlib.suppress(Unsatisfiable):  # nothing (more) to generate here
            fuzz()


def write_report(report: Report, path: Path) -> None:
    """The report as JSON (for the bench's record)."""
    data = {
        "requests": report.requests,
        "refused": report.refused,
        "by_status": report.by_status,
        "seconds": round(report.seconds, 1),
        "findings": [vars(f) for f in report.findings],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
