"""A small HTTP service to protect with the app kit, for demos and tests.

Usage (its exit codes are the app kit's)::

    python3 -m vigil.kits.app.sample_service start  --pidfile P --bind ADDR --port N --name NAME
                                                    [--data-dir D] [--log FILE] [--timeout S]
    python3 -m vigil.kits.app.sample_service stop   --pidfile P [--timeout S]
    python3 -m vigil.kits.app.sample_service status --pidfile P --bind ADDR --port N

``start`` listens on ADDR:N, then daemonizes (double fork and ``setsid``: the daemon leaves
the caller's process group, so the app kit's restore command can return), sends its
output to ``--log`` (default: the pidfile's path + ``.log``), writes the pidfile, and
returns once the port is listening: 0 started (or already running), 1 failed, 6 not
configured (``--data-dir`` missing). The service answers ``GET /`` with ``NAME`` on a line,
followed, with ``--data-dir``, by the content of ``D/counter``: the number of ``GET /``
answered so far, kept in that file (so it carries over to another server when the
directory is on storage that moves with the service). ``GET /health`` answers ``ok``
without changing anything.

``stop`` sends SIGTERM to the process in the pidfile, SIGKILL after ``--timeout``, and
returns once it is gone (0; also when it was not running; 1 when it could not be killed).

``status`` exits 0 when the process in the pidfile runs and the port answers, 7 when it
does not run, 1 when it runs but the port does not answer.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_CONFIGURED = 6
EXIT_NOT_RUNNING = 7

#: a word of this module's name in the daemon's command line, to recognise it by pid
_MARKER = b"vigil.kits.app.sample_service"


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code."""
    args = _parser().parse_args(argv)
    if args.command == "start":
        return _start(args)
    if args.command == "stop":
        return _stop(args)
    return _status(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m vigil.kits.app.sample_service")
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--pidfile", type=Path, required=True)
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="sample", help="what GET / answers")
    parser.add_argument("--data-dir", type=Path, help="directory of the counter file")
    parser.add_argument("--log", type=Path, help="the daemon's output (default PIDFILE.log)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    return parser


# --- start ------------------------------------------------------------------------------


def _start(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        print(f"start: --port is required (1-65535), got {args.port}")
        return EXIT_NOT_CONFIGURED
    if args.data_dir is not None and not args.data_dir.is_dir():
        print(f"start: data directory {args.data_dir} does not exist")
        return EXIT_NOT_CONFIGURED
    pid = _running_pid(args.pidfile)
    if pid is not None:
        if _wait_answering(args, args.timeout):
            print(f"{args.name} is already running (pid {pid})")
            return EXIT_OK
        print(f"{args.name}: pid {pid} runs but port {args.port} does not answer")
        return EXIT_FAILED
    try:
        listener = _listen(args.bind, args.port)
    except OSError as exc:
        print(f"start: cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}")
        return EXIT_FAILED
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked processes
        os.close(read_end)
        _become_daemon(args, listener, write_end)
    os.close(write_end)
    listener.close()
    report = _read_report(read_end, args.timeout)
    os.waitpid(child, 0)
    if report.startswith("ok "):
        print(f"started {args.name} (pid {report[3:]}) on {args.bind}:{args.port}")
        return EXIT_OK
    print(f"start: {args.name} failed to start: {report or 'no answer from the daemon'}")
    return EXIT_FAILED


def _listen(bind: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(64)
    except OSError:
        listener.close()
        raise
    return listener


def _read_report(fd: int, timeout: float) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([pipe], [], [], left)[0]:
                break
            chunk = pipe.read(4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").strip()


def _become_daemon(
    args: argparse.Namespace, listener: socket.socket, report_fd: int
) -> None:  # pragma: no cover
    """In the first child: leave the session, fork again, and serve in the grandchild."""
    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        os.chdir("/")
        os.umask(0o022)
        log_path = args.log or args.pidfile.with_name(args.pidfile.name + ".log")
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        server = _server(args, listener)
        _write_pidfile(args.pidfile)
        os.write(report_fd, f"ok {os.getpid()}\n".encode())
        os.close(report_fd)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(report_fd, f"error {type(exc).__name__}: {exc}\n".encode())
        os._exit(EXIT_FAILED)
    print(f"{args.name}: serving on {args.bind}:{args.port} (pid {os.getpid()})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        _remove_pidfile(args.pidfile, os.getpid())
        print(f"{args.name}: stopped", flush=True)
    os._exit(EXIT_OK)


def _server(args: argparse.Namespace, listener: socket.socket) -> ThreadingHTTPServer:
    name: str = args.name
    counter: Path | None = args.data_dir / "counter" if args.data_dir else None
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                self._answer(200, "ok\n")
            elif self.path == "/":
                self._answer(200, f"{name}\n" + (_count(counter, lock) if counter else ""))
            else:
                self._answer(404, "not found\n")

        def _answer(self, code: int, text: str) -> None:
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(listener.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    server.daemon_threads = True
    return server


def _count(counter: Path, lock: threading.Lock) -> str:
    """Add one to the counter file (atomically, durably) and return its new content."""
    with lock:
        try:
            count = int(counter.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            count = 0
        content = f"{count + 1}\n"
        temporary = counter.with_name(counter.name + ".tmp")
        with open(temporary, "w") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, counter)
        return content


def _write_pidfile(pidfile: Path) -> None:
    temporary = pidfile.with_name(pidfile.name + ".tmp")
    temporary.write_text(f"{os.getpid()}\n")
    os.replace(temporary, pidfile)


def _remove_pidfile(pidfile: Path, pid: int) -> None:
    if _read_pid(pidfile) == pid:
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()


# --- stop and status ----------------------------------------------------------------------


def _stop(args: argparse.Namespace) -> int:
    pid = _running_pid(args.pidfile)
    if pid is None:
        with contextlib.suppress(FileNotFoundError):
            args.pidfile.unlink()
        print(f"{args.name} is not running")
        return EXIT_OK
    for signum, wait in ((signal.SIGTERM, args.timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        if _wait_gone(pid, wait):
            _remove_pidfile(args.pidfile, pid)
            print(f"stopped {args.name} (pid {pid}, {signal.Signals(signum).name})")
            return EXIT_OK
    print(f"stop: pid {pid} is still running after SIGKILL")
    return EXIT_FAILED


def _status(args: argparse.Namespace) -> int:
    pid = _running_pid(args.pidfile)
    if pid is None:
        print(f"{args.name} is not running")
        return EXIT_NOT_RUNNING
    problem = _health_problem(args.bind, args.port, 2.0)
    if problem is None:
        print(f"{args.name} is running (pid {pid})")
        return EXIT_OK
    print(f"{args.name}: pid {pid} runs but {args.bind}:{args.port} does not answer: {problem}")
    return EXIT_FAILED


def _health_problem(bind: str, port: int, timeout: float) -> str | None:
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)
    url = f"http://[{host}]:{port}/health" if ":" in host else f"http://{host}:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            body: bytes = answer.read()
    except OSError as exc:
        return str(getattr(exc, "reason", None) or exc)
    return None if body.strip() == b"ok" else f"unexpected answer {body[:80]!r}"


def _wait_answering(args: argparse.Namespace, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _health_problem(args.bind, args.port, 1.0) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _running_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` when that process runs and is this service, else None."""
    pid = _read_pid(pidfile)
    if pid is None or not _alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if _MARKER in cmdline else None


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """True when ``pid`` runs; a zombie (exited, not reaped yet) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X", "")


if __name__ == "__main__":
    sys.exit(main())
