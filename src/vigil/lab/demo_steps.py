"""The demo's steps (``vigil.lab.demo``): running ``vigil`` commands, building the
hierarchy, and showing what a client of the service sees.

The hierarchy ``web`` protects the app kit's sample HTTP service; it depends on three
resources, each created on node1 with a real ``vigil`` command printed before it runs::

    web (app: the sample service, its counter on the volume)
     ├── web-ip  (ip: 10.213.I.100, the address clients use)
     ├── web-dns (dns: web.lab.example. → the address of the server in service)
     └── web-vol (volume: the lab's shared disk, mounted at /srv/web)
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx

from vigil.lab.disk import SharedDiskInfo
from vigil.lab.dns import DnsServerInfo
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab
from vigil.lab.probe import client_view

TAG = "web"
PORT = 8080
MOUNT_POINT = "/srv/web"
VIP_OCTET = 100
CLIENT = "client1"
DNS_WHERE = "client50"


@dataclass
class Demo:
    """Everything the demo built, and the last counter the client saw."""

    lab: Lab
    info: LabInfo
    dns: DnsServerInfo
    disk: SharedDiskInfo
    last_counter: int = 0

    @property
    def vip(self) -> str:
        return self.info.subnet.rsplit(".", 1)[0] + f".{VIP_OCTET}"

    def address(self, server: str) -> str:
        return self.info.server(server).address


def say(text: str) -> None:
    print(text, flush=True)


def vigil(demo: Demo, *args: str, check: bool = True) -> int:
    """Print ``$ vigil ARGS`` (the TSIG secret shown as where it comes from) and run it."""
    shown = []
    for arg in args:
        if demo.dns.secret in arg:
            shown.append(arg.replace(demo.dns.secret, f'"$(cat {demo.dns.secret_file})"'))
        else:
            shown.append(shlex.quote(arg))
    say(f"\n$ vigil {' '.join(shown)}")
    env = {**os.environ, "VIGIL_CLIENT_CONFIG": str(demo.info.client_file)}
    done = subprocess.run([sys.executable, "-m", "vigil", *args], env=env, check=False)
    if check and done.returncode != 0:
        raise SystemExit(f"demo: 'vigil {' '.join(shown)}' failed with exit code {done.returncode}")
    return done.returncode


def comm_paths(demo: Demo) -> None:
    names = [s.name for s in demo.info.servers]
    for i, one in enumerate(names):
        for other in names[i + 1 :]:
            vigil(
                demo,
                "commpath", "create",
                "--local", one, "--local-address", demo.address(one),
                "--remote", other, "--remote-address", demo.address(other),
            )  # fmt: skip


def service_commands() -> dict[str, str]:
    """App-kit commands of the sample service, its counter kept on the volume."""
    service = f"{sys.executable} -m vigil.kits.app.sample_service"
    pidfile = "--pidfile $VIGIL_STATE_DIR/service.pid"
    start = f"--bind 0.0.0.0 --port {PORT} --name $VIGIL_SERVER --data-dir {MOUNT_POINT}"
    return {
        "restore": f"{service} start {pidfile} {start}",
        "remove": f"{service} stop {pidfile}",
        "quick_check": f"{service} status {pidfile} --port {PORT}",
    }


def create_hierarchy(demo: Demo) -> None:
    """The three resources below ``web``, then ``web`` and its dependencies, on node1."""
    disk, dns = demo.disk, demo.dns
    vigil(
        demo, "resource", "create", f"{TAG}-vol", "--kit", "volume", "--server", "node1",
        "-p", f"device={disk.device('node1')}", "-p", f"mount_point={MOUNT_POINT}",
        "-p", f"filesystem_uuid={disk.uuid}",
    )  # fmt: skip
    vigil(
        demo, "resource", "create", f"{TAG}-ip", "--kit", "ip", "--server", "node1",
        "-p", f"address={demo.vip}", "-p", "prefix=24", "-p", "interface=eth0",
    )  # fmt: skip
    vigil(
        demo, "resource", "create", f"{TAG}-dns", "--kit", "dns", "--server", "node1",
        "-p", f"zone={dns.zone}", "-p", f"name={TAG}", "-p", f'servers=["{dns.endpoint}"]',
        "-p", f"tsig_key={dns.key_name}", "-p", f"tsig_secret={dns.secret}",
        "-p", f"address={demo.address('node1')}", "-p", "ttl=5",
    )  # fmt: skip
    props = [f"--property={name}={command}" for name, command in service_commands().items()]
    vigil(demo, "resource", "create", TAG, "--kit", "app", "--server", "node1", *props)
    for child in ("ip", "dns", "vol"):
        vigil(demo, "dependency", "create", TAG, f"{TAG}-{child}")


def extend(demo: Demo, server: str, priority: int) -> None:
    """Extend the hierarchy; the volume on ``server``'s own loop device onto the disk."""
    device = f"{TAG}-vol.device={demo.disk.device(server)}"
    vigil(demo, "extend", TAG, "--to", server, "--priority", str(priority), "-p", device)


def where_it_runs(demo: Demo) -> str:
    """Per server: whether the address is up there and the volume mounted there."""
    parts = []
    for server in demo.info.servers:
        addresses = demo.lab.exec(
            server.name, ["ip", "-4", "-br", "addr", "show", "dev", "eth0"],
            capture_output=True, text=True, timeout=10,
        ).stdout  # fmt: skip
        mounted = demo.lab.exec(
            server.name, ["findmnt", "-n", "-o", "SOURCE", "--mountpoint", MOUNT_POINT],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        has = [f"{demo.vip} up"] if f" {demo.vip}/" in addresses else []
        has += [f"{MOUNT_POINT} mounted ({mounted})"] if mounted else []
        parts.append(f"{server.name}: {', '.join(has) or '-'}")
    return "; ".join(parts)


def _answer(seen: dict[str, Any]) -> tuple[str, int | None]:
    if "answer" not in seen:
        return f"no answer ({seen.get('error', '?')})", None
    lines = seen["answer"]
    counter = int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else None
    return f"answered by {lines[0]}, counter {lines[1] if len(lines) > 1 else '?'}", counter


def show_client_view(demo: Demo) -> dict[str, Any]:
    """Run the probe in the client and print what it saw; returns it."""
    client = demo.lab.names.client_address(CLIENT)
    seen = client_view(
        demo.lab, CLIENT, address=demo.vip, port=PORT, name=demo.dns.fqdn(TAG),
        dns=demo.dns.address, dns_port=demo.dns.port,
    )  # fmt: skip
    say(f"\nWhat the client ({CLIENT}, {client}, another network namespace) sees:")
    text, first = _answer(seen["by_address"])
    say(f"  by address  GET http://{demo.vip}:{PORT}/  -> {text}")
    named = seen["by_name"]
    resolved = ", ".join(named.get("resolved", [])) or "-"
    text, second = _answer(named)
    say(f"  by name     {named['name']} -> {resolved} (asked {demo.dns.address}) -> {text}")
    counters = [c for c in (first, second) if c is not None]
    if counters:
        kept = "kept" if min(counters) > demo.last_counter else "LOST"
        say(
            f"  data        the counter lives on the volume: {demo.last_counter} before, "
            f"{max(counters)} now ({kept})"
        )
        demo.last_counter = max(counters)
    say(f"  servers     {where_it_runs(demo)}")
    return seen


def status_of(demo: Demo, server: str) -> dict[str, str]:
    """server → state of ``web`` as ``server``'s agent reports it ({} if unreachable)."""
    token = demo.info.tokens["administrator"]
    try:
        reply = httpx.get(
            f"{demo.info.server(server).api_url}/v1/resources/{TAG}",
            headers={"authorization": f"Bearer {token}"},
            timeout=2.0,
            trust_env=False,
        )
        instances = reply.json()["instances"]
    except (httpx.HTTPError, ValueError, KeyError):
        return {}
    return {i["server"]: i["state"] for i in instances}


def wait_in_service(demo: Demo, server: str, ask: str, timeout: float = 60.0) -> float:
    """Wait until ``ask``'s agent reports ``web`` in service on ``server`` and the client
    gets an answer from it by the address; seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if status_of(demo, ask).get(server) == "ISP":
            url = f"http://{demo.vip}:{PORT}/health"
            seen = demo.lab.client_exec(
                CLIENT, ["curl", "-s", "-m", "1", url], capture_output=True, timeout=10
            )
            if seen.returncode == 0:
                return time.monotonic() - started
        time.sleep(0.1)
    raise SystemExit(f"demo: {TAG} did not come in service on {server} within {timeout:g}s")
