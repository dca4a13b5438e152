"""Talking to a running mirror process: one JSON request, one JSON answer, on a Unix
socket only root can use (``MirrorPaths.socket``).

Commands: ``status`` (both roles); on a source ``pause``, ``continue``, ``resync`` and
``break`` (of a ``target``); on a target ``force`` and ``discard`` (split-brain
resolution); ``stop`` (both: end the process cleanly).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ControlUnavailable", "ask", "serve"]

log = logging.getLogger("vigil.mirror")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlUnavailable(OSError):
    """No mirror process answers (none runs, or it is stuck)."""


def serve(path: Path, handler: Handler, stopping: threading.Event) -> socket.socket:
    """Listen on ``path`` (replacing a stale socket) and answer requests with ``handler``
    in a thread of their own, until ``stopping`` is set."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o600)
    server.listen(4)
    server.settimeout(0.5)

    def loop() -> None:
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=_answer, args=(conn, handler), daemon=True).start()
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    threading.Thread(target=loop, name="control", daemon=True).start()
    return server


def _answer(conn: socket.socket, handler: Handler) -> None:
    with conn:
        conn.settimeout(30.0)
        try:
            request = json.loads(_read_line(conn))
            answer = handler(request if isinstance(request, dict) else {})
        except Exception as exc:  # the answer says what went wrong; the process goes on
            log.exception("control request failed")
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(answer).encode() + b"\n")


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def ask(path: Path, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send ``request`` to the process listening on ``path``; its answer.
    ``ControlUnavailable`` when nothing answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(path))
            conn.sendall(json.dumps(request).encode() + b"\n")
            answer = json.loads(_read_line(conn) or b"null")
    except (OSError, ValueError) as exc:
        raise ControlUnavailable(f"no mirror process answers on {path}: {exc}") from exc
    if not isinstance(answer, dict):
        raise ControlUnavailable(f"the mirror process on {path} gave no answer")
    return answer
