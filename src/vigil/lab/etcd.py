"""The lab's etcd: a lab on etcd runs its store in namespaces of its own, on the lab network.

``Lab.up(N, store="etcd", store_members=M)`` (``vigil lab up --store etcd --store-members
M``) builds, besides the servers, M etcd members ``etcd1..etcdM`` (M is 1, 3 or 5). Member
``etcdK`` is built like a server (names in ``vigil.lab.naming``):

- a network namespace ``vigil-NAME-etcdK``, ``eth0`` on the lab bridge (host side
  ``ve-NAME-K``), address ``10.213.I.(150+K)/24``, no IPv6, no default route;
- a persistent mount namespace ``ROOT/mnt/etcdK``, prepared as a server's;
- a directory ``ROOT/etcdK``: ``data/`` (etcd's data directory), ``etcd.log`` (its log)
  and ``etcd.out`` (its stdout and stderr).

Its etcd runs detached inside both namespaces, as (``A``: its address)::

    etcd --name=etcdK --data-dir=ROOT/etcdK/data
         --listen-client-urls=http://A:2379 --advertise-client-urls=http://A:2379
         --listen-peer-urls=http://A:2380 --initial-advertise-peer-urls=http://A:2380
         --initial-cluster=etcd1=http://A1:2380,... --initial-cluster-state=new
         --initial-cluster-token=vigil-lab-NAME
         --heartbeat-interval=50 --election-timeout=500
         --logger=zap --log-outputs=ROOT/etcdK/etcd.log

The tuned timeouts: etcd grants no lease shorter than 1.5 x its election timeout, rounded
up to whole seconds (2 s at its defaults of 100/1000 ms; 1 s here), and a new leader is
elected 1 to 2 election timeouts after the old one died (0.5-1 s here). The heartbeat is
about the round trip between members (well under a millisecond on a bridge), the election
timeout ten heartbeats. A restart reuses the data directory (``--initial-cluster-state``
is ignored then), so leases and keys survive it.

Every agent's store URL is ``etcd://A1:2379,A2:2379,...``: agents reach etcd through their
own ``eth0`` and the bridge, so cutting a server's link (its host-side veth down) cuts it
off the store, as in a real cluster. The host reaches the members through the bridge too
(``10.213.I.254``): tests ask ``/health`` and ``/v3/maintenance/status`` from there.

``Lab.down`` stops the members last, after the processes of the servers (agents still use
the store while they stop), and finds their namespaces by name after a crash.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from vigil.errors import LabError
from vigil.lab import namespaces, network, processes
from vigil.lab.files import LabState, StoreMemberState, save_state
from vigil.lab.info import StoreMemberInfo, StoreMemberStatus
from vigil.lab.naming import (
    ETCD_CLIENT_PORT,
    ETCD_PEER_PORT,
    NETNS_DIR,
    STORE_MEMBER_COUNTS,
    LabNames,
    is_store_member_name,
    store_member_name,
    store_member_number,
)

HEARTBEAT_MS = 50
ELECTION_MS = 500
#: seconds ``up``/``start_member`` wait for the members to answer ``/health``
START_TIMEOUT = 30.0
#: seconds a stopped member gets before SIGKILL
STOP_TIMEOUT = 10.0


def check_member_count(count: int) -> None:
    if count not in STORE_MEMBER_COUNTS:
        counts = ", ".join(map(str, STORE_MEMBER_COUNTS))
        raise LabError(f"a lab's etcd has {counts} members, not {count}")


def member_names(count: int) -> list[str]:
    """``etcd1..etcdCOUNT``."""
    return [store_member_name(k) for k in range(1, count + 1)]


def client_url(address: str) -> str:
    return f"http://{address}:{ETCD_CLIENT_PORT}"


def _peer_url(address: str) -> str:
    return f"http://{address}:{ETCD_PEER_PORT}"


# -- building -------------------------------------------------------------------------------
def build(names: LabNames, state: LabState, count: int) -> None:
    """Create the namespaces, links and directories of ``count`` members (not started),
    recording each in ``state`` before it is built (so ``down`` finds a half-built one)."""
    for member in member_names(count):
        state.store_members[member] = StoreMemberState(
            name=member,
            address=names.store_member_address(member),
            netns=names.store_member_netns(member),
            mount_ns=str(names.mount_ns_file(member)),
            host_veth=names.store_member_veth(member),
        )
        save_state(names.state_file, state)
        directory = names.store_member_dir(member)
        directory.mkdir(parents=True, exist_ok=True)
        network.create_netns(names.store_member_netns(member))
        namespaces.create_mount_ns(
            NETNS_DIR / names.store_member_netns(member),
            names.mount_ns_file(member),
            work_dir=directory / ".sysfs",
        )
        network.connect_server(
            bridge=names.bridge,
            host_veth=names.store_member_veth(member),
            netns_name=names.store_member_netns(member),
            address=names.store_member_address(member),
            prefixlen=names.subnet.prefixlen,
        )


def etcd_argv(names: LabNames, member: str, members: list[str]) -> list[str]:
    """The command line of ``member``'s etcd (see the module docstring)."""
    address = names.store_member_address(member)
    directory = names.store_member_dir(member)
    initial = ",".join(f"{m}={_peer_url(names.store_member_address(m))}" for m in members)
    return [
        "etcd",
        f"--name={member}",
        f"--data-dir={directory / 'data'}",
        f"--listen-client-urls={client_url(address)}",
        f"--advertise-client-urls={client_url(address)}",
        f"--listen-peer-urls={_peer_url(address)}",
        f"--initial-advertise-peer-urls={_peer_url(address)}",
        f"--initial-cluster={initial}",
        "--initial-cluster-state=new",
        f"--initial-cluster-token=vigil-lab-{names.name}",
        f"--heartbeat-interval={HEARTBEAT_MS}",
        f"--election-timeout={ELECTION_MS}",
        "--logger=zap",
        f"--log-outputs={directory / 'etcd.log'}",
    ]


def start(names: LabNames, state: LabState, member: str) -> subprocess.Popen[bytes]:
    """Start ``member``'s etcd detached inside its namespaces and record its pid; the
    caller keeps the ``Popen`` to reap it. Does not wait for it to answer."""
    record = _record(names, state, member)
    argv = namespaces.nsenter_argv(
        NETNS_DIR / record.netns,
        Path(record.mount_ns),
        etcd_argv(names, member, sorted(state.store_members, key=store_member_number)),
    )
    child = processes.spawn_detached(argv, names.store_member_dir(member) / "etcd.out")
    record.pid = child.pid  # nsenter execs etcd: the same pid
    save_state(names.state_file, state)
    return child


def _record(names: LabNames, state: LabState, member: str) -> StoreMemberState:
    record = state.store_members.get(member)
    if record is None:
        have = ", ".join(sorted(state.store_members)) or "none: it runs on the embedded store"
        raise LabError(f"lab {names.name} has no etcd member {member!r} (it has {have})")
    return record


# -- inspecting -----------------------------------------------------------------------------
def member_pid(names: LabNames, state: LabState, member: str) -> int | None:
    """The pid of ``member``'s etcd if it runs inside the member (not stopped: a SIGSTOPped
    etcd still counts), else ``None``."""
    record = _record(names, state, member)
    return processes.running_in(record.pid, NETNS_DIR / record.netns)


def namespace_keys(names: LabNames, state: LabState | None) -> set[tuple[int, int]]:
    """Identities of the members' network and mount namespaces (found by name too)."""
    found = set(netns_names(names, state))
    keys = set()
    for netns in found:
        key = namespaces.ns_key_of_kind(NETNS_DIR / netns, "net")
        if key is not None:
            keys.add(key)
    if names.mount_dir.is_dir():
        for path in names.mount_dir.iterdir():
            if is_store_member_name(path.name):
                key = namespaces.ns_key_of_kind(path, "mnt")
                if key is not None:
                    keys.add(key)
    return keys


def netns_names(names: LabNames, state: LabState | None) -> list[str]:
    """The members' network namespaces: those in the state file and those named so."""
    found = {n for n in network.list_netns() if names.is_store_member_netns(n)}
    if state is not None:
        found |= {m.netns for m in state.store_members.values() if network.netns_exists(m.netns)}
    return sorted(found)


def healthy(address: str, timeout: float = 0.5) -> bool:
    """Whether the member at ``address`` answers ``/health`` with a leader elected."""
    try:
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            answer = client.get(client_url(address) + "/health")
        return bool(answer.json().get("health") == "true")
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


def maintenance_status(address: str, timeout: float = 1.0) -> dict[str, Any]:
    """``POST /v3/maintenance/status`` of the member at ``address`` (its id, the leader's
    id, raft index...); ``LabError`` if it does not answer."""
    try:
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            answer = client.post(client_url(address) + "/v3/maintenance/status", json={})
        result: dict[str, Any] = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise LabError(f"etcd at {address} did not tell its status: {exc}") from exc
    if "leader" not in result:
        raise LabError(f"etcd at {address} answered no status: {json.dumps(result)[:200]}")
    return result


def leader(names: LabNames, state: LabState) -> str | None:
    """The member that is the raft leader now, as running members see it (``None`` if
    none knows one)."""
    ids: dict[str, str] = {}
    leaders = set()
    for member, record in sorted(state.store_members.items()):
        if member_pid(names, state, member) is None:
            continue
        try:
            status = maintenance_status(record.address)
        except LabError:
            continue
        ids[str(status["header"]["member_id"])] = member
        if str(status.get("leader", "0")) != "0":
            leaders.add(str(status["leader"]))
    known = [ids[i] for i in leaders if i in ids]
    return known[0] if len(known) == 1 else None


def wait_healthy(names: LabNames, state: LabState, members: list[str], timeout: float) -> None:
    """Wait until every one of ``members`` answers ``/health``; ``LabError`` (with the tail
    of its log) when one exits or the time is up."""
    deadline = time.monotonic() + timeout
    pending = list(members)
    while pending:
        for member in list(pending):
            pid = state.store_members[member].pid
            # not member_pid: a process just started may not have entered the namespace yet
            if pid is None or not processes.is_alive(pid):
                raise _member_error(names, member, "exited before answering /health")
            if healthy(state.store_members[member].address):
                pending.remove(member)
        if pending and time.monotonic() > deadline:
            raise _member_error(names, pending[0], f"was not healthy within {timeout:.0f} s")
        if pending:
            time.sleep(0.05)


def _member_error(names: LabNames, member: str, what: str) -> LabError:
    directory = names.store_member_dir(member)
    message = [f"etcd member {member} of lab {names.name} {what}"]
    for log in (directory / "etcd.out", directory / "etcd.log"):
        tail = processes.tail(log, lines=8)
        if tail:
            message.append(f"last lines of {log}:")
            message += [f"  {line}" for line in tail.splitlines()]
    return LabError("\n".join(message))


def stop(names: LabNames, state: LabState, member: str, sig: int, wait: bool) -> None:
    """Send ``sig`` to ``member``'s etcd; with ``wait``, wait until it is gone (SIGKILL
    after ``STOP_TIMEOUT`` s)."""
    pid = member_pid(names, state, member)
    if pid is None:
        return
    processes.send([pid], sig)
    if not wait:
        return
    if sig != signal.SIGKILL:
        processes.send([pid], signal.SIGCONT)  # a frozen member must be able to stop
    survivors = processes.wait_gone([pid], STOP_TIMEOUT)
    if survivors and processes.terminate(survivors, grace=0.0):
        raise LabError(f"etcd member {member} (pid {pid}) survived SIGKILL")


def infos(names: LabNames, state: LabState) -> tuple[StoreMemberInfo, ...]:
    """What ``LabInfo.store_members`` tells of each member."""
    return tuple(
        StoreMemberInfo(
            name=member,
            address=record.address,
            client_url=client_url(record.address),
            netns=record.netns,
            mount_ns=Path(record.mount_ns),
            data_dir=names.store_member_dir(member) / "data",
            log_file=names.store_member_dir(member) / "etcd.log",
            pid=member_pid(names, state, member),
        )
        for member, record in sorted(
            state.store_members.items(), key=lambda item: store_member_number(item[0])
        )
    )


def statuses(
    names: LabNames, state: LabState | None, *, check_health: bool
) -> tuple[StoreMemberStatus, ...]:
    """What exists of each member, by the state file and by names."""
    members = set(state.store_members) if state else set()
    members |= {n[len(f"vigil-{names.name}-") :] for n in netns_names(names, state)}
    result = []
    for member in sorted(members, key=store_member_number):
        record = state.store_members.get(member) if state else None
        pid = member_pid(names, state, member) if state and record else None
        result.append(
            StoreMemberStatus(
                name=member,
                address=record.address if record else None,
                netns=network.netns_exists(names.store_member_netns(member)),
                mount_ns=namespaces.ns_key_of_kind(names.mount_ns_file(member), "mnt") is not None,
                pid=pid,
                healthy=healthy(record.address) if check_health and pid and record else None,
            )
        )
    return tuple(result)
