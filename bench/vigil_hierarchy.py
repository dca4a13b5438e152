"""vigil under test: an app + ip hierarchy on the bench lab's two servers.

Set-up through the API, as ``tests/integration/test_ip_kit.py`` does: a comm path, the ip
resource ``vbvip`` (the virtual address, /24, on ``eth0``), the app resource ``vbweb``
(the sample service bound to 0.0.0.0:8080, its commands as in the integration tests'
``service_commands``), ``vbweb`` depending on ``vbvip``, the hierarchy extended to the
second server. Tags start with ``vb``: the agents' cgroups are named
``<cgroup2>/vigil/<server>/<tag>`` on the host, the same for every lab, so a tag another
lab uses too (``web``) would share a cgroup with it.

Lease settings: ``Lab.up(lease=...)`` sets them for a whole lab, once; the bench switches
them between settings in one lab, so it rewrites each server's ``agent.toml`` (with the
lab's own writer, ``vigil.lab.files.write_agent_config``) before it starts the agents.

The faults: SIGKILL of the active server's agent (its fence guard, a separate process,
is the layer that must then take the service and the address down before the lease
expires), and the active server's link cut (only meaningful when the store is not a file
every server reaches: see ``unsupported``).
"""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
from benchlab import PORT, SERVICE_LAUNCH, BenchLab

from vigil.agent.config import LeaseSettings, load_config
from vigil.lab import files

NAME = "vigil"
APP, IP = "vbweb", "vbvip"


def write_lease(config_file: Path, lease: LeaseSettings | None) -> None:
    """Rewrite a lab agent's configuration with these ``[lease]`` settings (None: the
    agent's defaults), through the lab's own writer, which checks the agent accepts it."""
    config = load_config(config_file)
    assert config.log_file is not None
    files.write_agent_config(
        config_file,
        server=config.server,
        address=config.api.listen,
        port=config.api.port,
        store_url=config.store,
        state_dir=config.state_dir,
        tokens_file=config.tokens_file,
        log_file=config.log_file,
        tls=config.tls,  # the lab's certificates: the lab runs with TLS
        secrets_key_file=config.secrets_key_file,
        lease=lease,
    )


def describe(settings: LeaseSettings | None) -> str:
    s = settings or LeaseSettings()
    return (
        f"ttl {s.ttl:g} renew {s.renew_interval:g} timeout {s.request_timeout:g} "
        f"margin {s.safety_margin:g}"
    )


def service_commands(port: int) -> dict[str, str]:
    """The app kit's commands for the sample service (as the integration tests')."""
    service = f"{sys.executable} -c {shlex.quote(SERVICE_LAUNCH)}"  # see benchlab
    pidfile = f"--pidfile $VIGIL_STATE_DIR/service-{port}.pid"
    return {
        "restore": f"{service} start {pidfile} --bind 0.0.0.0 --port {port} --name $VIGIL_SERVER",
        "remove": f"{service} stop {pidfile}",
        "quick_check": f"{service} status {pidfile} --port {port}",
    }


class Vigil:
    """vigil's agents on the bench lab with one set of lease settings."""

    tool = NAME

    def __init__(
        self,
        bench: BenchLab,
        label: str,
        lease: LeaseSettings | None,
        store: str = "embedded",
        probe_wait: float | None = None,
    ) -> None:
        self.bench = bench
        self.lease = lease
        self.store = store
        #: the ip resource's duplicate-address probe (None: the kit's default)
        self.probe_wait = probe_wait
        probe = f", ip probe_wait {probe_wait:g}" if probe_wait is not None else ""
        self.setting = f"{label} ({describe(lease)}{probe})"
        self.window = 20.0
        token = bench.info.tokens["administrator"]
        # the lab's agents serve HTTPS; the bench does not check their certificates: no CA
        # file read (a CA bundle being replaced on the host while the bench runs once
        # failed a client's creation)
        self._client = httpx.Client(
            timeout=60.0,
            trust_env=False,
            verify=False,
            headers={"authorization": f"Bearer {token}"},
        )

    def unsupported(self, scenario: str) -> str | None:
        return None

    def note(self, scenario: str) -> str | None:
        if scenario == "linkcut" and self.store == "embedded":
            return (
                "a server partition is not measurable on the embedded store: the store is a "
                "file every lab server reaches, so a cut link does not cut the server off "
                "the store and no lease expires. What these runs measure is the ip kit's "
                "quick check (every 2 s) finding eth0 without carrier, local recovery "
                "failing, and the hierarchy failing over as a resource failure"
            )
        if scenario == "linkcut":
            return (
                "the cut server loses etcd: its agent (and fence guard) take the service and "
                "the address down at ttl - safety margin; the other server takes over when "
                "its heartbeat has not advanced for ttl by the other's clock; the "
                "ip kit's carrier check on the cut server may act first"
            )
        if scenario == "sigkill":
            return (
                "the killed agent's fence guard (a separate process, left running) takes "
                "the service and the address down before the lease can expire; the other "
                "server restores the hierarchy once it has expired (ip restore includes the "
                "ARP duplicate-address probe: probe_wait, 0.1 s by default)"
            )
        return None

    # -- the API ----------------------------------------------------------------------
    def _api(self, method: str, path: str, body: Any = None, server: str | None = None) -> Any:
        for candidate in [server] if server else self.bench.servers:
            if self.bench.lab.agent_pid(candidate) is None:
                continue
            url = self.bench.info.server(candidate).api_url + path
            answer = self._client.request(method, url, json=body)
            if answer.status_code == 404 and method == "GET":
                return None
            if answer.status_code != 200:
                raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text}")
            return answer.json()
        raise RuntimeError(f"{method} {path}: no agent is running")

    def _create(self) -> None:
        first, second = self.bench.servers[:2]
        info = self.bench.info
        self._api(
            "POST",
            "/v1/commpaths",
            {
                "local": first,
                "local_address": info.server(first).address,
                "remote": second,
                "remote_address": info.server(second).address,
            },
        )
        ip = {"address": self.bench.vip, "prefix": 24, "interface": "eth0"}
        self._api(
            "POST", "/v1/resources", {"tag": IP, "kit": "ip", "server": first, "properties": ip}
        )
        app = {"tag": APP, "kit": "app", "server": first, "properties": service_commands(PORT)}
        self._api("POST", "/v1/resources", app)
        self._api("POST", "/v1/dependencies", {"parent": APP, "child": IP})
        self._api("POST", f"/v1/hierarchies/{APP}/extend", {"server": second})

    # -- the subject's contract -------------------------------------------------------
    def start(self) -> None:
        for server in self.bench.servers:
            write_lease(self.bench.info.server(server).config_file, self.lease)
            self.bench.lab.start_agent(server, wait=False)
        for server in self.bench.servers:
            self.bench.lab.start_agent(server, wait=True)
        if self._api("GET", f"/v1/resources/{APP}") is None:
            self._create()
        # this setting's probe (null: back to the kit's default, as another setting left it)
        body = {"properties": {"probe_wait": self.probe_wait}}
        self._api("PATCH", f"/v1/resources/{IP}/properties", body)

    def states(self) -> dict[str, str]:
        """server -> state of the app resource."""
        shown = self._api("GET", f"/v1/resources/{APP}") or {}
        return {i["server"]: i["state"] for i in shown.get("instances", [])}

    def ready(self) -> str | None:
        for server in self.bench.servers:
            if self.bench.lab.agent_pid(server) is None:
                return f"the agent of {server} is not running"
        try:
            states = self.states()
        except Exception as exc:  # not ready, whatever the reason; the bench waits
            return f"the API does not answer: {type(exc).__name__}: {exc}"
        if sorted(states.values()) != ["ISP", "OSU"]:
            return f"{APP} is not in service on one server with a ready standby: {states}"
        return None

    def kill_manager(self, server: str) -> str:
        pid = self.bench.lab.agent_pid(server)
        self.bench.lab.stop_agent(server, signal.SIGKILL)
        return f"SIGKILL to the agent (pid {pid}) on {server}; its fence guard keeps running"

    def repair(self, server: str, scenario: str) -> None:
        if scenario == "sigkill":
            self.bench.lab.start_agent(server, wait=True)

    def stop(self) -> None:
        try:
            for server in self.bench.servers:
                self.bench.lab.stop_agent(server, signal.SIGTERM, timeout=30.0)
        finally:
            self._client.close()

    def logs(self) -> dict[str, Path]:
        """name -> log file, for the bench to keep after an odd run."""
        found = {}
        for server in self.bench.servers:
            info = self.bench.info.server(server)
            found[f"{server}-agent.log"] = info.config_file.parent / "agent.log"
            found[f"{server}-agent.out"] = info.agent_out
            found[f"{server}-fence-guard.log"] = (
                info.config_file.parent / "state" / "fence-guard.log"
            )
        return found

    def diagnose(self) -> str:
        """What the agents say about the hierarchy now (for a run that went wrong)."""
        try:
            shown = self._api("GET", f"/v1/resources/{APP}") or {}
        except (RuntimeError, httpx.HTTPError) as exc:
            return f"no answer from the API: {exc}"
        return "; ".join(
            f"{i['server']}: {i['state']} ({i.get('reason', '')})"
            for i in shown.get("instances", [])
        )
