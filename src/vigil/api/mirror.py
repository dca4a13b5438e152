"""API routes of the mirror kit (``vigil mirror ...``): the mirror's status (every server's
copy, the source's view of each target with progress and ETA, eligibility), pause,
continue, resync and break of a target (run on the source's server; operators may), forcing
a copy eligible (on its server), and split-brain resolution (shown, then carried out on
every server it concerns; administrators only). Requests are forwarded to the server they
concern."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from vigil.agent.mirrorops import MirrorOperations, active_server
from vigil.agent.operations import Operations, Outcome
from vigil.api import schemas
from vigil.api.auth import Who
from vigil.api.forward import call_agent, forward_to
from vigil.api.results import result as _result
from vigil.errors import Conflict, ValidationError, VigilError
from vigil.model.cluster import Cluster

router = APIRouter(prefix="/v1/mirror", tags=["mirror"])


def _mirror(request: Request) -> MirrorOperations:
    operations: Operations = request.app.state.operations
    return MirrorOperations(operations)


class TargetAction(schemas.Body):
    target: str = Field(description="the target server")


class Force(schemas.Body):
    server: str = Field(description="the server whose copy becomes eligible")
    reason: str = Field("", description="why (recorded in the event log)")


class Discard(schemas.Body):
    ancestor: str
    winner: str
    full: bool = False


class Resolve(schemas.Body):
    keep: str | None = Field(None, description="the server whose data is kept; none: show")


async def _views(
    mirror: MirrorOperations, cluster: Cluster, tag: str, request: Request
) -> dict[str, Any]:
    """Every server's view of its copy (from its agent), by server."""
    views: dict[str, Any] = {}
    for server in cluster.resources[tag].servers_by_priority:
        if server == mirror.operations.server:
            views[server] = await mirror.local(tag)
            continue
        known = cluster.servers.get(server)
        if known is None or not known.alive:
            views[server] = {"unreachable": f"the agent of {server} is not running"}
            continue
        try:
            answer = await call_agent(
                mirror.operations, server, "GET", f"/v1/mirror/{tag}/local", None, request
            )
            views[server] = (
                answer.json() if answer.status_code == 200 else {"unreachable": answer.text}
            )
        except VigilError as exc:
            views[server] = {"unreachable": str(exc)}
    return views


@router.get("/{tag}")
async def status(tag: str, who: Who, request: Request) -> dict[str, Any]:
    """The mirror: its source, each target's state as the source sees it (progress, ETA,
    regions to copy), each server's own view and eligibility, the last resyncs."""
    mirror = _mirror(request)
    cluster, resource = await mirror.mirror(tag)
    source = active_server(cluster, tag)
    views = await _views(mirror, cluster, tag, request)
    seen = views.get(source or "", {}).get("process") or {}
    targets = seen.get("targets", {}) if seen.get("role") == "source" else {}
    servers = []
    for server in resource.servers_by_priority:
        view = views[server]
        report = cluster.eligibility.get((server, tag))
        servers.append(
            {
                "server": server,
                "priority": resource.instances[server],
                "role": "source" if server == source else "target",
                "state": targets.get(server, {}).get("state") or view.get("state"),
                "reason": targets.get(server, {}).get("reason") or view.get("reason"),
                "eligible": report.eligible if report else None,
                "eligibility": report.reason if report else "not reported",
                "view": view,
            }
        )
    return {
        "tag": tag,
        "mode": resource.properties.get("mode", "sync"),
        "source": source,
        "targets": targets,
        "servers": servers,
        "resyncs": seen.get("resyncs", []),
    }


@router.get("/{tag}/local")
async def local(tag: str, who: Who, request: Request) -> dict[str, Any]:
    """This server's view of its copy."""
    return await _mirror(request).local(tag)


async def _on_source(action: str, tag: str, body: TargetAction, who: Who, request: Request) -> Any:
    # an operator's work, as bringing a hierarchy in or out of service is: the seed pauses
    # and continues mirrors around maintenance; none changes the configuration
    who.require("operator", f"{action} a mirror target")
    mirror = _mirror(request)
    cluster, _ = await mirror.mirror(tag)
    source = active_server(cluster, tag)
    if source is not None:
        forwarded = await forward_to(mirror.operations, source, request)
        if forwarded is not None:
            return forwarded
    return _result(await mirror.command(tag, action, body.target, who.name))


@router.post("/{tag}/pause", response_model=schemas.OperationResult)
async def pause(tag: str, body: TargetAction, who: Who, request: Request) -> Any:
    """Pause the mirror to a target: the source goes on without it and tracks its writes
    (the target is no longer eligible)."""
    return await _on_source("pause", tag, body, who, request)


@router.post("/{tag}/continue", response_model=schemas.OperationResult)
async def continue_(tag: str, body: TargetAction, who: Who, request: Request) -> Any:
    """Continue a paused (or broken) target: a partial resync of the regions written
    meanwhile (full after a break), then Mirroring."""
    return await _on_source("continue", tag, body, who, request)


@router.post("/{tag}/resync", response_model=schemas.OperationResult)
async def resync(tag: str, body: TargetAction, who: Who, request: Request) -> Any:
    """A full resync of a target."""
    return await _on_source("resync", tag, body, who, request)


@router.post("/{tag}/break", response_model=schemas.OperationResult)
async def break_(tag: str, body: TargetAction, who: Who, request: Request) -> Any:
    """Break the mirror to a target: its writes are not tracked (continue or resync copies
    everything)."""
    return await _on_source("break", tag, body, who, request)


@router.post("/{tag}/force", response_model=schemas.OperationResult)
async def force(tag: str, body: Force, who: Who, request: Request) -> Any:
    """Make a server's copy eligible although it may be behind (the seed's chapter 7:
    the source failed while this target was not in sync): recorded, with who and why."""
    who.require("administrator", "force a mirror copy eligible")
    mirror = _mirror(request)
    forwarded = await forward_to(mirror.operations, body.server, request)
    if forwarded is not None:
        return forwarded
    return _result(await mirror.force(tag, who.name, body.reason))


@router.post("/{tag}/discard", response_model=schemas.OperationResult)
async def discard(tag: str, body: Discard, who: Who, request: Request) -> Any:
    """Discard this server's changes since a split brain (a step of ``resolve``)."""
    who.require("administrator", "resolve a split brain")
    mirror = _mirror(request)
    return _result(await mirror.discard(tag, who.name, body.ancestor, body.winner, body.full))


@router.post("/{tag}/resolve")
async def resolve(tag: str, body: Resolve, who: Who, request: Request) -> dict[str, Any]:
    """A split brain: without ``keep``, how much each side wrote since they diverged;
    with ``keep``, that server's data is kept and every other copy resynchronized from
    it (only the regions either side wrote, where the maps tell)."""
    mirror = _mirror(request)
    cluster, resource = await mirror.mirror(tag)
    views = await _views(mirror, cluster, tag, request)
    split = {s: v["split_brain"] for s, v in views.items() if v.get("split_brain")}
    if not split:
        raise Conflict(f"{tag} is not in split brain: no copy reports one")
    report = {"tag": tag, "source": active_server(cluster, tag), "split_brain": split}
    if body.keep is None:
        return {**report, "done": []}
    who.require("administrator", "resolve a split brain")
    if body.keep not in resource.instances:
        raise ValidationError(f"{body.keep} is not a server of {tag}")
    done = await _keep(mirror, cluster, tag, body.keep, split, request, who.name)
    message = f"{tag}: split brain resolved by {who.name}: {body.keep}'s data kept"
    await mirror.event("mirror-resolved", message, cluster.hierarchy(tag).name)
    return {**report, "done": done}


async def _keep(
    mirror: MirrorOperations,
    cluster: Cluster,
    tag: str,
    keep: str,
    split: dict[str, Any],
    request: Request,
    user: str,
) -> list[str]:
    source = active_server(cluster, tag)
    if keep == source:
        losers = {s: (v["ancestor"], False) for s, v in split.items()}
    elif keep in split:
        if source is not None:
            raise Conflict(
                f"{tag} is in service on {source}: to keep {keep}'s data, take {tag} out of "
                f"service first, then resolve, then bring it in service on {keep}"
            )
        ancestor, former = split[keep]["ancestor"], split[keep]["source"]
        others = [s for s in cluster.resources[tag].instances if s != keep]
        losers = {s: (ancestor, s != former) for s in others}
    else:
        raise Conflict(f"{keep} is neither the source nor a copy in split brain")
    done = []
    for server, (ancestor, full) in sorted(losers.items()):
        body = {"ancestor": ancestor, "winner": keep, "full": full}
        done.append(await _call(mirror, server, tag, "discard", body, request, user))
    if keep != source:
        body = {"server": keep, "reason": f"split brain resolved: {keep}'s data kept"}
        done.append(await _call(mirror, keep, tag, "force", body, request, user))
        done.append(f"now bring {tag} in service on {keep}: vigil in-service {tag} --on {keep}")
    return done


async def _call(
    mirror: MirrorOperations,
    server: str,
    tag: str,
    step: str,
    body: dict[str, Any],
    request: Request,
    user: str,
) -> str:
    """One step of a resolution (``discard`` or ``force``) on ``server``."""
    if server == mirror.operations.server:
        if step == "discard":
            outcome: Outcome = await mirror.discard(
                tag, user, body["ancestor"], body["winner"], body["full"]
            )
        else:
            outcome = await mirror.force(tag, user, body["reason"])
        return outcome.summary
    path = f"/v1/mirror/{tag}/{step}"
    answer = await call_agent(mirror.operations, server, "POST", path, body, request)
    data = answer.json()
    if answer.status_code != 200:
        raise Conflict(f"{server}: {data.get('error', answer.text)}")
    return str(data.get("summary"))
