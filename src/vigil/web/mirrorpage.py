"""The mirror page of a mirror resource (the seed's DataKeeper mirror, as ``vigil mirror
status``): each server's copy with its state in colour and the reason (Mirroring,
Resynchronizing with progress and ETA, Paused, Broken, Resync Pending), the source, the
mode, the bytes each target lacks, whether it may take over, a split brain (the regions
each side wrote since) and the resync history. Pause, continue, break and resync of a
target are sent by the page's script to the mirror API (``POST /v1/mirror/{tag}/pause``...,
the CLI's endpoints), for operators and administrators.

What is shown is ``GET /v1/mirror/{tag}`` (the API's route function, called with the
person's role), which reads each copy from its server's agent: the source process's status
file and each server's mirror metadata, not the store. The store's watch (``vigil.web.live``)
sees neither a resync's progress nor a target being paused, so the states' fragment is
polled every second while the page is open (htmx ``every 1s``), as well as refreshed on the
live stream's ``change``. The actions depend only on what the store holds (which server is
the source, which are targets) and follow the live stream alone, so they are not replaced
under the person's pointer every second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from vigil.agent.mirrorops import active_server
from vigil.api import mirror as mirror_api
from vigil.engine import changes
from vigil.errors import ValidationError, VigilError
from vigil.web.render import Viewer, cached, missing, render, to_login, viewer_of

router = APIRouter(include_in_schema=False)

#: resyncs shown, newest first
HISTORY = 10


@dataclass(frozen=True)
class Progress:
    """A resync under way, as the source reports it."""

    kind: str  # partial or full
    percent: float
    done: int
    regions: int
    mb_per_s: float
    eta_s: float  # negative: not known yet

    @property
    def eta(self) -> str:
        if self.eta_s < 0:
            return "not known yet"
        minutes, seconds = divmod(round(self.eta_s), 60)
        return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


@dataclass(frozen=True)
class Split:
    """A split brain a copy reports: both sides wrote since ``ancestor``."""

    source: str
    ancestor: str
    source_regions: int  # negative: not known
    target_regions: int
    at: float


@dataclass(frozen=True)
class Copy:
    """One server's copy: the source's view of it when it is a target, else its own."""

    server: str
    priority: int
    role: str  # source or target
    state: str
    reason: str
    since: float
    eligible: bool | None
    eligibility: str
    out_of_sync: int | None  # bytes the target lacks, as the source sees it
    progress: Progress | None
    split_brain: bool
    split: Split | None
    unreachable: str


def _progress(seen: dict[str, Any] | None) -> Progress | None:
    if not seen:
        return None
    return Progress(
        kind=str(seen.get("kind", "")),
        percent=float(seen.get("percent", 0.0)),
        done=int(seen.get("done", 0)),
        regions=int(seen.get("regions", 0)),
        mb_per_s=float(seen.get("mb_per_s", 0.0)),
        eta_s=float(seen.get("eta_s", -1.0)),
    )


def _split(seen: dict[str, Any] | None) -> Split | None:
    if not seen:
        return None
    return Split(
        source=str(seen["source"]),
        ancestor=str(seen["ancestor"]),
        source_regions=int(seen["source_regions"]),
        target_regions=int(seen["target_regions"]),
        at=float(seen["at"]),
    )


def copies(status: dict[str, Any]) -> list[Copy]:
    """Every server's copy from the mirror API's status, in priority order."""
    found = []
    for row in status["servers"]:
        target: dict[str, Any] = status["targets"].get(row["server"], {})
        view: dict[str, Any] = row.get("view") or {}
        source = row["role"] == "source"
        dirty = target.get("dirty_bytes")
        found.append(
            Copy(
                server=row["server"],
                priority=int(row["priority"]),
                role=row["role"],
                state="Source" if source else str(row.get("state") or "unknown"),
                reason=str(row.get("reason") or ""),
                since=float(target.get("since") or 0.0),
                eligible=row.get("eligible"),
                eligibility=str(row.get("eligibility") or ""),
                out_of_sync=None if source or dirty is None else int(dirty),
                progress=_progress(target.get("progress")),
                split_brain=bool(target.get("split_brain")) or bool(view.get("split_brain")),
                split=_split(view.get("split_brain")),
                unreachable=str(view.get("unreachable") or ""),
            )
        )
    return found


def history(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The last resyncs, newest first: the source's, and those each copy recorded when it
    was the source (a failback's resync was sent by the other server)."""
    sent = [{**r, "by": status.get("source") or ""} for r in status.get("resyncs", [])]
    for row in status["servers"]:
        view = row.get("view") or {}
        sent += [{**r, "by": row["server"]} for r in view.get("resyncs") or []]
    unique = {(r["target"], r["at"], r["kind"]): r for r in reversed(sent)}
    return sorted(unique.values(), key=lambda r: r["at"], reverse=True)[:HISTORY]


def _failed(tag: str, message: str) -> dict[str, Any]:
    return {"tag": tag, "error": message, "source": None, "mode": "", "copies": [], "history": []}


async def _states(request: Request, viewer: Viewer, tag: str) -> dict[str, Any]:
    """The states' fragment's context. A refusal or an agent that did not answer is shown
    in place (and asked again at the next poll): the resource deleted while the page is
    open, the store unreachable."""
    try:
        status = await mirror_api.status(tag, viewer.caller, request)
    except VigilError as exc:
        return _failed(tag, str(exc))
    return {
        "tag": tag,
        "error": "",
        "source": status["source"],
        "mode": status["mode"],
        "copies": copies(status),
        "history": history(status),
    }


async def _actions(request: Request, tag: str) -> dict[str, Any]:
    """The actions' fragment's context: the source and its targets, from the store."""
    cluster = await cached(request)
    resource = changes.require_resource(cluster, tag)
    if resource.kit != "mirror":
        raise ValidationError(f"{tag} is a {resource.kit} resource, not a mirror")
    source = active_server(cluster, tag)
    targets = [s for s in resource.servers_by_priority if s != source] if source else []
    return {"tag": tag, "source": source, "targets": targets, "actions_error": ""}


@router.get("/ui/mirror/{tag}")
async def mirror_page(tag: str, request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    try:
        actions = await _actions(request, tag)
    except ValidationError as exc:
        return missing(request, viewer, str(exc))
    cluster = await cached(request)
    context = {**await _states(request, viewer, tag), **actions}  # the store's source wins
    return render(
        request, "mirror.html", viewer, hierarchy=cluster.hierarchy(tag).name, digest="", **context
    )


@router.get("/ui/fragments/mirror/{tag}")
async def mirror_fragment(tag: str, request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    return render(request, "_mirror.html", viewer, **await _states(request, viewer, tag))


@router.get("/ui/fragments/mirror/{tag}/actions")
async def mirror_actions_fragment(tag: str, request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    try:
        actions = await _actions(request, tag)
    except ValidationError as exc:  # deleted while the page is open: no action left
        actions = {"tag": tag, "source": None, "targets": [], "actions_error": str(exc)}
    return render(request, "_mirror_actions.html", viewer, **actions)
