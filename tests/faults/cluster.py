"""A lab cluster seen from a fault test: the API of whichever agent is up, the standard
hierarchy, the faults themselves (kill a service, kill/freeze an agent, cut a link), the
event log, and waiting on conditions with generous deadlines.

Every wait polls a condition until a deadline and fails with what it saw last; no fixed
sleep is ever an assertion.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.faults.probe import NETNS_DIR, alive, ns_key
from tests.integration.helpers import service_commands
from vigil.errors import LabError
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab

T = TypeVar("T")

SERVERS = ("node1", "node2", "node3")
#: the standard hierarchy's priorities: created on node1, extended to node2 and node3
PRIORITIES = {"node1": 1, "node2": 10, "node3": 20}
#: check interval of protected resources in fault tests (the app kit's default is 2 s)
QUICK_CHECK = 0.5
#: a file that makes the restore command fail on one server (in the resource's state dir)
FAIL_MARKER = "fail-restore"
SERVER_POLICIES = (
    "local_recovery",
    "failover",
    "confirm_failover",
    "confirm_timeout",
    "confirm_default",
    "block_resource_failover",
    "shutdown_strategy",
)


def wait_until(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s with
    the last thing it returned or raised."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = condition()
        except (AssertionError, httpx.HTTPError, KeyError) as exc:
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(0.1)


def commands(port: int) -> dict[str, str]:
    """The sample service's app-kit commands; the restore fails where the marker exists."""
    props = service_commands(port)
    marker = f'"$VIGIL_STATE_DIR/{FAIL_MARKER}"'
    props["restore"] = (
        f'if [ -e {marker} ]; then echo "restore refused: {FAIL_MARKER} marker on '
        f'$VIGIL_SERVER"; exit 1; fi; {props["restore"]}'
    )
    return props


def lab_up(lab: Lab, servers: int, store: str) -> LabInfo:
    """``lab.up`` on ``store``, tried twice: ``Lab.up`` may take a starting agent for gone
    (its pid is checked against the server's netns before nsenter has entered it)."""
    options: dict[str, Any] = {} if store == "embedded" else {"store": store}
    try:
        return lab.up(servers, **options)
    except LabError as exc:
        if "exited before answering its health check" not in str(exc):
            raise
        lab.down()
        return lab.up(servers, **options)


class Cluster:
    """One lab of three servers, driven through the API of any agent that is up."""

    def __init__(self, lab: Lab, info: LabInfo, store: str) -> None:
        self.lab = lab
        self.info = info
        self.store = store
        self.root = info.root
        #: agents this test killed, froze or stopped: never asked anything
        self.down: set[str] = set()
        self.frozen: set[str] = set()
        token = info.tokens["administrator"]
        self.clients = {
            s.name: httpx.Client(
                base_url=s.api_url,
                headers={"authorization": f"Bearer {token}"},
                timeout=httpx.Timeout(60.0, connect=2.0),
                trust_env=False,
                verify=info.ssl_context(),  # the lab's agents serve HTTPS (the lab's CA)
            )
            for s in info.servers
        }

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    # --- the API ----------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, server: str | None = None
    ) -> httpx.Response:
        """Ask ``server``'s agent, or the first agent that is up."""
        order = [server] if server else [s for s in SERVERS if s not in self.down]
        error: Exception | None = None
        for name in order:
            try:
                return self.clients[name].request(method, path, json=body)
            except httpx.TransportError as exc:
                error = exc
        raise AssertionError(f"no agent answered {method} {path}: {error!r}")

    def ok(self, method: str, path: str, body: Any = None, server: str | None = None) -> Any:
        answer = self.request(method, path, body, server)
        assert answer.status_code == 200, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json()

    def connect_every_pair(self, servers: Sequence[str]) -> None:
        """A comm path between every pair of ``servers``, on their lab addresses."""
        for i, one in enumerate(servers):
            for other in servers[i + 1 :]:
                body = {
                    "local": one,
                    "local_address": self.info.server(one).address,
                    "remote": other,
                    "remote_address": self.info.server(other).address,
                }
                self.ok("POST", "/v1/commpaths", body)

    def status(self) -> dict[str, Any]:
        return self.ok("GET", "/v1/status")

    def hierarchy(self, tag: str) -> dict[str, Any]:
        """The hierarchy view of ``tag`` in GET /v1/status (status, reason, active_server)."""
        for view in self.status()["hierarchies"]:
            if tag in [r["tag"] for r in view["resources"]]:
                return view
        raise KeyError(tag)

    def server_view(self, server: str) -> dict[str, Any]:
        return next(s for s in self.status()["servers"] if s["name"] == server)

    def instances(self, tag: str) -> dict[str, dict[str, Any]]:
        """server -> {state, reason, priority} of ``tag`` (GET /v1/resources/TAG)."""
        return {i["server"]: i for i in self.ok("GET", f"/v1/resources/{tag}")["instances"]}

    def states(self, tag: str) -> dict[str, str]:
        return {server: i["state"] for server, i in self.instances(tag).items()}

    def wait_states(
        self, tag: str, expected: dict[str, str], timeout: float = 30.0
    ) -> dict[str, dict[str, Any]]:
        """Wait until every server in ``expected`` shows that state of ``tag``."""

        def match() -> dict[str, dict[str, Any]]:
            seen = self.instances(tag)
            if all(seen[s]["state"] == state for s, state in expected.items()):
                return seen
            raise AssertionError({s: (i["state"], i["reason"]) for s, i in seen.items()})

        return wait_until(match, timeout, f"states of {tag}: {expected}")

    def server_policy(self, server: str, **values: Any) -> None:
        self.ok("PATCH", f"/v1/servers/{server}/policies", values)

    def resource_policy(self, tag: str, **values: Any) -> None:
        self.ok("PATCH", f"/v1/resources/{tag}/policies", values)

    # --- the event log ----------------------------------------------------------------------

    def mark(self) -> str:
        """The id of the newest event: later ``events(mark)`` show only what came after."""
        newest = self.ok("GET", "/v1/events?limit=1")
        return newest[-1]["id"] if newest else ""

    def events(self, after: str = "") -> list[dict[str, Any]]:
        query = f"?limit=100000&after={after}" if after else "?limit=100000"
        return self.ok("GET", f"/v1/events{query}")

    def wait_event(
        self,
        after: str,
        kind: str,
        *,
        hierarchy: str | None = None,
        server: str | None = None,
        text: str = "",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Wait for an event of ``kind`` after the mark ``after``; return it."""

        def found() -> dict[str, Any] | None:
            for event in self.events(after):
                if (
                    event["kind"] == kind
                    and (hierarchy is None or event["hierarchy"] == hierarchy)
                    and (server is None or event["server"] == server)
                    and text in event["message"]
                ):
                    return event
            return None

        where = f" on {server}" if server else ""
        return wait_until(found, timeout, f"event {kind}{where} {text!r} of {hierarchy}")

    def kinds(self, after: str, hierarchy: str | None = None) -> list[str]:
        """The kinds of the events after ``after`` (of ``hierarchy``, or naming it)."""
        return [
            e["kind"]
            for e in self.events(after)
            if hierarchy is None or e["hierarchy"] == hierarchy or hierarchy in e["message"]
        ]

    # --- the standard hierarchy -------------------------------------------------------------

    def create(
        self,
        tag: str,
        port: int = 8080,
        priorities: dict[str, int] | None = None,
        quick_check: float = QUICK_CHECK,
    ) -> None:
        """The sample service as ``tag`` on ``port``: created on the priority-1 server,
        extended to the others, checked every ``quick_check`` s, in service on its
        priority-1 server."""
        priorities = priorities or PRIORITIES
        order = sorted(priorities, key=lambda s: priorities[s])
        first = order[0]
        body = {"tag": tag, "kit": "app", "server": first, "properties": commands(port)}
        self.ok("POST", "/v1/resources", body)
        for server in order[1:]:
            extend = {"server": server, "priority": priorities[server]}
            self.ok("POST", f"/v1/hierarchies/{tag}/extend", extend)
        self.resource_policy(tag, quick_check_interval=quick_check)
        # the monitor reads its interval when it starts: restart it with the new one
        self.ok("POST", f"/v1/hierarchies/{tag}/out-of-service", {})
        self.ok("POST", f"/v1/hierarchies/{tag}/in-service", {"server": first})
        expected = {s: ("ISP" if s == first else "OSU") for s in order}
        self.wait_states(tag, expected)

    def state_dir(self, server: str, tag: str) -> Path:
        return self.root / server / "state" / "kits" / tag

    def pidfile(self, server: str, tag: str, port: int = 8080) -> Path:
        return self.state_dir(server, tag) / f"service-{port}.pid"

    def fail_restore(self, server: str, tag: str, fail: bool = True) -> None:
        """Make the restore of ``tag`` fail on ``server`` (or work again)."""
        marker = self.state_dir(server, tag) / FAIL_MARKER
        if fail:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("restores of this resource fail here (fault test)\n")
        else:
            marker.unlink(missing_ok=True)

    # --- faults -----------------------------------------------------------------------------

    def kill_service(self, server: str, tag: str, port: int = 8080) -> int:
        """SIGKILL the protected service on ``server``; its pid."""
        pid = int(self.pidfile(server, tag, port).read_text())
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill_agent(self, server: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to ``server``'s agent (SIGKILL: wait until it is gone); its pid."""
        pid = self.lab.agent_pid(server)
        assert pid is not None, f"no agent runs on {server}"
        self.down.add(server)
        if sig == signal.SIGSTOP:
            self.frozen.add(server)
            self.lab.stop_agent(server, sig, wait=False)
        else:
            self.lab.stop_agent(server, sig)
        return pid

    def thaw_agent(self, server: str) -> None:
        """SIGCONT a frozen agent."""
        pid = self.lab.agent_pid(server)
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        self.frozen.discard(server)
        self.down.discard(server)

    def stop_agent(self, server: str, leave_resources: bool = False) -> None:
        """POST /v1/servers/SERVER/stop and wait until the agent is gone."""
        self.ok("POST", f"/v1/servers/{server}/stop", {"leave_resources": leave_resources})
        self.down.add(server)
        wait_until(lambda: self.lab.agent_pid(server) is None, 60, f"the agent of {server} gone")
        self.lab.stop_agent(server)  # clears the lab's record of its pid

    def start_agent(self, server: str) -> None:
        try:
            self.lab.start_agent(server)
        except LabError:
            # Lab.start_agent may take a starting agent for gone: its pid is checked against
            # the server's netns before nsenter has entered it (reported as a lab bug)
            if self.lab.agent_pid(server) is None:
                raise
            self.lab.start_agent(server)  # it runs: wait for its health check
        self.down.discard(server)

    def link(self, server: str, up: bool) -> None:
        """Set ``server``'s host-side veth down (its only link) or up again."""
        veth = self.lab.names.host_veth(server)
        subprocess.run(["ip", "link", "set", veth, "up" if up else "down"], check=True)

    # --- logs -------------------------------------------------------------------------------

    def agent_log(self, server: str) -> str:
        path = self.root / server / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def guard_log(self, server: str) -> str:
        path = self.root / server / "state" / "fence-guard.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- between tests ----------------------------------------------------------------------

    def reset(self) -> None:
        """Back to three running agents, default server policies, no hierarchies, no
        service running anywhere."""
        for server in list(self.frozen):
            self.thaw_agent(server)
        for server in SERVERS:
            self.link(server, up=True)
            self.start_agent(server)
        self.down.clear()
        for server in SERVERS:
            self.server_policy(server, **dict.fromkeys(SERVER_POLICIES))
        for view in self.status()["hierarchies"]:
            answer = self.request("DELETE", f"/v1/hierarchies/{view['name']}")
            if answer.status_code != 200:  # e.g. still moving: take it out of service first
                self.request("POST", f"/v1/hierarchies/{view['name']}/out-of-service", {})
                self.ok("DELETE", f"/v1/hierarchies/{view['name']}")
        wait_until(lambda: not self.status()["hierarchies"], 60, "no hierarchy left")
        # every agent cleans up after a deleted resource: its state directory goes
        kits = [self.root / s / "state" / "kits" for s in SERVERS]
        wait_until(
            lambda: not any(d.exists() and any(d.iterdir()) for d in kits) or None,
            30,
            "the state directories of deleted resources removed",
        )
        wait_until(lambda: not self.services(), 30, "no sample service left running")

    def services(self) -> dict[str, list[int]]:
        """server -> pids of sample service daemons running in it (any port)."""
        netns = {ns_key(NETNS_DIR / s.netns): s.name for s in self.info.servers}
        found: dict[str, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            if b"vigil.kits.app.sample_service\x00start" not in cmdline:
                continue
            server = netns.get(ns_key(f"/proc/{entry.name}/ns/net"))
            if server is not None and alive(entry.name):
                found.setdefault(server, []).append(int(entry.name))
        return found
