"""Waiting for a lab's agents to answer their health check, and saying why one did not."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx

from vigil.agent.tls import client_context
from vigil.errors import LabError
from vigil.lab import processes
from vigil.lab.naming import LabNames, api_url

if TYPE_CHECKING:
    from vigil.lab.lab import Lab

HEALTH_PATH = "/v1/health"


def wait_healthy(lab: Lab, servers: list[str], timeout: float) -> None:
    """Wait until the agent of each of ``servers`` answers ``GET /v1/health`` with 200;
    ``LabError`` (with the tails of its output and log) when one exits or is late."""
    deadline = time.monotonic() + timeout
    pending = list(servers)
    state = lab._state()
    urls = {s: api_url(state.servers[s].address) + HEALTH_PATH for s in servers}
    last: dict[str, str] = {}
    # trust_env=False: never send lab traffic to a proxy outside the lab
    verify = client_context(lab.names.ca_file)  # the lab's agents serve HTTPS
    with httpx.Client(trust_env=False, timeout=1.0, verify=verify) as client:
        while pending:
            for server in list(pending):
                if lab.agent_pid(server) is None and not _reappears(lab, server):
                    raise agent_error(lab.names, server, "exited before answering its health check")
                try:
                    answer = client.get(urls[server])
                except httpx.HTTPError as exc:
                    last[server] = f"{type(exc).__name__}: {exc}"
                    continue
                if answer.status_code == 200:
                    pending.remove(server)
                else:
                    last[server] = f"HTTP {answer.status_code}"
            if pending and time.monotonic() > deadline:
                server = pending[0]
                raise agent_error(
                    lab.names,
                    server,
                    f"did not answer GET {urls[server]} with "
                    f"200 within {timeout:.0f} s (last: {last.get(server, 'nothing')})",
                )
            if pending:
                time.sleep(0.1)


def _reappears(lab: Lab, server: str) -> bool:
    """Whether ``server``'s agent is found again a moment later: while ``nsenter`` execs
    the agent, its pid can briefly look like a process outside the server (under load,
    a freshly started agent was reported as exited)."""
    for _ in range(3):
        time.sleep(0.1)
        if lab.agent_pid(server) is not None:
            return True
    return False


def agent_error(names: LabNames, server: str, what: str) -> LabError:
    """A ``LabError`` saying what the agent on ``server`` did, with its last output."""
    out = names.agent_out(server)
    message = [f"the agent on {server} {what}; last lines of {out}:"]
    message += [f"  {line}" for line in (processes.tail(out) or "(empty)").splitlines()]
    log = names.server_dir(server) / "agent.log"
    log_tail = processes.tail(log, lines=10)
    if log_tail:
        message.append(f"last lines of {log}:")
        message += [f"  {line}" for line in log_tail.splitlines()]
    return LabError("\n".join(message))
