"""The bench's lab: one vigil ``Lab`` of two servers, a client on its bridge, a work dir.

Everything the tools under test share lives here: where the virtual address and the
service are, how to find a tool's processes inside a server (by network namespace, as
``Lab.down`` does), how to start and stop the sample service outside vigil, and how to
cut a server's link (its host-side veth down) and mend it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vigil.lab import namespaces, processes
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab

PORT = 8080
VIP_OCTET = 100
SERVICE_MODULE = "vigil.kits.app.sample_service"
#: how every tool starts the sample service: its file run as a script, so that a start does
#: not import the ``vigil.kits.app`` package (the app kit and pydantic: 0.4 s per start on
#: these machines, which the bench used to count as failover time of every tool); the
#: module's name stays in the command line, where ``stop`` and ``status`` look for it
_SPEC = importlib.util.find_spec(SERVICE_MODULE)
assert _SPEC is not None and _SPEC.origin is not None, SERVICE_MODULE
SERVICE_LAUNCH = (
    f"import runpy, sys; sys.argv[0] = {SERVICE_MODULE!r}; "
    f"runpy.run_path({_SPEC.origin!r}, run_name='__main__')"
)


@dataclass
class BenchLab:
    """A built lab, its client and the bench's work dir (``/tmp/vbench-NAME``)."""

    lab: Lab
    info: LabInfo
    client_enter: list[str]
    workdir: Path
    client_netns: str | None = None  # set when the bench made the client itself

    @property
    def servers(self) -> list[str]:
        return [s.name for s in self.info.servers]

    @property
    def vip(self) -> str:
        return str(ipaddress.IPv4Network(self.info.subnet).network_address + VIP_OCTET)

    def netns_path(self, server: str) -> Path:
        return Path("/run/netns") / self.info.server(server).netns

    def server_dir(self, server: str) -> Path:
        path = self.workdir / server
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- processes inside a server ----------------------------------------------------
    def pids(self, server: str, comm_prefixes: tuple[str, ...]) -> list[int]:
        """Live processes inside ``server`` (its network namespace) whose name starts
        with one of ``comm_prefixes`` (``/proc/PID/comm``, 15 characters at most)."""
        key = namespaces.ns_key_of_kind(self.netns_path(server), "net")
        if key is None:
            return []
        found = []
        for pid in processes.pids_in_namespaces({key}):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith(comm_prefixes):
                found.append(pid)
        return found

    def kill(self, pids: list[int], sig: int = signal.SIGKILL) -> None:
        """``sig`` to every pid at once (as close together as the kernel allows)."""
        processes.send(pids, sig)

    # -- the sample service outside vigil ---------------------------------------------
    def service_argv(self, server: str, command: str) -> list[str]:
        pidfile = self.server_dir(server) / "service.pid"
        argv = [sys.executable, "-c", SERVICE_LAUNCH, command, "--pidfile", str(pidfile)]
        if command == "stop":
            return [*argv, "--timeout", "5"]
        return [*argv, "--bind", "0.0.0.0", "--port", str(PORT), "--name", server]

    def service_script(self, server: str) -> Path:
        """``SCRIPT start|stop|status|follow`` for ``server`` (LSB exit codes for status).

        ``follow`` (for keepalived's notify scripts, which keepalived forks without
        waiting, so a MASTER then BACKUP pair may run out of order) takes a lock, then
        starts the service if the virtual address is on ``eth0`` now and stops it if not:
        whatever the order, the last one leaves the service where the address is."""
        path = self.server_dir(server) / "service.sh"
        lock = self.server_dir(server) / "service.lock"
        start = shlex.join(self.service_argv(server, "start"))
        stop = shlex.join(self.service_argv(server, "stop"))
        status = shlex.join(self.service_argv(server, "status"))
        path.write_text(
            "#!/bin/sh\n"
            "# the sample service of the failover bench (LSB-style status: 0 running, 3 not)\n"
            'case "$1" in\n'
            f"  start) exec {start} ;;\n"
            f"  stop) exec {stop} ;;\n"
            f"  status|monitor) {status} >/dev/null 2>&1; rc=$?\n"
            "    case $rc in 0) exit 0 ;; 7) exit 3 ;; *) exit 1 ;; esac ;;\n"
            f"  follow) exec flock --close {lock} sh -c "
            f'\'if ip -4 -o addr show dev eth0 | grep -q " {self.vip}/"; '
            f"then {start}; else {stop}; fi' ;;\n"
            "  *) exit 0 ;;\n"
            "esac\n"
        )
        path.chmod(0o755)
        return path

    def stop_service(self, server: str) -> None:
        """Stop the sample service on ``server`` (by its pidfile; nothing if not running)."""
        self.lab.exec(server, self.service_argv(server, "stop"), capture_output=True, timeout=30)

    def delete_vip(self, server: str) -> None:
        self.lab.exec(
            server,
            ["ip", "addr", "del", f"{self.vip}/24", "dev", "eth0"],
            capture_output=True,
            timeout=10,
        )

    # -- links ------------------------------------------------------------------------
    def set_link(self, server: str, up: bool) -> None:
        """The server's host-side veth up or down (a pulled cable, as the server sees it)."""
        veth = self.lab.names.host_veth(server)
        subprocess.run(["ip", "link", "set", veth, "up" if up else "down"], check=True, timeout=10)


def build(name: str, subnet_index: int, **up_options: object) -> BenchLab:
    """Build the lab (two servers, no agents started) and its client."""
    lab = Lab(name, subnet_index)
    lab.down()  # leftovers of an earlier, killed run
    info = lab.up(2, start_agents=False, **up_options)  # type: ignore[arg-type]
    workdir = Path(f"/tmp/vbench-{name}")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    if hasattr(lab, "add_client"):
        client = lab.add_client("client1")
        enter = ["nsenter", f"--net={client.netns_path}", "--"]
        return BenchLab(lab, info, enter, workdir)
    netns = f"vbc-{name}"  # no client helper in this vigil: a namespace of our own
    _own_client(lab, info, netns)
    return BenchLab(lab, info, ["ip", "netns", "exec", netns], workdir, client_netns=netns)


def _own_client(lab: Lab, info: LabInfo, netns: str) -> None:
    client = ipaddress.IPv4Network(info.subnet).network_address + 200
    veth = f"vbc-{lab.name}"[:15]
    for argv in (
        ["ip", "netns", "add", netns],
        ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns],
        ["ip", "link", "set", veth, "master", info.bridge, "up"],
        ["ip", "-n", netns, "addr", "add", f"{client}/24", "dev", "eth0"],
        ["ip", "-n", netns, "link", "set", "eth0", "up"],
        ["ip", "-n", netns, "link", "set", "lo", "up"],
    ):
        subprocess.run(argv, check=True, timeout=10)


def tear_down(bench: BenchLab | None, name: str, subnet_index: int) -> list[str]:
    """Remove the lab, the bench's own client and the work dir; what could not go."""
    problems = []
    lab = bench.lab if bench else Lab(name, subnet_index)
    try:
        lab.down()
    except Exception as exc:  # keep going: report everything
        problems.append(str(exc))
    if bench is not None and bench.client_netns:
        subprocess.run(["ip", "netns", "del", bench.client_netns], capture_output=True)
    workdir = Path(f"/tmp/vbench-{name}")
    with contextlib.suppress(OSError):
        shutil.rmtree(workdir)
    if workdir.exists():
        problems.append(f"{workdir} could not be removed")
    return problems


def wait_until(condition: object, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``condition()`` until truthy or ``timeout`` s passed; whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():  # type: ignore[operator]
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def is_root() -> bool:
    return os.geteuid() == 0
