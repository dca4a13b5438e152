"""The cases of the kit conformance suite (``test_kits.py``): one ``KitCase`` per kit.

A case says how to protect one real resource of its kit on this machine: given a scratch
directory, its ``setup`` returns a ``KitEnvironment``: the resource's properties, two
probes that look at the resource *without the kit* (does it really answer? is it really
gone?), and a ``cleanup`` that stops whatever may still run, whatever the test did.

To add a kit (say ``ip``), write one setup function and append one entry to ``CASES``::

    def ip_case(workdir: Path) -> KitEnvironment:
        address = "10.99.0.7"
        return KitEnvironment(
            properties={"address": address, "prefix": 24, "interface": "dummy0"},
            answers=lambda: address_configured(address),
            gone=lambda: not address_configured(address),
            cleanup=lambda: remove_address(address),
        )

    CASES.append(KitCase("ip", ip_case, marks=(pytest.mark.lab,)))

``test_kits.py`` fails when a registered kit has no case, so a new kit cannot skip the suite.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from vigil.kits.process import pid_alive


@dataclass
class KitEnvironment:
    """One resource to put through the conformance sequence."""

    #: raw property values, as an administrator would give them
    properties: dict[str, Any]
    #: True when the resource really works (checked without the kit)
    answers: Callable[[], bool]
    #: True when nothing of the resource runs any more (checked without the kit)
    gone: Callable[[], bool]
    #: stops whatever may still run; must not fail when nothing runs
    cleanup: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class KitCase:
    """How to run the conformance sequence for one kit."""

    kit: str
    setup: Callable[[Path], KitEnvironment]
    #: pytest marks for the case (e.g. ``pytest.mark.lab`` for kits that need root)
    marks: tuple[pytest.MarkDecorator, ...] = field(default=())


# --- app: the sample service ------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def processes_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``text``."""
    found = []
    needle = text.encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                if needle in cmdline.read() and pid_alive(int(entry.name)):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def app_case(workdir: Path) -> KitEnvironment:
    """The app kit protecting ``sample_service`` on 127.0.0.1 and a free port."""
    port = free_port()
    pidfile = workdir / "sample.pid"
    data = workdir / "data"
    data.mkdir()
    service = f"{shlex.quote(sys.executable)} -m vigil.kits.app.sample_service"
    name = "conformance-app"
    common = f"--pidfile {shlex.quote(str(pidfile))} --bind 127.0.0.1 --port {port} --name {name}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as reply:
                return bool(reply.read().decode().startswith(f"{name}\n"))
        except OSError:
            return False

    def gone() -> bool:
        return not processes_mentioning(str(pidfile)) and not port_open(port)

    def cleanup() -> None:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "vigil.kits.app.sample_service",
                "stop",
                "--pidfile",
                str(pidfile),
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        for pid in processes_mentioning(str(pidfile)):
            os.kill(pid, signal.SIGKILL)

    return KitEnvironment(
        properties={
            "restore": f"{service} start {common} --data-dir {shlex.quote(str(data))}",
            "remove": f"{service} stop {common}",
            "quick_check": f"{service} status {common}",
            "deep_check": f"{service} status {common}",
            "restore_timeout": 20,
            "remove_timeout": 20,
        },
        answers=answers,
        gone=gone,
        cleanup=cleanup,
    )


#: every kit's conformance case
CASES: list[KitCase] = [
    KitCase("app", app_case),
]


# --- dns: an A record on a real BIND on 127.0.0.1 ------------------------------------------


def dns_case(workdir: Path) -> KitEnvironment:
    """The dns kit keeping ``conformance.lab.example.`` (and its PTR) at 192.0.2.10, on a
    BIND started on 127.0.0.1 for the case (``cleanup`` stops it).

    "Stopped" for dns means the record does not point at this server's address. The kit
    leaves the records on remove by default (as the original product does: the next
    restore elsewhere rewrites them); the case sets ``remove_records`` so remove deletes
    them where they still point here, which is what the sequence checks."""
    from contextlib import ExitStack

    from tests.bind_server import bind_server

    stack = ExitStack()
    bind = stack.enter_context(bind_server(network="192.0.2.0/24"))
    name, address = "conformance", "192.0.2.10"
    fqdn = bind.fqdn(name)

    def answers() -> bool:
        return bind.lookup(name) == {address} and fqdn in bind.ptr(address)

    def gone() -> bool:
        return address not in bind.lookup(name) and fqdn not in bind.ptr(address)

    return KitEnvironment(
        properties=bind.kit_properties(name, address, remove_records=True, request_timeout=3),
        answers=answers,
        gone=gone,
        cleanup=stack.close,
    )


CASES.append(KitCase("dns", dns_case))
