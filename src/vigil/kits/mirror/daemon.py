"""A mirror process: ``python -m vigil.kits.mirror.daemon source|target CONFIG``.

Started by the kit (``service``): the source by ``restore``, in the resource's cgroup; a
target's receiver by ``standby``, outside it, so it outlives its agent (a target stays in
sync while its agent restarts). It holds ``active.lock`` for its whole life (one mirror
process per mirror and server), logs to ``mirror.log``, answers ``control`` requests,
writes ``status.json``, and ends cleanly on SIGTERM (or the ``stop`` command): a source
flushes its disk and records its targets, a target lets its source go.

Exit codes: 0 stopped, 1 failed (the reason is the last line of ``mirror.log``), 2 another
mirror process runs for this mirror here.
"""

from __future__ import annotations

import faulthandler
import fcntl
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from vigil.kits.mirror import control, source_tasks
from vigil.kits.mirror.accept import listen
from vigil.kits.mirror.config import DaemonConfig
from vigil.kits.mirror.meta import MirrorPaths, write_json
from vigil.kits.mirror.source import Source
from vigil.kits.mirror.target import Receiver

log = logging.getLogger("vigil.mirror")


def _lock(paths: MirrorPaths) -> int | None:
    paths.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _logging(paths: MirrorPaths, role: str) -> None:
    handler = logging.FileHandler(paths.log)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {role}[%(process)d] %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def run_source(config: DaemonConfig, paths: MirrorPaths) -> None:
    src = Source(config, paths)
    src.open()

    def handler(request: dict[str, Any]) -> dict[str, Any]:
        if request.get("command") == "stop":
            src.stopping.set()
            return {"ok": True, "message": "stopping"}
        return source_tasks.command(src, request)

    control.serve(paths.socket, handler, src.stopping)
    listener = listen(src)
    src.fuse.mount()
    for job, name in ((source_tasks.housekeep, "housekeeping"), (src.flusher, "flusher")):
        threading.Thread(
            target=job, args=() if name == "flusher" else (src,), name=name, daemon=True
        ).start()
    write_json(paths.status, source_tasks.status(src))
    log.info("serving %s (%d bytes) at %s", config.tag, config.size, paths.device_file)
    try:
        src.serve()
    finally:
        src.stopping.set()
        listener.close()
        with src.order_lock:
            for session in list(src.sessions.values()):
                session.abandon()
            if src.writer is not None:
                src.writer.close()
            os.fdatasync(src.disk)
            for record in src.records.values():
                record.dirty.persist()
            src.save()
        src.fuse.unmount()
        status = source_tasks.status(src)
        status["serving"] = False
        write_json(paths.status, status)
        log.info("source stopped")


def run_target(config: DaemonConfig, paths: MirrorPaths) -> None:
    receiver = Receiver(config, paths)
    receiver.open()
    control.serve(paths.socket, receiver.command, receiver.stopping)
    threading.Thread(target=receiver.watch, name="status", daemon=True).start()
    receiver.write_status()
    log.info("receiver of %s started: %s", config.tag, receiver.status()["reason"])
    try:
        receiver.run()
    finally:
        receiver.close()
        write_json(paths.status, {**receiver.status(), "eligible": False, "stopped": True})
        log.info("receiver stopped")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("source", "target"):
        print("usage: python -m vigil.kits.mirror.daemon source|target CONFIG", file=sys.stderr)
        return 1
    role, config = argv[0], DaemonConfig.read(Path(argv[1]))
    paths = MirrorPaths(Path(config.root))
    _logging(paths, role)
    # SIGUSR1 writes every thread's stack to mirror.log (for a process that seems stuck)
    log_file = open(paths.log, "a")  # noqa: SIM115 (open for the process's life)
    faulthandler.register(signal.SIGUSR1, file=log_file, all_threads=True)
    held = _lock(paths)
    if held is None:
        log.error("another mirror process of %s runs here (%s is locked)", config.tag, paths.lock)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        control_stop(paths)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        (run_source if role == "source" else run_target)(config, paths)
    except Exception as exc:
        log.exception("the %s of %s failed: %s", role, config.tag, exc)
        return 1
    finally:
        os.close(held)
    return 0


def control_stop(paths: MirrorPaths) -> None:
    """Ask this very process to stop (from a signal handler: in a thread of its own)."""
    threading.Thread(target=lambda: _quiet_stop(paths), name="stop", daemon=True).start()


def _quiet_stop(paths: MirrorPaths) -> None:
    try:
        control.ask(paths.socket, {"command": "stop"}, timeout=5.0)
    except control.ControlUnavailable:
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
