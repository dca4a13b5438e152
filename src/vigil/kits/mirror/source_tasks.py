"""What the source does besides writing: targets lost, held and dropped; the activity
log's rotation; operators' commands (pause, continue, resync, break); its status.

``unreachable`` is called when a target's link breaks or it falls silent: a Mirroring
target the writes wait for is **held** (``Source.holding``) and tracked in its map, any
other is dropped at once. ``housekeep`` (a thread) drops a held target after
``target_timeout``, rotates the activity log once a second (telling the targets how far
every live target has acknowledged, so they rotate theirs), lets a target paused by a
full async queue try again, and writes ``status.json``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from vigil.kits.mirror.meta import TargetState, write_json
from vigil.kits.mirror.sessions import HB_TIMEOUT, Session
from vigil.kits.mirror.wire import Kind, Link

if TYPE_CHECKING:
    from vigil.kits.mirror.source import Source

__all__ = ["command", "drop", "housekeep", "overflow", "status", "unreachable"]

log = logging.getLogger("vigil.mirror")

TICK = 0.25
ROTATE_EVERY = 1.0
STATUS_EVERY = 0.5
#: seconds before a target paused by a full async queue is resynchronized again
RETRY_PAUSED = 5.0
QUEUE_FULL = "its async queue went past its high-water mark"


def unreachable(src: Source, server: str, why: str, session: Session | None = None) -> None:
    """``server``'s link broke or it fell silent (``session``: the one that did)."""
    with src.order_lock:
        current = src.sessions.get(server)
        if session is not None and current is not session:
            return  # an older session of a target that has reconnected since
        if current is not None:
            del src.sessions[server]
            current.abandon()
        record = src.records.get(server)
        if record is None:
            return
        if record.state == TargetState.MIRRORING and server in src.required:
            if server not in src.holding:
                log.warning(
                    "lost %s (%s): holding writes up to %gs", server, why, src.config.target_timeout
                )
                src.holding[server] = (time.monotonic(), f"lost it ({why})")
                record.dirty.update(src.activity.map)
                record.dirty.persist()
            src._retrack()
        elif record.state in (TargetState.MIRRORING, TargetState.RESYNCING):
            drop(src, server, TargetState.PENDING, f"lost it ({why})")
        else:
            src._retrack()
    src.complete()


def drop(src: Source, server: str, state: str, reason: str) -> None:
    """Go on without ``server`` (now ``state``): it no longer receives writes, what it
    lacks is in its map (untracked when broken off); a target that shared this generation
    makes the source start a new one first. Callers hold ``order_lock``."""
    record = src.records[server]
    shared = record.state == TargetState.MIRRORING
    src.required.discard(server)
    src.holding.pop(server, None)
    session = src.sessions.pop(server, None)
    if session is not None:
        session.abandon()
    if state == TargetState.BROKEN:
        record.base = None
        record.dirty.clear()
    else:
        if shared:
            record.base = src.lineage[0]
        record.dirty.update(src.activity.map)
    record.dirty.persist()
    record.unsaved.clear()
    record.set(state, reason)
    log.warning("%s is %s: %s", server, state, reason)
    if shared:
        src.bump(f"going on without {server}")
    else:
        src.save()
    src._retrack()
    src.announce_peers()
    threading.Thread(target=src.complete, daemon=True).start()


def overflow(src: Source, session: Session) -> None:
    """A queued target fell too far behind (callers hold ``order_lock``): in async mode a
    Mirroring one is paused (and told so before anything else), one being resynchronized
    is dropped to try again later."""
    record = src.records[session.server]
    if record.state != TargetState.MIRRORING:
        drop(src, session.server, TargetState.PENDING, "it could not keep up with the writes")
        return
    with session.changed:
        session.queue.clear()
        session.queue_bytes = 0
    body = {"state": TargetState.PAUSED, "reason": QUEUE_FULL}
    session.deliver(Link.message(Kind.CONTROL, body, src.next_seq()), 0, force=True)
    session.live = False
    src.sessions.pop(session.server, None)  # dropped below; the link closes once it is sent
    threading.Timer(1.0, session.abandon).start()
    drop(src, session.server, TargetState.PAUSED, QUEUE_FULL)


def housekeep(src: Source) -> None:
    """Thread: holds, rotation, retries and status (see the module docstring)."""
    rotated = status_at = 0.0
    while not src.stopping.wait(TICK):
        now = time.monotonic()
        for server, session in list(src.sessions.items()):
            if now - session.last_heard > HB_TIMEOUT:
                unreachable(src, server, f"no word from it for {HB_TIMEOUT:g}s", session)
        for server, (since, why) in list(src.holding.items()):
            if now - since > src.config.target_timeout:
                with src.order_lock:
                    if server in src.holding:
                        timeout = src.config.target_timeout
                        reason = f"{why}; gave up after {timeout:g}s: writes go on without it"
                        drop(src, server, TargetState.PENDING, reason)
        if now - rotated >= ROTATE_EVERY:
            rotated = now
            _rotate(src)
            _retry_paused(src)
        if now - status_at >= STATUS_EVERY:
            status_at = now
            write_json(src.paths.status, status(src))


def _rotate(src: Source) -> None:
    for record in list(src.records.values()):
        if record.unsaved:
            record.dirty.persist(sorted(record.unsaved))
            record.unsaved.clear()
    with src.order_lock:
        live = [s for s in src.sessions.values() if s.live]
        stable = min((s.acked for s in live), default=src.seq)
        if src.activity.rotate(stable, src.seq) and live:
            body = {"stable": stable}
            for session in live:
                session.deliver(Link.message(Kind.CONTROL, body, src.next_seq()), 0, force=True)


def _retry_paused(src: Source) -> None:
    for server, record in list(src.records.items()):
        waited = time.time() - record.since
        if (
            record.state == TargetState.PAUSED
            and record.reason == QUEUE_FULL
            and waited > RETRY_PAUSED
        ):
            with src.order_lock:
                record.set(TargetState.PENDING, "resynchronizing after its queue overflowed")
                _bounce(src, server)


def _bounce(src: Source, server: str) -> None:
    """End ``server``'s session: it reconnects, and the handshake decides afresh."""
    session = src.sessions.pop(server, None)
    if session is not None:
        session.abandon()
    src.save()
    src._retrack()


# --- operators' commands ------------------------------------------------------------------


def command(src: Source, request: dict[str, Any]) -> dict[str, Any]:
    """Carry out one control command: status, pause, continue, resync, break (a target)."""
    action = request.get("command")
    if action == "status":
        return status(src)
    server = str(request.get("target", ""))
    record = src.records.get(server)
    if record is None:
        known = ", ".join(sorted(src.records)) or "none"
        return {
            "ok": False,
            "error": f"{server or '(none)'} is not a target of this mirror (targets: {known})",
        }
    by = str(request.get("by", "an operator"))
    if action in ("pause", "break"):
        state = TargetState.PAUSED if action == "pause" else TargetState.BROKEN
        if record.state == state:
            return {"ok": True, "message": f"{server} is {state} already"}
        reason = f"{'paused' if action == 'pause' else 'broken off'} by {by}"
        _tell(src, server, {"state": state, "reason": reason})
        with src.order_lock:
            drop(src, server, state, reason)
        return {
            "ok": True,
            "message": f"{server} is {state}"
            + (
                "; writes are tracked"
                if action == "pause"
                else "; writes are not tracked: continue or resync copies everything"
            ),
        }
    if action in ("continue", "resync"):
        with src.order_lock:
            if action == "resync":
                record.base = None
            elif record.state not in (TargetState.PAUSED, TargetState.BROKEN, TargetState.PENDING):
                return {"ok": True, "message": f"{server} is {record.state}: nothing to continue"}
            record.split_brain = False
            record.set(TargetState.PENDING, f"{action} asked by {by}")
            _bounce(src, server)
        kind = "a full resync" if action == "resync" or record.base is None else "a partial resync"
        return {"ok": True, "message": f"{server} reconnects; {kind} follows"}
    return {"ok": False, "error": f"unknown command {action!r}"}


def _tell(src: Source, server: str, body: dict[str, Any], wait: float = 3.0) -> bool:
    """Send a control message to a connected target and wait for it to apply it."""
    with src.order_lock:
        session = src.sessions.get(server)
        if session is None:
            return False
        seq = src.next_seq()
        session.deliver(Link.message(Kind.CONTROL, body, seq), 0, force=True)
    deadline = time.monotonic() + wait
    while session.acked < seq and time.monotonic() < deadline and not session.abandoned.is_set():
        time.sleep(0.02)
    return session.acked >= seq


def status(src: Source) -> dict[str, Any]:
    """What ``status.json`` says about the source and each target."""
    now = time.monotonic()
    targets = {}
    for server, record in sorted(src.records.items()):
        session = src.sessions.get(server)
        held = src.holding.get(server)
        targets[server] = {
            "state": record.state,
            "reason": record.reason
            + (f" (holding writes for {now - held[0]:.1f}s)" if held else ""),
            "since": record.since,
            "connected": session is not None,
            "dirty_regions": record.dirty.marked(),
            "dirty_bytes": record.dirty.marked() * src.config.region_size,
            "lag": src.seq - session.acked if session is not None else None,
            "queue_bytes": session.queue_bytes if session is not None else 0,
            "progress": session.progress.view() if session and session.progress else None,
            "split_brain": record.split_brain,
        }
    meta = src.meta
    return {
        "role": "source",
        "time": time.time(),
        "pid": os.getpid(),
        "server": src.config.server,
        "tag": src.config.tag,
        "mode": src.config.mode,
        "serving": True,
        "generation": src.lineage[0] if src.lineage else None,
        "waiting_for": sorted(src.holding),
        "targets": targets,
        "resyncs": [r.model_dump() for r in (meta.resyncs if meta else [])][-10:],
    }
