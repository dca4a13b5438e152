"""The administrator's operations on this server's copy of a mirror (``vigil mirror``),
for the agent that serves them (``vigil.agent.mirrorops``): this copy's view, commands to
the source process, forcing this copy eligible, discarding its split-brain changes.

Each goes through the mirror process when one runs here (``control``), and otherwise
works on the files directly, holding the process lock so none starts meanwhile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vigil.kits.mirror import admin, control
from vigil.kits.mirror.meta import MirrorPaths
from vigil.kits.mirror.service import fresh, running

__all__ = ["MirrorUnavailable", "discard", "force", "local_view", "source_command"]


class MirrorUnavailable(RuntimeError):
    """The operation needs a mirror process or files that are not there."""


def local_view(state_dir: Path) -> dict[str, Any]:
    """What this server knows of its copy: the running process's status (if any) and what
    its metadata says."""
    paths = MirrorPaths.of(state_dir)
    meta = paths.load()
    if meta is None:
        return {"set_up": False}
    status = running(paths)
    return {
        "set_up": True,
        "process": status if status is not None and fresh(status) else None,
        "role": meta.role,
        "state": meta.state,
        "reason": meta.reason,
        "generation": meta.lineage[0] if meta.lineage else None,
        "consistent": meta.consistent,
        "last_source": meta.last_source,
        "forced": meta.forced.model_dump() if meta.forced else None,
        "split_brain": meta.split_brain.model_dump() if meta.split_brain else None,
        "resyncs": [r.model_dump() for r in meta.resyncs[-10:]],
    }


def source_command(state_dir: Path, request: dict[str, Any]) -> dict[str, Any]:
    """Send ``request`` to the source process running here; its answer."""
    paths = MirrorPaths.of(state_dir)
    if running(paths, "source") is None:
        raise MirrorUnavailable("the mirror's source process does not run on this server")
    try:
        return control.ask(paths.socket, request)
    except control.ControlUnavailable as exc:
        raise MirrorUnavailable(str(exc)) from exc


def _on_copy(state_dir: Path, request: dict[str, Any], direct: Any) -> str:
    """``request`` through the receiver running here, or ``direct(paths, meta)`` on the
    files when no mirror process runs."""
    paths = MirrorPaths.of(state_dir)
    if running(paths, "target") is not None:
        try:
            answer = control.ask(paths.socket, request)
        except control.ControlUnavailable as exc:
            raise MirrorUnavailable(str(exc)) from exc
        if not answer.get("ok"):
            raise MirrorUnavailable(str(answer.get("error")))
        return str(answer.get("message"))
    if running(paths, "source") is not None:
        raise MirrorUnavailable("this server is the mirror's source: take it out of service first")
    with paths.locked() as free:
        if not free:
            raise MirrorUnavailable("a mirror process is starting or stopping here: try again")
        meta = paths.load()
        if meta is None:
            raise MirrorUnavailable("the mirror is not set up on this server")
        return str(direct(paths, meta))


def force(state_dir: Path, by: str, reason: str) -> str:
    """Make this copy eligible whatever its state (an operator's decision)."""
    request = {"command": "force", "by": by, "reason": reason}
    return _on_copy(state_dir, request, lambda paths, meta: admin.force(paths, meta, by, reason))


def discard(state_dir: Path, by: str, ancestor: str, winner: str, full: bool) -> str:
    """Discard what this copy holds since it diverged from ``winner``'s (``full``:
    everything is copied again)."""
    request = {
        "command": "discard", "by": by, "ancestor": ancestor, "winner": winner, "full": full
    }  # fmt: skip
    return _on_copy(
        state_dir,
        request,
        lambda paths, meta: admin.discard(paths, meta, by, ancestor, winner, full),
    )
