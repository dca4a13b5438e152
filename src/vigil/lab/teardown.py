"""Tearing a lab down, from its state file if there is one and by its names if not.

The order matters:

1. stop the lab's DNS servers (``named``, by their recorded pids), the agents (SIGTERM,
   up to ``AGENT_GRACE`` s, then SIGKILL), then every other process inside a lab
   namespace (SIGTERM, ``OTHER_GRACE`` s, SIGKILL), found by
   scanning ``/proc`` for the lab's namespaces; then the mail organisation's slapd and
   front-end daemons by their recorded pids, should any have escaped the scan (agents
   taking a mail service out of service may still need its directory); the etcd members
   of a lab on etcd last (agents stopping in order still need their store);
2. delete the bridge, its ports and the host-side veths (their peers go with them);
3. unmount everything under the root dir (mount-namespace files, then their private bind
   mount): with no process left inside, each server's mount namespace ends here;
4. detach loop devices whose backing file is under the root dir (shared-disk images);
5. remove the network namespaces;
6. remove the root dir, but only when nothing is mounted under it any more.

Every step runs even when an earlier one failed; each failure becomes one message.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from vigil.agent.fencing import Cgroups
from vigil.lab import clients, dns, etcd, namespaces, network, processes
from vigil.lab.files import LabState
from vigil.lab.mail import org as mail_org
from vigil.lab.naming import NETNS_DIR, LabNames, is_server_name

#: seconds agents get to take their resources out of service before SIGKILL
AGENT_GRACE = 10.0
#: seconds every other process in a lab namespace gets before SIGKILL
OTHER_GRACE = 3.0
#: seconds etcd members get (their data goes with the lab: no need to stop in order, and
#: members stopped together wait for each other)
STORE_GRACE = 0.5
#: rounds of "scan, kill, wait" (a dying process may still fork)
KILL_ROUNDS = 3


def lab_netns(names: LabNames, state: LabState | None) -> list[str]:
    """The lab's network namespaces: those in the state file and those named like it."""
    found = {n for n in network.list_netns() if names.is_netns(n)}
    if state is not None:
        found |= {s.netns for s in state.servers.values() if network.netns_exists(s.netns)}
    return sorted(found)


def namespace_keys(names: LabNames, netns_names: Iterable[str]) -> set[tuple[int, int]]:
    """Identities of the lab's network namespaces and of its servers' mount namespaces."""
    keys = set()
    for name in netns_names:
        key = namespaces.ns_key_of_kind(NETNS_DIR / name, "net")
        if key is not None:
            keys.add(key)
    if names.mount_dir.is_dir():
        for path in names.mount_dir.iterdir():
            key = namespaces.ns_key_of_kind(path, "mnt")
            if key is not None:
                keys.add(key)
    return keys


def stop_processes(
    keys: set[tuple[int, int]], agent_pids: Iterable[int], grace: float = OTHER_GRACE
) -> list[str]:
    """Stop every process inside the lab, agents first; messages for survivors."""
    inside = set(processes.pids_in_namespaces(keys))
    processes.terminate([pid for pid in agent_pids if pid in inside], AGENT_GRACE)
    for _ in range(KILL_ROUNDS):
        pids = processes.pids_in_namespaces(keys)
        if not pids:
            return []
        processes.terminate(pids, grace)
        grace = 0.5
    left = processes.pids_in_namespaces(keys)
    return [f"process {processes.describe(pid)}: still running after SIGKILL" for pid in left]


def detach_loop_devices(root: Path) -> list[str]:
    """Detach every loop device backed by a file under ``root``; messages for failures."""
    problems = []
    prefix = str(root).rstrip("/") + "/"
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            path = backing.read_text().strip()
        except OSError:
            continue  # detached meanwhile
        if path.startswith(prefix):
            device = f"/dev/{backing.parent.parent.name}"
            done = subprocess.run(["losetup", "-d", device], capture_output=True, text=True)
            if done.returncode != 0 and backing.exists():
                problems.append(f"loop device {device} ({path}): {done.stderr.strip()}")
    return problems


def servers_of(netns_names: Iterable[str], names: LabNames) -> list[str]:
    """The lab's server names, from its network namespaces (``vigil-NAME-nodeK``)."""
    prefix = f"vigil-{names.name}-"
    found = [n[len(prefix) :] for n in netns_names if n.startswith(prefix)]
    return [s for s in found if is_server_name(s)]


def tear_down(names: LabNames, state: LabState | None) -> list[str]:
    """Remove everything of the lab; returns one message per part that could not go."""
    store_keys = etcd.namespace_keys(names, state)
    store_netns = etcd.netns_names(names, state)
    netns_names = lab_netns(names, state) + clients.netns_names(names)
    agent_pids = [] if state is None else [s.agent_pid for s in state.servers.values()]
    problems = [] if state is None else dns.stop_recorded(state.dns_servers)
    problems += stop_processes(
        namespace_keys(names, netns_names) - store_keys, [p for p in agent_pids if p is not None]
    )
    problems += [] if state is None else mail_org.stop_recorded(names, state)
    problems += stop_processes(store_keys, [], STORE_GRACE)
    for server in servers_of(netns_names, names):
        Cgroups(server, names.server_dir(server) / "state").remove_all()
    netns_names += store_netns
    try:
        problems += network.delete_links(names.bridge, names.is_host_veth)
    except Exception as exc:  # netlink unreachable: keep going, report it
        problems.append(f"interfaces of bridge {names.bridge}: {exc}")
    mount_problems = namespaces.unmount_all_under(names.root)
    problems += mount_problems
    problems += detach_loop_devices(names.root)
    for name in netns_names:
        problem = network.remove_netns(name)
        if problem:
            problems.append(problem)
    if names.root.exists() and not mount_problems:
        shutil.rmtree(names.root, ignore_errors=True)
        if names.root.exists():
            problems.append(f"directory {names.root}: could not be removed")
    return problems
