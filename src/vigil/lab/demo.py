"""The demo (the README's first command): a protected HTTP service in a 3-server lab.

It builds the lab, protects a small real HTTP service (it answers with the name of the
server it runs on) with the app kit, extends it to both backups with priorities, switches
it over to node2 and back to node1, and after each step shows ``vigil status`` and what a
client on the host sees on each server's address. Then it tears the lab down, also when a
step fails. Every cluster step is a real ``vigil`` command, printed before it runs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

import httpx

from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab

PORT = 8080
TAG = "web"


def _vigil(info: LabInfo, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    print(f"\n$ vigil {shlex.join(args)}", flush=True)
    env = {**os.environ, "VIGIL_CLIENT_CONFIG": str(info.client_file)}
    done = subprocess.run([sys.executable, "-m", "vigil", *args], env=env, text=True, check=False)
    if check and done.returncode != 0:
        raise SystemExit(
            f"demo: 'vigil {shlex.join(args)}' failed with exit code {done.returncode}"
        )
    return done


def _client_view(info: LabInfo) -> None:
    """What a client on the host sees on each server's address."""
    print("\nA client asking each server for http://<address>:8080/ sees:", flush=True)
    for server in info.servers:
        url = f"http://{server.address}:{PORT}/"
        try:
            answer = httpx.get(url, timeout=1.0, trust_env=False).text.strip().splitlines()[0]
            seen = f"answered {answer!r}"
        except httpx.HTTPError as exc:
            seen = f"no service ({type(exc).__name__})"
        print(f"  {server.name} {server.address:<12} {seen}", flush=True)


def _service_commands() -> dict[str, str]:
    service = f"{sys.executable} -m vigil.kits.app.sample_service"
    pidfile = "--pidfile $VIGIL_STATE_DIR/service.pid"
    return {
        "restore": f"{service} start {pidfile} --bind 0.0.0.0 --port {PORT} --name $VIGIL_SERVER",
        "remove": f"{service} stop {pidfile}",
        "quick_check": f"{service} status {pidfile} --port {PORT}",
    }


def run_demo(lab: Lab) -> None:
    started = time.monotonic()
    print(
        "Building a lab of 3 servers (network and mount namespaces, one agent each)...", flush=True
    )
    info = lab.up(3)
    for server in info.servers:
        print(f"  {server.name}: {server.address}, agent API {server.api_url}")
    names = [s.name for s in info.servers]
    for i, one in enumerate(names):
        for other in names[i + 1 :]:
            _vigil(
                info,
                "commpath", "create",
                "--local", one, "--local-address", info.server(one).address,
                "--remote", other, "--remote-address", info.server(other).address,
            )  # fmt: skip
    props = [f"--property={name}={command}" for name, command in _service_commands().items()]
    _vigil(info, "resource", "create", TAG, "--kit", "app", "--server", "node1", *props)
    _vigil(info, "extend", TAG, "--to", "node2", "--priority", "10")
    _vigil(info, "extend", TAG, "--to", "node3", "--priority", "20")
    _vigil(info, "status")
    _client_view(info)
    for target in ("node2", "node1"):
        print(f"\n--- switchover to {target} ---", flush=True)
        began = time.monotonic()
        _vigil(info, "in-service", TAG, "--on", target)
        print(f"(switchover took {time.monotonic() - began:.2f}s as seen by the command)")
        _vigil(info, "status")
        _client_view(info)
    _vigil(info, "events", "--limit", "12")
    print(
        f"\nDemo finished in {time.monotonic() - started:.0f}s; tearing the lab down.", flush=True
    )


def main() -> None:
    lab = Lab("lab")
    if lab.status().exists:
        print("A lab called 'lab' exists from before; removing it first.", flush=True)
        lab.down()
    try:
        run_demo(lab)
    finally:
        lab.down()
        print("Lab removed: no namespace, bridge, process or file of it is left.", flush=True)


if __name__ == "__main__":
    main()
