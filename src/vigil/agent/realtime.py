"""Real-time scheduling for the agent and its fence guard, as corosync does.

The lease is renewed every ``renew_interval`` and lost ``ttl - safety_margin`` after the
last renewal (0.45 s at the defaults): a machine whose cores are busy with other work (a
compile, a backup, a runaway process) can hold the agent's event loop off the CPU for that
long, and the server then fences itself for nothing. Both processes therefore run under
``SCHED_RR`` at a modest priority (``[lease] realtime_priority``, 10 by default; 0 keeps
normal scheduling). ``SCHED_RESET_ON_FORK`` makes every command they start (kit actions,
the services a kit starts) run under normal scheduling again. The kernel still keeps 5 %
of each second for everything else (``kernel.sched_rt_runtime_us``), so a bug cannot take
the whole machine.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_PRIORITY", "run_realtime"]

DEFAULT_PRIORITY = 10


def run_realtime(priority: int) -> str:
    """Put this process (and the threads it starts from now on) under ``SCHED_RR`` at
    ``priority``; what was done, for the log. A refusal (no ``CAP_SYS_NICE``, a cgroup
    without real-time time) is reported, never raised: the agent runs on without it."""
    if priority <= 0:
        return "normal scheduling ([lease] realtime_priority = 0)"
    policy = os.SCHED_RR | os.SCHED_RESET_ON_FORK
    try:
        os.sched_setscheduler(0, policy, os.sched_param(priority))
    except OSError as exc:
        return (
            f"could not run under SCHED_RR (priority {priority}): {exc.strerror}; a busy "
            "machine may delay lease renewals (run as root, or give the process "
            "CAP_SYS_NICE and real-time time in its cgroup)"
        )
    return f"running under SCHED_RR, priority {priority} (commands it starts: normal)"
