"""The source accepts its targets: listen, authenticate, plan, start the session.

A target connects (it looks for its source among the mirror's servers). Both ends prove
they hold the mirror's secret; the target tells what its disk holds (``lineage.Hello``),
the source decides with ``lineage.plan`` and answers ``WELCOME`` with the plan. Planning
and registering the session happen under the source's order lock: every write issued
after the plan reaches the target (its session queue starts at once), every write before
it is in the plan. The target persists its new state and answers ``ready``; only then is a
target the writes were waiting for let go (it no longer counts itself in sync).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from vigil.kits.mirror.lineage import Hello, Plan, PlanKind, plan
from vigil.kits.mirror.meta import SplitBrain, TargetState
from vigil.kits.mirror.regions import RegionMap
from vigil.kits.mirror.sessions import Session
from vigil.kits.mirror.wire import Kind, Link, LinkClosed, nonce, proof

if TYPE_CHECKING:
    from vigil.kits.mirror.source import Record, Source

__all__ = ["HANDSHAKE_TIMEOUT", "listen"]

log = logging.getLogger("vigil.mirror")

#: seconds a handshake may take
HANDSHAKE_TIMEOUT = 10.0
_IDLE = {PlanKind.PAUSED, PlanKind.BROKEN, PlanKind.SPLIT_BRAIN, PlanKind.REFUSED}
_STATES = {
    PlanKind.NONE: TargetState.MIRRORING,
    PlanKind.PARTIAL: TargetState.RESYNCING,
    PlanKind.FULL: TargetState.RESYNCING,
    PlanKind.PAUSED: TargetState.PAUSED,
    PlanKind.BROKEN: TargetState.BROKEN,
    PlanKind.SPLIT_BRAIN: TargetState.BROKEN,
    PlanKind.REFUSED: TargetState.BROKEN,
}


def listen(src: Source) -> socket.socket:
    """The source's listening socket (``OSError`` when the address or port cannot be
    used), and a thread accepting on it until the source stops."""
    server = socket.socket(socket.AF_INET6 if ":" in src.config.address else socket.AF_INET)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((src.config.address, src.config.port))
    server.listen(8)
    server.settimeout(0.5)

    def accept_loop() -> None:
        while not src.stopping.is_set():
            try:
                sock, peer = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(
                target=_welcome, args=(src, sock, peer), name=f"handshake {peer}", daemon=True
            ).start()

    threading.Thread(target=accept_loop, name="accept", daemon=True).start()
    return server


def _welcome(src: Source, sock: socket.socket, peer: Any) -> None:
    sock.settimeout(HANDSHAKE_TIMEOUT)
    link = Link(sock)
    try:
        server = _handshake(src, link)
    except (LinkClosed, TimeoutError, ValueError, KeyError) as exc:
        log.warning("handshake with %s failed: %s", peer, exc)
        link.close()
        return
    log.info("%s connected from %s", server, peer[0])


def _hello(src: Source, link: Link) -> tuple[dict[str, Any], Hello]:
    mine = nonce()
    body = {"nonce": mine, "server": src.config.server, "tag": src.config.tag}
    link.send(Link.message(Kind.CHALLENGE, body))
    said = link.expect(Kind.HELLO)
    if said.get("tag") != src.config.tag:
        raise ValueError(f"it serves mirror {said.get('tag')!r}, not {src.config.tag!r}")
    if said.get("proof") != proof(src.config.secret, "target", mine):
        raise ValueError("it does not hold this mirror's secret")
    server = str(said["server"])
    if server == src.config.server:
        raise ValueError("it is this very server")
    count = src.count
    hello = Hello(
        server=server,
        lineage=[str(g) for g in said.get("lineage", [])],
        consistent=bool(said.get("consistent")),
        size=int(said["size"]),
        region_size=int(said["region_size"]),
        remaining=RegionMap.decode(count, said.get("remaining")),
        activity=RegionMap.decode(count, said.get("activity")),
        own=RegionMap.decode(count, said.get("own")),
    )
    return said, hello


def _handshake(src: Source, link: Link) -> str:
    said, hello = _hello(src, link)
    server = hello.server
    with src.order_lock:
        record = _record(src, server)
        decided = plan(
            src.lineage, src.size, src.config.region_size, record.planned(), src.activity.map, hello
        )
        welcome = _welcome_body(src, said, decided)
        link.send(Link.message(Kind.WELCOME, welcome))
        old = src.sessions.pop(server, None)
        if old is not None:
            old.abandon()
        session = Session(src, server, link, src.config.queue_limit)
        session.live = decided.kind not in _IDLE
        src.sessions[server] = session
        src._retrack()
    ready = link.expect(Kind.CONTROL)
    if not ready.get("ready"):
        raise ValueError(f"it did not take the plan: {ready.get('error', ready)}")
    link.sock.settimeout(0.5)
    _apply(src, session, record, decided)
    return server


def _record(src: Source, server: str) -> Record:
    from vigil.kits.mirror.source import Record

    record = src.records.get(server)
    if record is None:
        record = Record(
            server,
            TargetState.PENDING,
            "new target",
            None,
            RegionMap(src.count, src.paths.dirty(server)),
        )
        src.records[server] = record
    return record


def _welcome_body(src: Source, said: dict[str, Any], decided: Plan) -> dict[str, Any]:
    regions = decided.regions
    if decided.kind is PlanKind.FULL:
        regions = RegionMap(src.count)
        regions.bits[:] = b"\x01" * src.count
    body: dict[str, Any] = {
        "proof": proof(src.config.secret, "source", str(said.get("nonce", ""))),
        "kind": decided.kind.value,
        "state": _STATES[decided.kind],
        "reason": decided.reason,
        "lineage": src.lineage,
        "regions": regions.encode() if regions is not None and decided.kind not in _IDLE else None,
    }
    if decided.kind is PlanKind.SPLIT_BRAIN:
        body["split_brain"] = SplitBrain(
            source=src.config.server,
            ancestor=decided.ancestor or "",
            source_regions=decided.source_regions,
            target_regions=decided.target_regions,
            at=time.time(),
        ).model_dump()
    return body


def _apply(src: Source, session: Session, record: Record, decided: Plan) -> None:
    """The target took the plan: start its session, let go of held writes."""
    server = session.server
    with src.order_lock:
        if src.sessions.get(server) is not session:
            return
        if decided.kind is PlanKind.NONE:
            session.promote_at = src.seq or 1
            session.acked = max(session.acked, session.promote_at)
            session.start(None, "")
            src.promote(session)
        else:
            src.required.discard(server)
            src.holding.pop(server, None)
            if decided.kind in (PlanKind.PARTIAL, PlanKind.FULL):
                assert decided.regions is not None or decided.kind is PlanKind.FULL
                todo = decided.regions or RegionMap(src.count)
                if decided.kind is PlanKind.FULL:
                    todo.bits[:] = b"\x01" * src.count
                record.dirty.update(todo)
                record.dirty.persist()
                record.set(TargetState.RESYNCING, decided.reason)
                record.split_brain = False
                session.start(todo, decided.kind.value)
            else:
                record.split_brain = decided.kind is PlanKind.SPLIT_BRAIN
                if decided.kind in (PlanKind.SPLIT_BRAIN, PlanKind.REFUSED):
                    record.set(TargetState.BROKEN, decided.reason)
                session.start(None, "")
            src.save()
            src._retrack()
    src.complete()
