"""One failover run of the bench: steady state, fault, recovery, analysis, repair.

``Subject`` is what the bench needs of a tool at one setting (vigil, keepalived,
Pacemaker: ``vigil_hierarchy``, ``anchors/``). ``run_once`` drives one run with a fresh
client probe and fresh watchers (``probe``) and returns a ``Run``.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import probe
from benchlab import PORT, BenchLab

#: seconds to wait for the steady state before a run
STEADY_TIMEOUT = 120.0


class Subject(Protocol):
    """A tool at one setting, as the bench drives it."""

    tool: str
    setting: str
    window: float  # seconds after the fault to wait for another server to answer

    def unsupported(self, scenario: str) -> str | None: ...
    def start(self) -> None: ...
    def ready(self) -> str | None: ...
    def kill_manager(self, server: str) -> str: ...
    def repair(self, server: str, scenario: str) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Run:
    tool: str
    setting: str
    scenario: str
    number: int
    active: str | None = None
    fault: str = ""
    outage: float | None = None
    takeover: float | None = None
    after: str | None = None
    address_overlap: float = 0.0
    service_overlap: float = 0.0
    client_flips: int = 0
    lost: int = 0
    error: str | None = None
    diagnosis: str | None = None
    watcher_errors: list[str] = field(default_factory=list)

    @property
    def dual(self) -> bool:
        return self.address_overlap > 0 or self.service_overlap > 0 or self.client_flips > 0


# --- one run -----------------------------------------------------------------------------


def _recent(samples: list[probe.Sample], since: float) -> list[probe.Sample]:
    out = []
    for sample in reversed(samples):
        if sample.at < since:
            break
        out.append(sample)
    return out


def steady_server(
    bench: BenchLab,
    subject: Subject,
    watchers: dict[str, probe.Watcher],
    client: probe.ClientProbe,
    settle: float,
) -> str:
    """Wait for the steady state (the tool ready, the address and the service on one
    server, the client answered by it alone, all for ``settle`` seconds without a break);
    the active server. RuntimeError after STEADY_TIMEOUT."""
    deadline = time.monotonic() + STEADY_TIMEOUT
    why = "nothing checked yet"
    ready_since = None
    while time.monotonic() < deadline:
        time.sleep(0.2)
        why = subject.ready() or ""
        if why:
            ready_since = None
            continue
        now = time.monotonic()
        ready_since = ready_since or now
        since = now - settle
        if ready_since > since:
            why = "the tool has not been ready for long enough"
            continue
        if any(w.error for w in watchers.values()):
            raise RuntimeError(f"watcher failed: {[w.error for w in watchers.values()]}")
        if any(not w.samples or w.samples[0].at > since for w in watchers.values()):
            why = "the watchers have not watched for long enough"
            continue
        recent = {s: _recent(w.samples, since) for s, w in watchers.items()}
        holders = {s for s, r in recent.items() if all(x.address for x in r)}
        running = {s for s, r in recent.items() if all(x.service for x in r)}
        others = {s for s, r in recent.items() if any(x.address or x.service for x in r)}
        if len(holders) != 1 or holders != running or others != holders:
            why = (
                f"address on {sorted(holders)}, service on {sorted(running)}, "
                f"seen on {sorted(others)}"
            )
            continue
        (active,) = holders
        every = client.answers()
        answers = [a for a in every if a.sent >= since and a.sent < now - 0.3]
        if not every or every[0].sent > since or len(answers) < settle / client.interval / 2:
            why = "the client has not polled for long enough"
            continue
        if any(a.who != active for a in answers):
            why = f"the client is not answered by {active} alone"
            continue
        return active
    raise RuntimeError(f"no steady state within {STEADY_TIMEOUT:.0f} s: {why}")


def recovered(client: probe.ClientProbe, failed: str, fault: float, hold: float) -> bool:
    """Whether another server than ``failed`` has answered every request for ``hold`` s."""
    answers = client.answers()
    if not answers or answers[-1].sent < fault + hold:
        return False
    end = answers[-1].sent
    for answer in reversed(answers):
        if answer.sent < fault:
            return False
        if answer.who is None or answer.who == failed:
            return False
        if end - answer.sent >= hold:
            return True
    return False


def run_once(
    bench: BenchLab, subject: Subject, scenario: str, number: int, settle: float, hold: float
) -> Run:
    run = Run(subject.tool, subject.setting, scenario, number)
    watchers = {s: probe.Watcher(s, bench.netns_path(s), bench.vip, PORT) for s in bench.servers}
    client = probe.ClientProbe(
        bench.client_enter, bench.vip, PORT, max_seconds=STEADY_TIMEOUT + 120 + subject.window
    )
    fault = None
    link_down = None
    try:
        try:
            run.active = steady_server(bench, subject, watchers, client, settle)
        except RuntimeError as exc:
            run.error = str(exc)
            return run
        fault = time.monotonic()
        if scenario == "sigkill":
            run.fault = subject.kill_manager(run.active)
        else:
            link_down = run.active
            bench.set_link(run.active, up=False)
            run.fault = f"host veth of {run.active} down"
        deadline = fault + subject.window + hold
        while time.monotonic() < deadline and not recovered(client, run.active, fault, hold):
            time.sleep(0.1)
        time.sleep(0.3)  # the last requests' answers
    finally:
        answers = client.stop()
        samples = {s: w.stop() for s, w in watchers.items()}
        if link_down:
            bench.set_link(link_down, up=True)
    run.watcher_errors = [f"{s}: {w.error}" for s, w in watchers.items() if w.error]
    outcome = probe.analyse(answers, samples, fault, run.active, client.interval)
    if outcome.outage is not None and outcome.after == run.active:
        outcome = replace(outcome, outage=None)  # answered again by the failed server only
    run.outage = outcome.outage
    run.takeover = outcome.takeover
    run.after = outcome.after
    run.address_overlap = round(outcome.address_overlap, 3)
    run.service_overlap = round(outcome.service_overlap, 3)
    run.client_flips = outcome.client_flips
    run.lost = outcome.lost
    if run.outage is None and hasattr(subject, "diagnose"):
        run.diagnosis = subject.diagnose()
    subject.repair(run.active, scenario)
    return run


def keep_logs(subject: Subject, run: Run, logs: Path) -> Path | None:
    """Keep the tails of the subject's logs for a run that went wrong; where."""
    if not hasattr(subject, "logs"):
        return None
    slug = re.sub(
        r"[^a-z0-9.]+", "-", f"{run.tool}-{run.setting}-{run.scenario}-{run.number}".lower()
    )
    target = logs / slug
    target.mkdir(parents=True, exist_ok=True)
    for name, path in subject.logs().items():
        with contextlib.suppress(OSError):
            lines = path.read_text(errors="replace").splitlines()[-600:]
            (target / name).write_text("\n".join(lines) + "\n")
    (target / "run.json").write_text(json.dumps(asdict(run), indent=1))
    return target
