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

A kit that acts on its server's network namespace (``ip``) runs in a namespace the case
creates: the case sets ``KitEnvironment.run`` to a runner that executes each action on an
event loop in a thread that entered that namespace (``NamespaceLoop``). Other kits keep
the default, which runs the action on the test's own loop.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.thread_loop import ThreadLoop, libc, libc_check

from vigil.kits.process import pid_alive

#: runs one kit action (a coroutine function without arguments) somewhere and returns its
#: result: on the test's loop (``run_here``), or in a network namespace (``NamespaceLoop``)
Runner = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


async def run_here(action: Callable[[], Awaitable[Any]]) -> Any:
    """The default runner: the action runs on the test's own event loop."""
    return await action()


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
    #: where the kit's actions run (default: the test's event loop)
    run: Runner = run_here


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


# --- ip: a private pair of network namespaces -------------------------------------------

CLONE_NEWNET = 0x40000000


class NamespaceLoop(ThreadLoop):
    """An event loop in a thread that entered the network namespace at ``netns_path``:
    netlink and packet sockets opened on it, and processes started from it, live there."""

    def __init__(self, netns_path: str) -> None:
        self.netns_path = netns_path
        super().__init__(f"netns {netns_path}")

    def _enter(self) -> None:
        fd = os.open(self.netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc_check(libc().setns(fd, CLONE_NEWNET), f"setns({self.netns_path})")
        finally:
            os.close(fd)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=check)


def processes_in_netns(netns_path: str) -> list[int]:
    """Processes (other than this one) whose network namespace is the one at the path."""
    key = os.stat(netns_path)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (key.st_dev, key.st_ino) and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def ip_case(workdir: Path) -> KitEnvironment:
    """The ip kit in a private namespace ``server`` joined by a veth to a namespace
    ``peer``; the switchable address must answer the peer's ping."""
    server, peer = f"vigil-kitcase-{os.getpid()}-server", f"vigil-kitcase-{os.getpid()}-peer"
    subnet = "198.51.100"  # TEST-NET-2: only ever inside these two namespaces
    address = f"{subnet}.7"
    loop: list[NamespaceLoop] = []

    def cleanup() -> None:
        for running in loop:
            running.close()
        for name in (server, peer):
            sh("ip", "netns", "delete", name, check=False)

    try:
        for name in (server, peer):
            sh("ip", "netns", "add", name)
            sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "-n", name, "link", "set", "lo", "up")
        veth = ["type", "veth", "peer", "name", "eth0", "netns", peer]
        sh("ip", "-n", server, "link", "add", "eth0", *veth)
        for name, octet in ((server, 1), (peer, 2)):
            sh("ip", "-n", name, "addr", "add", f"{subnet}.{octet}/24", "dev", "eth0")
            sh("ip", "-n", name, "link", "set", "eth0", "up")
        loop.append(NamespaceLoop(f"/run/netns/{server}"))
    except BaseException:
        cleanup()
        raise

    def configured() -> bool:
        shown = sh("ip", "-n", server, "-4", "-o", "addr", "show").stdout
        return f" {address}/" in shown

    def pings() -> bool:
        ping = ["ping", "-n", "-q", "-c", "1", "-W", "1", address]
        return sh("ip", "netns", "exec", peer, *ping, check=False).returncode == 0

    return KitEnvironment(
        properties={
            "address": address,
            "netmask": "255.255.255.0",
            "interface": "eth0",
            "ping_list": [f"{subnet}.2"],
        },
        answers=lambda: configured() and pings(),
        gone=lambda: (
            not configured() and not pings() and not processes_in_netns(f"/run/netns/{server}")
        ),
        cleanup=cleanup,
        run=loop[0].run,
    )


#: every kit's conformance case
CASES: list[KitCase] = [
    KitCase("app", app_case),
    KitCase("ip", ip_case, marks=(pytest.mark.lab,)),
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


# --- volume: a loop device, mounted in a private mount namespace --------------------------


def volume_case(workdir: Path) -> KitEnvironment:
    """The volume kit on a loop device onto an ext4 image (multi-mount protection on),
    its actions run on a loop inside a private mount namespace (``MountNamespaceLoop``):
    the host's mount namespace never sees the mount."""
    from tests.shared_disk import MountNamespaceLoop, SharedDisk, host_mounts

    disk = SharedDisk(workdir / "disk.img").create(servers=1)
    mount_point = str(workdir / "volume")
    namespace: list[MountNamespaceLoop] = []

    def cleanup() -> None:
        for loop in namespace:
            if loop.mounted(mount_point):
                loop.sh("umount", "-l", mount_point, check=False)
            loop.close()
        left = disk.detach()
        assert not left, f"loop devices still attached to {disk.image}: {left}"

    try:
        namespace.append(MountNamespaceLoop())
    except BaseException:
        cleanup()
        raise
    loop = namespace[0]

    def answers() -> bool:
        if host_mounts(mount_point) or not loop.mounted(mount_point):
            return False
        probe = loop.sh("sh", "-c", f"echo probe > {mount_point}/probe && cat {mount_point}/probe")
        return probe.stdout == "probe\n"

    def released() -> bool:
        # O_EXCL on a block device fails (EBUSY) while a filesystem on it is mounted
        # anywhere on the host, in any mount namespace
        try:
            os.close(os.open(disk.devices[0], os.O_RDONLY | os.O_EXCL))
        except OSError:
            return False
        return True

    def gone() -> bool:
        return released() and not loop.mounted(mount_point) and not host_mounts(mount_point)

    return KitEnvironment(
        properties={
            "device": disk.devices[0],
            "mount_point": mount_point,
            "filesystem_uuid": disk.uuid,
            "mount_options": "noatime",
        },
        answers=answers,
        gone=gone,
        cleanup=cleanup,
        run=loop.run,
    )


CASES.append(KitCase("volume", volume_case, marks=(pytest.mark.lab,)))


# --- mail: Postfix and Dovecot in a lab server, users in the lab's directory ------------


class ServerLoop(ThreadLoop):
    """An event loop on a thread inside a lab server: its network namespace and its own
    mount namespace (where its mail configuration and mail store are)."""

    def __init__(self, netns_path: Path, mount_ns: Path) -> None:
        self.paths = (netns_path, mount_ns)
        super().__init__(f"lab server {netns_path.name}")

    def _enter(self) -> None:
        c = libc()
        libc_check(c.unshare(CLONE_FS), "unshare(CLONE_FS)")  # setns(mnt) needs its own fs
        for path, kind in zip(self.paths, (CLONE_NEWNET, CLONE_NEWNS), strict=True):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc_check(c.setns(fd, kind), f"setns({path})")
            finally:
                os.close(fd)


CLONE_FS = 0x00000200
CLONE_NEWNS = 0x00020000


def mail_case(workdir: Path) -> KitEnvironment:
    """The mail kit on node1 of a lab with the mail organisation (the store mounted on
    node1, Postfix and Dovecot stopped): its actions run inside node1's namespaces, its
    checks talk to 127.0.0.1, the deep check sends the probe mailbox a message."""
    from tests.mail_lab import mail_properties

    from vigil.lab.lab import Lab
    from vigil.lab.mail.clients import MailClientError

    lab = Lab("tkmail", subnet_index=63)
    lab.down()
    loops: list[ServerLoop] = []

    def cleanup() -> None:
        for loop in loops:
            loop.close()
        lab.down()

    try:
        info = lab.up(1)
        org = lab.add_mail_org(users=2)
        server = info.server("node1")
        loops.append(ServerLoop(lab.names.netns_path("node1"), server.mount_ns))
    except BaseException:
        cleanup()
        raise
    user = org.users[0]

    def answers() -> bool:
        try:
            org.send("node1", user, "conformance", via="127.0.0.1")
        except MailClientError:
            return False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = org.fetch("node1", user, via="127.0.0.1")
            if any(subject == "conformance" for _, subject in got):
                return True
            time.sleep(0.2)
        return False

    def gone() -> bool:
        daemons = [
            pid for pid in processes_in_netns(str(lab.names.netns_path("node1")))
            if _command_name(pid) in ("master", "dovecot")
        ]  # fmt: skip
        return not daemons

    return KitEnvironment(
        properties=mail_properties(org),
        answers=answers,
        gone=gone,
        cleanup=cleanup,
        run=loops[0].run,
    )


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


CASES.append(KitCase("mail", mail_case, marks=(pytest.mark.lab,)))


# --- mirror: a replicated volume's source, in a private mount namespace (mirror_case.py) -

from mirror_case import mirror_case  # noqa: E402 (it builds on this module's helpers)

CASES.append(KitCase("mirror", mirror_case, marks=(pytest.mark.lab,)))
