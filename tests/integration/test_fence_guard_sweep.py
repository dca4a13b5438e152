"""After a fence, the guard keeps undoing what comes back until the agent renews.

An agent frozen between its last trust check and the start of a service, thawed after its
deadline, would start that service on a server whose hierarchies another server has
taken over. Real processes in a real cgroup, a real address in a network namespace of its
own, a real tmpfs mount; a real fence guard.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.helpers import wait_for
from vigil.agent.fencing import Cgroups, FencePlan

ADDRESS = "10.213.121.5"  # the lab's private range; only inside this test's namespace


@dataclass
class Server:
    """One server's worth of what a plan names, and the processes the test started."""

    netns: str
    state: Path
    cgroup: Path
    mount: Path
    cgroups: Cgroups
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ip(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "-n", self.netns, *argv], capture_output=True, text=True, check=False
        )

    def has_address(self) -> bool:
        return ADDRESS in self.ip("-o", "addr", "show", "dev", "lo").stdout

    def service(self) -> subprocess.Popen[bytes]:
        """A process that joins the resource's cgroup, as a kit's start does."""
        process = subprocess.Popen(["sleep", "600"])
        self.started.append(process)
        cgroup = self.cgroups.path("svc")  # made again, as the agent's runner does: the
        assert cgroup == self.cgroup  # fence removed it
        (cgroup / "cgroup.procs").write_text(str(process.pid))
        return process

    def restore(self) -> subprocess.Popen[bytes]:
        """What a thawed agent's restore brings back: a service, an address, a mount."""
        assert self.ip("addr", "add", f"{ADDRESS}/32", "dev", "lo").returncode == 0
        subprocess.run(["mount", "-t", "tmpfs", "vol", str(self.mount)], check=True)
        return self.service()

    def plan(self, agent: int, due_in: float) -> None:
        FencePlan(
            "node1",
            agent,
            deadline=time.monotonic() + due_in,
            cgroups=[str(self.cgroup)],
            addresses=[(ADDRESS, 32, "lo")],
            mounts=[str(self.mount)],
        ).write(self.state)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    netns = f"vigil-tgsw-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    cgroups = Cgroups("node1", tmp_path / "state")
    cgroup = cgroups.path("svc")
    if cgroup is None:
        subprocess.run(["ip", "netns", "del", netns], check=False)
        pytest.skip("no cgroup v2 here")
    (tmp_path / "vol").mkdir()
    made = Server(netns, tmp_path / "state", cgroup, tmp_path / "vol", cgroups)
    try:
        made.ip("link", "set", "lo", "up")
        yield made
    finally:
        for process in made.started:
            with contextlib.suppress(OSError):
                process.kill()
            process.wait()
        while os.path.ismount(made.mount):
            subprocess.run(["umount", str(made.mount)], check=False)
        cgroups.remove_all()
        subprocess.run(["ip", "netns", "del", netns], check=False)


@contextlib.contextmanager
def guarded(server: Server) -> Iterator[list[str]]:
    """A real guard in the server's network namespace (the host's mounts); the list holds
    its log lines once the block has ended."""
    log: list[str] = []
    process = subprocess.Popen(
        [
            *("nsenter", f"--net=/run/netns/{server.netns}"),
            *(sys.executable, "-m", "vigil.agent.fenceguard", str(server.state), "0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield log
    finally:
        process.kill()
        out, _ = process.communicate(timeout=10)
        log.extend(out.splitlines())


def test_what_a_thawed_agent_brings_back_is_undone_until_it_renews(server: Server) -> None:
    agent = subprocess.Popen(["sleep", "600"])  # the agent: running, not renewing
    server.started.append(agent)
    first = server.restore()
    server.plan(agent.pid, due_in=1.0)
    with guarded(server) as log:
        wait_for(lambda: (server.state / "fenced.json").exists(), 30, "the fence")
        wait_for(lambda: first.poll() is not None, 10, "the service killed by the fence")
        assert not server.has_address()  # gone before fenced.json is written
        wait_for(lambda: not os.path.ismount(server.mount), 10, "the fence's unmount")

        # thawed, the agent starts what its last trusted moment had decided: undone again
        again = server.restore()
        wait_for(lambda: again.poll() is not None, 10, "the service started after the fence")
        wait_for(lambda: not server.has_address(), 10, "the address added after the fence")
        wait_for(lambda: not os.path.ismount(server.mount), 10, "the mount after the fence")

        # renewed: a new deadline, and what it restores now stays
        server.plan(agent.pid, due_in=60.0)
        time.sleep(0.1)  # longer than the guard's poll: it has read the new plan
        kept = server.restore()
        time.sleep(1.0)  # five sweep intervals
        assert kept.poll() is None and server.has_address() and os.path.ismount(server.mount)

        # a dead agent adds no address, but a child it forked may still join the cgroup
        agent.kill()
        agent.wait()
        server.plan(agent.pid, due_in=0.0)
        wait_for(lambda: kept.poll() is not None, 10, "the service killed by the second fence")
        orphan = server.service()
        wait_for(lambda: orphan.poll() is not None, 10, "the late child killed")
    said = "\n".join(log)
    assert f"in the cgroup of svc after the fence, agent {agent.pid} not" in said, said
    assert f"address {ADDRESS}/32 on lo came back after the fence: deleted" in said, said
    assert f"{server.mount} mounted again after the fence: unmounted" in said, said
