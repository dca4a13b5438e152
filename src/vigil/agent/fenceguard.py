"""The fence guard: ``python -m vigil.agent.fenceguard STATE_DIR [REALTIME_PRIORITY]``.

Deliberately tiny and independent of the agent: no store, no asyncio, no kits (only the
standard-library cgroup helper they share, ``vigil.kits.cgroup``). Every 20 ms it reads
the fence plan the agent refreshes after each lease renewal. When the plan's deadline
(system-wide monotonic clock) has passed while resources are listed, the agent can no
longer be trusted to hold its lease (killed, frozen, cut off): the guard kills the
resources' cgroups, deletes their addresses and lazily unmounts their volumes, once per
deadline, and logs what it did. The agent's lease cannot have expired for any other server
yet: the plan's deadline lies a safety margin before that.

Until the agent renews (a new plan), the guard keeps sweeping: every ``SWEEP_INTERVAL`` it
kills whatever runs in the plan's cgroups again and, while the agent process still runs,
takes the plan's addresses and mounts away again. An agent frozen between its last trust
check and the start of a service (or a child it forked and had not yet moved into the
cgroup) would otherwise, thawed, bring a service up on a server whose hierarchies another
server has taken over. Past the deadline the agent's own remove and check commands are
killed too: its graceful window ended at the deadline, the guard's escalation stands.

During a failsafe (the store unreachable for every agent, ``vigil.agent.failsafe``) the agent
moves the deadline on after each round the other agents confirm; the guard says so once per
episode, and never waits past the last renewal's deadline plus ``failsafe_limit``.

On the embedded store it also watches the store's write lock: an agent past its deadline
that holds it for ``LOCK_HOLD_LIMIT`` (frozen inside a transaction) stops every other
agent from writing, so no server could take its hierarchies over. The guard ends that agent
(SIGKILL; the kernel drops its locks and SQLite discards the unfinished transaction), as a
node watchdog resets a hung node; the agent, restarted, rejoins holding nothing.

It runs under ``SCHED_RR`` (``vigil.agent.realtime``; the priority the agent passes, 10 when
started without one, 0 for normal scheduling): a busy machine must not delay a fence.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vigil.agent.fencing import FencePlan, process_state
from vigil.agent.realtime import DEFAULT_PRIORITY, run_realtime
from vigil.kits.cgroup import reap_cgroup, signal_cgroup
from vigil.store.locks import exclusive_holders

POLL = 0.02
#: how long an agent past its deadline may hold the embedded store's write lock (a live
#: agent's transaction lasts milliseconds; its own lock waits are bounded by the store's
#: request timeout)
LOCK_HOLD_LIMIT = 1.0
#: after a fence, how often the guard undoes again what came back of the plan
SWEEP_INTERVAL = 0.2


def say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} fence-guard: {message}", flush=True)


def fence(plan: FencePlan, directory: Path) -> None:
    """Undo everything in the plan, logging each action as it is done; tries every one.
    ``fenced.json`` records the moment nothing of the plan can serve any more: processes
    signalled and addresses gone (waiting for the kernel to reap comes after)."""
    # signal every cgroup at once and take the addresses away before waiting for anything:
    # an address must not outlive the deadline because a process is slow to die
    signalled = {cgroup: signal_cgroup(Path(cgroup)) for cgroup in plan.cgroups}
    for cgroup, pids in signalled.items():
        if pids:
            say(f"killed {len(pids)} process(es) of {Path(cgroup).name}: {pids}")
    for address, prefix, interface in plan.addresses:
        if _run("ip", "addr", "del", f"{address}/{prefix}", "dev", interface):
            say(f"deleted address {address}/{prefix} from {interface}")
    with contextlib.suppress(OSError):  # atomically: tests and tools read it
        marker = directory / "fenced.json.tmp"
        marker.write_text(json.dumps({"deadline": plan.deadline, "at": time.time()}))
        marker.replace(directory / "fenced.json")
    for cgroup in plan.cgroups:
        if not reap_cgroup(Path(cgroup)):
            say(f"processes of {Path(cgroup).name} still there after SIGKILL: {cgroup}")
    for mount in plan.mounts:
        if _run("umount", "-l", mount):
            say(f"unmounted {mount}")


def sweep(plan: FencePlan, agent_runs: bool, directory: Path) -> None:
    """After a fence, while the agent has not renewed: undo whatever of the plan is back.
    Addresses and mounts only while the agent runs (nothing else adds them); a cgroup
    whatever the agent's state (a child it forked joins its cgroup on its own). The plan is
    read again before each action: once the agent has renewed, what it restores is its own
    (under load one sweep can take longer than the agent needs to renew and restore)."""

    def renewed() -> bool:
        now = FencePlan.read(directory)
        return now is None or now.mode != plan.mode or now.due != plan.due

    for cgroup in plan.cgroups:
        if renewed():
            return
        if pids := signal_cgroup(Path(cgroup)):
            say(
                f"processes in the cgroup of {Path(cgroup).name} after the fence, agent "
                f"{plan.agent_pid} not renewed yet (its own late remove or check commands, or "
                f"a start begun before the deadline): killed {pids}"
            )
    for address, prefix, interface in plan.addresses if agent_runs else ():
        if renewed():
            return
        if _run("ip", "addr", "del", f"{address}/{prefix}", "dev", interface):
            say(f"address {address}/{prefix} on {interface} came back after the fence: deleted")
    for mount in plan.mounts if agent_runs else ():
        if os.path.ismount(mount) and not renewed() and _run("umount", "-l", mount):
            say(f"{mount} mounted again after the fence: unmounted")


def _run(*argv: str) -> bool:
    """Whether the command succeeded (an address already gone, a volume not mounted: no)."""
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


class StoreLockWatch:
    """Ends an agent that keeps the embedded store's write lock past its deadline."""

    def __init__(self) -> None:
        self.held_since: float | None = None

    def check(self, plan: FencePlan, now: float) -> None:
        if not plan.store_file or now < plan.due:
            self.held_since = None
            return
        if plan.agent_pid not in exclusive_holders(Path(plan.store_file)):
            self.held_since = None
            return
        if self.held_since is None:
            self.held_since = now
        if now - self.held_since < LOCK_HOLD_LIMIT:
            return
        self.held_since = None
        with contextlib.suppress(ProcessLookupError):
            os.kill(plan.agent_pid, signal.SIGKILL)
            say(
                f"agent {plan.agent_pid} has held the write lock of the store "
                f"{plan.store_file} for {LOCK_HOLD_LIMIT:g}s past its deadline (frozen in a "
                "transaction: no other server could take over): ended it (SIGKILL)"
            )


def run(directory: Path, priority: int = DEFAULT_PRIORITY) -> int:
    say(f"watching {directory}; {run_realtime(priority)}")
    fenced_for = None
    failsafe_for = None  # the renewal deadline of the failsafe episode last reported
    store_lock = StoreLockWatch()
    swept = 0.0
    while True:
        plan = FencePlan.read(directory)
        if plan is not None:
            if plan.mode == "stopped":
                say("the agent stopped in order; exiting")
                return 0
            if plan.mode == "active" and plan.failsafe and failsafe_for != plan.renewed:
                failsafe_for = plan.renewed
                say(
                    f"failsafe: agent {plan.agent_pid} holds its lease on without the store "
                    f"(confirmed by the other agents), {plan.failsafe_limit:g}s at most"
                )
            due = plan.mode == "active" and time.monotonic() >= plan.due
            if due and fenced_for != plan.due and (plan.cgroups or plan.addresses or plan.mounts):
                late = time.monotonic() - plan.due
                say(
                    f"no lease renewal from agent {plan.agent_pid} by its deadline "
                    f"({late:.3f}s ago): fencing"
                )
                fence(plan, directory)
                fenced_for, swept = plan.due, time.monotonic()
            elif due and fenced_for == plan.due and time.monotonic() - swept >= SWEEP_INTERVAL:
                runs = process_state(plan.agent_pid) not in ("", "T", "t", "Z", "X")
                sweep(plan, runs, directory)
                swept = time.monotonic()
            if plan.mode == "active":
                store_lock.check(plan, time.monotonic())
        time.sleep(POLL)


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_PRIORITY))
