"""A target's mirror process (the receiver): it finds the source, takes its plan, applies
its frames to the local disk, and says whether this server may take the mirror over.

The disk is held open exclusively (``O_EXCL``) for the process's whole life: nothing can
mount it while this server is a target. The receiver looks for the source among the
mirror's other servers (only the source listens), proves it holds the secret, says what
its disk holds, persists the source's plan before answering ``ready``, then applies
frames in order and acknowledges them (a flush after ``fdatasync``).

**Eligibility** (``status.json``, read by the kit): only a Mirroring target is eligible,
and only while it is connected or has lost its source for less than ``grace``
(``target_timeout`` minus ``MARGIN``): a source that lost it holds writes
``target_timeout`` seconds before going on without it, so a target that may have missed
an acknowledged write has always counted itself out of date first. A receiver that
starts (again) is never eligible until its source confirms it (the source may have gone
on while it was not running), unless an operator forced it.
"""

from __future__ import annotations

import collections
import logging
import mmap
import os
import socket
import threading
import time
from typing import Any

from vigil.kits.mirror import admin
from vigil.kits.mirror.config import DaemonConfig, Peer
from vigil.kits.mirror.meta import MirrorMeta, MirrorPaths, SplitBrain, TargetState, write_json
from vigil.kits.mirror.regions import ActivityLog, RegionMap, region_count
from vigil.kits.mirror.sessions import HB_TIMEOUT
from vigil.kits.mirror.wire import Kind, Link, LinkClosed, nonce, proof
from vigil.kits.mirror.writer import DiskWriter

__all__ = ["MARGIN", "Receiver"]

log = logging.getLogger("vigil.mirror")

#: seconds by which a target's grace is shorter than the source's hold (> HB_TIMEOUT)
MARGIN = 3.0
#: seconds between two rounds of looking for the source
SEARCH_PAUSE = 0.5
#: write the remaining-resync map (after flushing the disk) at most this often
CHECKPOINT = 1.0
#: seconds the acknowledger waits for more writes to complete before it acknowledges
ACK_GATHER = 0.0001
#: the largest frame copied into an aligned buffer (bigger ones are written buffered)
_POOLED = 2**20
_POOL = 32


class Receiver:
    """The target side of one mirror on this server (see the module docstring)."""

    def __init__(self, config: DaemonConfig, paths: MirrorPaths) -> None:
        self.config = config
        self.paths = paths
        self.count = region_count(config.size, config.region_size)
        self.grace = config.target_timeout - MARGIN
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.meta: MirrorMeta | None = None
        self.disk = -1
        self._direct = -1
        self.activity = ActivityLog(RegionMap(self.count))
        self.remaining = RegionMap(self.count)
        self.source: str | None = None
        self.link: Link | None = None
        self.lost_at: float | None = None  # monotonic
        self.last_seq = 0
        self.acked = 0
        self.checkpoint = 0.0
        self.received = 0
        #: set while an operator's decision is being written (no reconnection meanwhile)
        self.admin = threading.Event()
        self._status_lock = threading.Lock()
        self.writer: DiskWriter | None = None
        #: aligned buffers a received write is copied into (for O_DIRECT), and their use
        self._buffers = [memoryview(mmap.mmap(-1, _POOLED)) for _ in range(_POOL)]
        self._free = list(range(_POOL))
        self._freed = threading.Condition()
        #: (frame number, the writer's last ticket then): what an acknowledgement may say
        self._applied: collections.deque[tuple[int, int]] = collections.deque()
        self._send_lock = threading.Lock()
        self._ack_wanted = threading.Event()

    # --- start ----------------------------------------------------------------------------

    def open(self) -> None:
        """Take the disk exclusively and the metadata; a Mirroring state from before this
        process is not trusted (see the module docstring)."""
        meta = self.paths.load()
        if meta is None:
            raise RuntimeError(f"no mirror metadata in {self.paths.root}: extend the mirror here")
        self.disk = os.open(self.config.disk, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
        self._direct = os.open(self.config.disk, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
        self.writer = DiskWriter(self.disk, self._direct, direct_min=4096)
        self.writer.on_done(lambda done: self._ack_wanted.set())
        threading.Thread(target=self._acker, name="acker", daemon=True).start()
        self.activity = ActivityLog(RegionMap.load(self.count, self.paths.activity))
        self.remaining = RegionMap.load(self.count, self.paths.remaining)
        if meta.role == "source":
            meta.reason = "this server was the source: waiting for the new source"
            meta.state = TargetState.PENDING
        elif meta.state in (TargetState.MIRRORING, TargetState.RESYNCING):
            meta.reason = f"the receiver started ({meta.state} before): waiting for the source"
            meta.state = TargetState.PENDING
        meta.role = "target"
        self.meta = meta
        self.paths.save(meta)

    def close(self) -> None:
        """Make everything received durable, and let the disk go."""
        if self.disk >= 0:
            if self.writer is not None:
                self.writer.close()
            self._checkpoint(force=True)
            os.close(self._direct)
            os.close(self.disk)
            self.disk = self._direct = -1

    def set_state(self, state: str, reason: str) -> None:
        """Change and persist this target's state."""
        with self.lock:
            assert self.meta is not None
            if (self.meta.state, self.meta.reason) != (state, reason):
                log.info("%s: %s", state, reason)
            self.meta.state, self.meta.reason = state, reason
            self.paths.save(self.meta)
        self.write_status()  # the kit sees it at once

    # --- finding the source ---------------------------------------------------------------

    def run(self) -> None:
        """Look for the source and serve it, until stopped."""
        while not self.stopping.is_set():
            for peer in self.config.peers:
                if self.stopping.is_set():
                    return
                link = self._connect(peer)
                if link is not None:
                    self._serve(peer, link)
            self.stopping.wait(SEARCH_PAUSE)

    def command(self, request: dict[str, Any]) -> dict[str, Any]:
        """A control command (``control``): status, force, discard, stop."""
        action = request.get("command")
        if action == "status":
            return self.status()
        if action == "stop":
            self.stopping.set()
            self._hang_up()
            return {"ok": True, "message": "stopping"}
        if action not in ("force", "discard"):
            return {"ok": False, "error": f"unknown command {action!r} for a target"}
        by = str(request.get("by", "an operator"))
        self.admin.set()  # no reconnection until the decision is on disk
        try:
            self._hang_up()
            with self.lock:
                assert self.meta is not None
                if action == "force":
                    message = admin.force(self.paths, self.meta, by, str(request.get("reason", "")))
                else:
                    message = admin.discard(
                        self.paths,
                        self.meta,
                        by,
                        str(request["ancestor"]),
                        str(request["winner"]),
                        bool(request.get("full")),
                    )
                    self.remaining = RegionMap.load(self.count, self.paths.remaining)
        finally:
            self.admin.clear()
        return {"ok": True, "message": message}

    def _hang_up(self, wait: float = 5.0) -> None:
        """End the session with the source, and wait until its thread let it go."""
        with self.lock:
            link = self.link
        if link is not None:
            link.close()
        deadline = time.monotonic() + wait
        while self.source is not None and time.monotonic() < deadline:
            time.sleep(0.02)

    def _connect(self, peer: Peer) -> Link | None:
        if self.admin.is_set():
            return None
        try:
            sock = socket.create_connection((peer.address, peer.port), timeout=1.0)
        except OSError:
            return None
        return Link(sock)

    def _serve(self, peer: Peer, link: Link) -> None:
        try:
            link.sock.settimeout(10.0)
            if not self._handshake(peer, link):
                link.close()
                return
            self.link, self.source, self.lost_at = link, peer.server, None
            link.sock.settimeout(0.5)
            self._loop(link)
        except (LinkClosed, TimeoutError, ValueError, KeyError) as exc:
            if self.source == peer.server:
                log.warning("lost the source %s: %s", peer.server, exc)
            else:
                log.debug("no source at %s: %s", peer.server, exc)
        finally:
            link.close()
            if self.source == peer.server:
                self._contact_lost()

    def _contact_lost(self) -> None:
        with self.lock:
            self.link, self.source = None, None
            self.lost_at = time.monotonic()
            assert self.meta is not None
            self.meta.contact_lost_at = time.time()
            self.paths.save(self.meta)

    # --- the handshake --------------------------------------------------------------------

    def _handshake(self, peer: Peer, link: Link) -> bool:
        challenge = link.expect(Kind.CHALLENGE)
        if challenge.get("tag") != self.config.tag or challenge.get("server") != peer.server:
            return False
        assert self.meta is not None
        mine = nonce()
        link.send(Link.message(Kind.HELLO, self._hello(str(challenge["nonce"]), mine, peer)))
        welcome = link.expect(Kind.WELCOME)
        if welcome.get("proof") != proof(self.config.secret, "source", mine):
            raise ValueError(f"{peer.server} does not hold this mirror's secret")
        try:
            self._take(peer.server, welcome)
        except (OSError, ValueError) as exc:
            link.send(Link.message(Kind.CONTROL, {"ready": False, "error": str(exc)}))
            raise
        link.send(Link.message(Kind.CONTROL, {"ready": True}))
        return True

    def _hello(self, challenge: str, mine: str, peer: Peer) -> dict[str, Any]:
        assert self.meta is not None
        own = RegionMap(self.count)
        if self.meta.targets:  # a former source: what it wrote that others may lack
            own.update(self.activity.map)
            known = self.paths.dirty(peer.server)
            for server in [peer.server] if known.exists() else list(self.meta.targets):
                own.update(RegionMap.load(self.count, self.paths.dirty(server)))
        return {
            "tag": self.config.tag,
            "server": self.config.server,
            "proof": proof(self.config.secret, "target", challenge),
            "nonce": mine,
            "lineage": self.meta.lineage,
            "consistent": self.meta.consistent,
            "size": self.config.size,
            "region_size": self.config.region_size,
            "remaining": self.remaining.encode(),
            "activity": self.activity.map.encode(),
            "own": own.encode(),
        }

    def _take(self, source: str, welcome: dict[str, Any]) -> None:
        """Persist the source's plan (before answering ``ready``)."""
        kind, state = str(welcome["kind"]), str(welcome["state"])
        reason = f"{welcome.get('reason', '')} (source {source})"
        lineage = [str(g) for g in welcome.get("lineage", [])]
        with self.lock:
            assert self.meta is not None
            meta = self.meta
            meta.last_source = False  # another source exists: it has the newest data
            self.last_seq = self.acked = 0
            self.activity.rotation_seq = 0
            if kind == "none":
                meta.lineage, meta.consistent, meta.forced = lineage, True, None
                self._forget_source_role()
            elif kind in ("partial", "full"):
                self.remaining.update(RegionMap.decode(self.count, welcome.get("regions")))
                self.remaining.persist()
                meta.consistent = False
                self._forget_source_role()
            elif kind == "split-brain":
                meta.split_brain = SplitBrain.model_validate(welcome["split_brain"])
            self.set_state(state, reason)

    def _forget_source_role(self) -> None:
        """This disk is becoming a copy of another source's: what it kept as a source
        (its targets' maps) no longer describes it."""
        assert self.meta is not None
        for server in self.meta.targets:
            self.paths.dirty(server).unlink(missing_ok=True)
        self.meta.targets, self.meta.split_brain = {}, None

    # --- applying frames ------------------------------------------------------------------

    def _loop(self, link: Link) -> None:
        quiet_since = time.monotonic()
        self._applied.clear()
        while not self.stopping.is_set():
            try:
                frame = link.read()
            except TimeoutError:
                if time.monotonic() - quiet_since > HB_TIMEOUT:
                    raise LinkClosed(f"no word from the source for {HB_TIMEOUT:g}s") from None
                continue
            quiet_since = time.monotonic()
            self._apply(frame.kind, frame.seq, frame.offset, frame)
            if frame.kind == Kind.PING:
                self._acknowledge(always=True)
            elif not link.buffered():
                self._acknowledge()
            self._checkpoint()

    def _apply(self, kind: int, seq: int, offset: int, frame: Any) -> None:
        """Apply one frame: writes go to the disk writer, anything else waits for every
        write before it (a flush is then a flush of all of them)."""
        assert self.writer is not None
        if kind in (Kind.WRITE, Kind.RESYNC):
            self._write(offset, frame.data(), kind == Kind.RESYNC)
        elif kind == Kind.FLUSH:
            self.writer.wait_all()
            os.fdatasync(self.disk)
        elif kind == Kind.CONTROL:
            self.writer.wait_all()
            self._control(frame.json(), seq)
        if self.writer.error is not None:
            raise OSError(f"writing the disk {self.config.disk} failed: {self.writer.error}")
        if seq:
            self.last_seq = seq
            self._applied.append((seq, self.writer.issued))

    def _acker(self) -> None:
        """Thread: acknowledge writes the disk writer completed, a few at a time (one
        acknowledgement per completed write would cost the source as much as the write)."""
        while not self.stopping.is_set():
            if self._ack_wanted.wait(0.5):
                self._ack_wanted.clear()
                time.sleep(ACK_GATHER)
                self._acknowledge()

    def _acknowledge(self, always: bool = False) -> None:
        """Tell the source how far every frame has been applied (from any thread)."""
        assert self.writer is not None
        with self._send_lock:
            done, upto = self.writer.done, self.acked
            while self._applied and self._applied[0][1] <= done:
                upto = self._applied.popleft()[0]
            link = self.link
            if link is None or (upto <= self.acked and not always):
                return
            try:
                link.send(Link.frame(Kind.ACK, upto))
            except OSError:
                return  # the link broke: the reading thread finds out
            self.acked = max(self.acked, upto)

    def _write(self, offset: int, data: bytes | memoryview, resync: bool) -> None:
        assert self.writer is not None
        size = self.config.region_size
        first, last = offset // size, (offset + len(data) - 1) // size
        if not resync:  # a resync block is the source's data: no other copy lacks it
            self.activity.persist(self.activity.touch(first, last))
        self.received += len(data)
        if len(data) > _POOLED:
            self.writer.submit(offset, bytes(data), self._resynced(first, last, resync))
            return
        with self._freed:
            while not self._free:
                self._freed.wait()
            index = self._free.pop()
        buffer = self._buffers[index][: len(data)]
        buffer[:] = data

        def written(ticket: int) -> None:
            if resync:
                for region in range(first, last + 1):
                    self.remaining.bits[region] = 0
            with self._freed:
                self._free.append(index)
                self._freed.notify()

        self.writer.submit(offset, buffer, written)

    def _resynced(self, first: int, last: int, resync: bool) -> Any:
        def written(ticket: int) -> None:
            if resync:
                for region in range(first, last + 1):
                    self.remaining.bits[region] = 0

        return written

    def _checkpoint(self, force: bool = False) -> None:
        """Persist the remaining-resync map, after making what it no longer lists durable."""
        now = time.monotonic()
        if not force and now - self.checkpoint < CHECKPOINT:
            return
        self.checkpoint = now
        os.fdatasync(self.disk)
        self.remaining.persist()

    def _control(self, body: dict[str, Any], seq: int) -> None:
        with self.lock:
            assert self.meta is not None
            meta = self.meta
            if "stable" in body:
                self.activity.rotate(int(body["stable"]), seq)
            if "peers_in_sync" in body:
                meta.peers_in_sync = [str(s) for s in body["peers_in_sync"]]
                self.paths.save(meta)
            if "lineage" in body and body.get("state") != TargetState.MIRRORING:
                meta.lineage = [str(g) for g in body["lineage"]]
                self.paths.save(meta)
            if body.get("state") == TargetState.MIRRORING:
                self._synced([str(g) for g in body["lineage"]])
            elif "state" in body:
                self.set_state(str(body["state"]), str(body.get("reason", "")))

    def _synced(self, lineage: list[str]) -> None:
        """The resync is complete: this disk holds the source's data."""
        assert self.meta is not None
        os.fdatasync(self.disk)
        self.remaining.clear()
        self.remaining.persist()
        self.meta.lineage, self.meta.consistent = lineage, True
        self.meta.forced = None
        self._forget_source_role()
        self.set_state(TargetState.MIRRORING, f"in sync with {self.source}")

    # --- eligibility and status -----------------------------------------------------------

    def eligibility(self) -> tuple[bool, str]:
        """May this server take the mirror over now? (see the module docstring)"""
        with self.lock:
            assert self.meta is not None
            meta = self.meta
            if meta.forced is not None:
                return True, f"forced by {meta.forced.by}: its data may be behind the last source's"
            if meta.state != TargetState.MIRRORING:
                return False, f"mirror target {meta.state}: {meta.reason}"
            if self.source is not None:
                return True, f"Mirroring, in sync with {self.source}"
            lost = time.monotonic() - (self.lost_at or 0.0)
            if lost < self.grace:
                return True, f"Mirroring; lost its source {lost:.1f}s ago"
            self.set_state(
                TargetState.PENDING,
                f"lost its source {lost:.0f}s ago: it may have gone on without this target",
            )
            return False, f"mirror target {meta.state}: {meta.reason}"

    def status(self) -> dict[str, Any]:
        eligible, why = self.eligibility()
        assert self.meta is not None
        meta = self.meta
        return {
            "role": "target",
            "time": time.time(),
            "pid": os.getpid(),
            "server": self.config.server,
            "tag": self.config.tag,
            "state": meta.state,
            "reason": meta.reason,
            "eligible": eligible,
            "eligibility": why,
            "source": self.source,
            "generation": meta.lineage[0] if meta.lineage else None,
            "remaining_regions": self.remaining.marked(),
            "received_bytes": self.received,
            "split_brain": meta.split_brain.model_dump() if meta.split_brain else None,
            "forced": meta.forced.model_dump() if meta.forced else None,
        }

    def write_status(self) -> None:
        status = self.status()  # takes self.lock: never while holding _status_lock
        with self._status_lock:
            write_json(self.paths.status, status)

    def watch(self) -> None:
        """Thread: eligibility's clock, and ``status.json`` twice a second."""
        while not self.stopping.wait(0.5):
            self.write_status()
