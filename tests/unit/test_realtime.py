"""Real-time scheduling of the agent and its fence guard (``vigil.agent.realtime``)."""

from __future__ import annotations

import os
import subprocess
import sys

from vigil.agent.config import LeaseSettings
from vigil.agent.realtime import run_realtime

_CHILD = """
import os, subprocess, sys
from vigil.agent.realtime import run_realtime
print(run_realtime(int(sys.argv[1])))
print(os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK == os.SCHED_RR)
print(os.sched_getparam(0).sched_priority)
child = subprocess.run(
    [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
    capture_output=True, text=True, check=True,
)
print(int(child.stdout) == os.SCHED_OTHER)
"""


def _in_child(priority: int) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(priority)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.splitlines()


def test_the_agent_runs_round_robin_and_what_it_starts_does_not() -> None:
    said, rr, priority, child_normal = _in_child(10)
    if os.geteuid() != 0:
        assert "could not run under SCHED_RR" in said
        return
    assert said.startswith("running under SCHED_RR, priority 10"), said
    assert (rr, priority, child_normal) == ("True", "10", "True")


def test_priority_zero_keeps_normal_scheduling() -> None:
    said, rr, _, _ = _in_child(0)
    assert "normal scheduling" in said and rr == "False"


def test_the_default_priority_is_modest() -> None:
    assert LeaseSettings().realtime_priority == 10
    assert run_realtime(0).startswith("normal scheduling")
