"""A failover's timeline, from the cluster's event log and the instances' reported states
(pure): when the old server was last heard, when its lease was ended (from then on its
fence guard has taken its resources down and another server may take over), the decision,
the restore, each resource in service, and the end, each with its time from the start and
the time since the step before.

Events come as ``GET /v1/hierarchies/{tag}/why`` gives them (oldest first). Per-resource
times come from the states the target reported (``since``), so they are there for the
latest failover only (an older one was overwritten by later reports).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: kinds that start a failover's story, and those that end it
_STARTS = {"server-down", "check-failed", "failover-started"}
_ENDS = {"restored", "restore-failed", "failover-impossible", "failover-blocked"}
_SILENT = re.compile(r"did not advance for ([0-9.]+)s")


@dataclass(frozen=True)
class Step:
    at: float
    label: str
    server: str = ""
    offset: float = 0.0  # seconds since the timeline's first step
    took: float = 0.0  # seconds since the step before


@dataclass(frozen=True)
class Timeline:
    title: str
    steps: list[Step] = field(default_factory=list)
    ok: bool = True

    @property
    def total(self) -> float:
        return self.steps[-1].offset if self.steps else 0.0


def _steps_of(story: list[Mapping[str, Any]]) -> list[Step]:
    steps = []
    for event in story:
        kind, at, server = event["kind"], float(event["at"]), str(event["server"])
        if kind == "server-down":
            silent = _SILENT.search(event["message"])
            if silent:
                steps.append(Step(at - float(silent.group(1)), "last heartbeat of the dead server"))
            steps.append(Step(at, f"detected: {event['message']}", server))
        elif kind == "failover-started":
            steps.append(Step(at, f"failover decided: {event['message']}", server))
        elif kind == "restore-started":
            steps.append(Step(at, f"restore started on {server}", server))
        elif kind == "restored":
            steps.append(Step(at, f"in service on {server}", server))
        else:
            steps.append(Step(at, f"{kind}: {event['message']}", server))
    return steps


def _with_times(steps: list[Step]) -> list[Step]:
    steps = sorted(steps, key=lambda s: s.at)
    if not steps:
        return []
    start, before = steps[0].at, steps[0].at
    timed = []
    for step in steps:
        timed.append(Step(step.at, step.label, step.server, step.at - start, step.at - before))
        before = step.at
    return timed


def failover_timelines(
    events: Sequence[Mapping[str, Any]],
    resource_states: Mapping[str, Mapping[str, Any]] | None = None,
    limit: int = 3,
) -> list[Timeline]:
    """The newest ``limit`` failovers in ``events`` (newest first). ``resource_states``:
    tag -> its instance on the server it is in service on now (``server``, ``state``,
    ``since``), to time each resource of the latest failover."""
    stories: list[list[Mapping[str, Any]]] = []
    current: list[Mapping[str, Any]] | None = None
    for event in events:
        kind = event["kind"]
        if current is None:
            if kind in _STARTS:
                current = [event]
            continue
        current.append(event)
        if kind in _ENDS:
            if any(e["kind"] == "failover-started" for e in current):
                stories.append(current)
            current = None
    if current and any(e["kind"] == "failover-started" for e in current):
        stories.append(current)
    timelines = []
    for index, story in enumerate(reversed(stories[-limit:])):
        steps = _steps_of(story)
        end = story[-1]
        if index == 0 and resource_states and end["kind"] == "restored":
            begun = max(
                (float(e["at"]) for e in story if e["kind"] == "restore-started"), default=0
            )
            for tag, instance in sorted(resource_states.items()):
                since = float(instance.get("since", 0))
                if instance.get("server") == end["server"] and begun <= since <= float(end["at"]):
                    label = f"{tag} in service ({instance['state']})"
                    steps.append(Step(since, label, end["server"]))
        started = next(e for e in story if e["kind"] == "failover-started")
        title = f"Failover of {started.get('hierarchy') or 'the hierarchy'}"
        timelines.append(Timeline(title, _with_times(steps), ok=end["kind"] == "restored"))
    return timelines
