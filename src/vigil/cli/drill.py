"""``vigil drill TAG``: the seed's "Testing Your Hierarchy", automated and timed.

A rehearsal of a switchover: the hierarchy of TAG goes in service on the next server (the
one after the server it is on now, in priority order, that is alive and not in
maintenance; or the one given), then back where it was. Each step is a real ``in-service``
through the API, timed from the request to the answer (every resource restored there),
and then until the hierarchy's health endpoint on that server answers 200. With a probe
address (``HOST:PORT``, a TCP connection as a client would open; or an ``http(s)://`` URL,
any answer below 500 counts), a thread probes the service all along, and the drill reports
what a client saw: the longest time it could not reach the service during each step.

The pure parts (which server is next, outages from probe samples) are separate functions,
tested without a cluster.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["Outage", "Prober", "Step", "next_server", "outages", "where"]


@dataclass(frozen=True)
class Step:
    """One switchover of the drill and what it took."""

    source: str
    target: str
    seconds: float
    healthy_after: float | None
    outage: float | None
    failed_probes: int
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Outage:
    """A stretch of probes that failed: from the first failure to the next success."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def where(status: dict[str, Any], tag: str) -> tuple[str, str | None, list[str]]:
    """(hierarchy name, the server it is in service on, its servers by priority) from a
    ``GET /v1/status`` answer; ``LookupError`` when no hierarchy has ``tag``."""
    for view in status.get("hierarchies", []):
        tags = [r["tag"] for r in view["resources"]]
        if tag in tags:
            top = view["resources"][0]
            servers = [i["server"] for i in sorted(top["instances"], key=lambda i: i["priority"])]
            return view["name"], view.get("active_server"), servers
    raise LookupError(tag)


def next_server(servers: list[str], current: str, usable: Callable[[str], bool]) -> str | None:
    """The first usable server after ``current`` in priority order, wrapping round."""
    if current not in servers:
        return next((s for s in servers if usable(s)), None)
    start = servers.index(current)
    for offset in range(1, len(servers)):
        candidate = servers[(start + offset) % len(servers)]
        if usable(candidate):
            return candidate
    return None


def outages(samples: list[tuple[float, bool]], start: float, end: float) -> list[Outage]:
    """The stretches of failed probes between ``start`` and ``end``: each from its first
    failure to the success after it (or ``end``)."""
    found: list[Outage] = []
    down_since: float | None = None
    for at, ok in samples:
        if at < start:
            continue
        if at > end:
            break
        if not ok and down_since is None:
            down_since = at
        elif ok and down_since is not None:
            found.append(Outage(down_since, at))
            down_since = None
    if down_since is not None:
        found.append(Outage(down_since, end))
    return found


class Prober:
    """Probes a service every ``interval`` seconds in a thread, recording (time, ok)."""

    def __init__(self, target: str, interval: float = 0.1, timeout: float = 0.5) -> None:
        self.target = target
        self.interval = interval
        self.timeout = timeout
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drill probe", daemon=True)
        self._client: httpx.Client | None = None

    def once(self) -> bool:
        """One probe: can a client reach the service now?"""
        if self.target.startswith(("http://", "https://")):
            if self._client is None:
                # trust_env=False: never through a proxy; a drill tests reachability, not
                # the service's certificate
                self._client = httpx.Client(timeout=self.timeout, trust_env=False, verify=False)
            try:
                return self._client.get(self.target).status_code < 500
            except httpx.HTTPError:
                return False
        host, _, port = self.target.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), self.timeout):
                return True
        except (OSError, ValueError):
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            ok = self.once()
            self.samples.append((started, ok))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._client is not None:
            self._client.close()


@dataclass
class Drill:
    """A drill's plan and its steps as they are done."""

    hierarchy: str
    home: str
    away: str
    steps: list[Step] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hierarchy": self.hierarchy,
            "home": self.home,
            "away": self.away,
            "ok": all(s.ok for s in self.steps) and len(self.steps) == 2,
            "steps": [vars(s) for s in self.steps],
        }
