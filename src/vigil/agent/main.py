"""``vigil agent run``: set up logging and signals, then run the agent and its API.

Logging goes through a ``QueueHandler``: a slow disk must never delay a lease renewal
(the writing happens in the ``QueueListener``'s thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import logging.handlers
import os
import queue
import signal
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn

from vigil.agent.config import AgentConfig, load_config, load_tokens
from vigil.agent.daemon import Agent
from vigil.agent.operations import Operations
from vigil.agent.realtime import run_realtime
from vigil.agent.systemd import JournalFormatter, under_journald
from vigil.agent.tls import client_context, server_context
from vigil.api.app import create_app
from vigil.api.auth import Authenticator
from vigil.errors import VigilError
from vigil.model.policies import StopMode
from vigil.web import end_streams

log = logging.getLogger("vigil.agent")
_PR_SET_CHILD_SUBREAPER = 36


def setup_logging(
    log_file: Path | None, level: int = logging.INFO
) -> logging.handlers.QueueListener:
    """One readable line per record, written off the event loop; under systemd without a
    log file, lines the journal reads its priority from (``vigil.agent.systemd``)."""
    formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if log_file is None and under_journald():
        formatter = JournalFormatter()
    target: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        target = logging.FileHandler(log_file)
    else:
        target = logging.StreamHandler(sys.stderr)
    target.setFormatter(formatter)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(level)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise
    listener = logging.handlers.QueueListener(records, target)
    listener.start()
    return listener


def become_subreaper() -> None:
    """Adopt orphaned descendants (daemons started by kits), so they are reaped promptly:
    PID 1 reaps slowly on some machines, which slows daemons that wait for children."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except OSError:
        log.warning("could not become a child subreaper; orphans will be reaped by PID 1")


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the agent owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def _reap_orphans() -> None:
    """Reap adopted orphans (daemons started by kits that exited).

    asyncio reaps its own children by pid (a thread blocked in ``waitpid`` per child), so a
    zombie that is still there after a grace period has nobody waiting for it: it is an
    adopted orphan, and we reap it. ``WNOWAIT`` peeks without reaping, so an asyncio child
    is never stolen from its watcher.
    """
    while True:
        await asyncio.sleep(1.0)
        try:
            first = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # noqa: ASYNC222
        except ChildProcessError:
            continue
        if first is None:
            continue
        await asyncio.sleep(0.5)
        with contextlib.suppress(ChildProcessError):
            again = os.waitid(  # noqa: ASYNC222 (WNOHANG: never blocks)
                os.P_PID, first.si_pid, os.WEXITED | os.WNOHANG | os.WNOWAIT
            )
            if again is not None:
                os.waitpid(first.si_pid, os.WNOHANG)  # noqa: ASYNC222


def _tls_options(config: AgentConfig) -> dict[str, Any]:
    """uvicorn's TLS settings: this agent's certificate and key (checked first, so a wrong
    file is a message naming it), or none under ``plain_http`` (with a warning)."""
    tls = config.tls
    if tls.cert_file is None or tls.key_file is None:
        log.warning(
            "the API of %s is served over plain HTTP ([tls] plain_http = true): tokens, "
            "passwords and session cookies cross the network in clear",
            config.server,
        )
        return {}
    server_context(tls.cert_file, tls.key_file)  # ConfigError: unusable certificate or key
    return {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}


async def run(config: AgentConfig) -> None:
    tls_options = _tls_options(config)  # refuse an unusable certificate before anything starts
    log.info("scheduling: %s", run_realtime(config.lease.realtime_priority))
    agent = Agent(config)
    tokens = Authenticator(load_tokens(config.tokens_file))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)

    async def serve_api(agent: Agent) -> None:
        assert agent.store and agent.actor and agent.cache
        operations = Operations(agent.store, agent.actor.runner, agent.server, agent.cache)
        if agent.cycle is not None:
            operations.hold = agent.cycle.hold

        def stop(leave_resources: bool) -> None:
            agent.stop(StopMode.MAINTENANCE if leave_resources else None)

        app = create_app(operations, tokens, stop)
        app.state.web = config.web
        app.state.peer_verify = client_context(config.tls.ca_file)
        app.state.metrics = agent.metrics
        server = _ApiServer(
            uvicorn.Config(
                app,
                host=config.api.listen,
                port=config.api.port,
                log_config=None,
                lifespan="off",
                **tls_options,
            )
        )
        serving = asyncio.create_task(server.serve())
        try:
            await asyncio.shield(serving)
        except asyncio.CancelledError:
            end_streams(app)  # the web UI's live streams: uvicorn waits for open responses
            server.should_exit = True  # let uvicorn finish its requests and close
            await serving

    reaper = asyncio.create_task(_reap_orphans())
    try:
        await agent.run(serve_api)
    finally:
        reaper.cancel()


def main(config_file: Path) -> int:
    """Run the agent until SIGTERM; returns the process exit code."""
    config = load_config(config_file)
    listener = setup_logging(config.log_file)
    become_subreaper()
    try:
        asyncio.run(run(config))
    except VigilError as exc:  # a refusal written for an administrator: no traceback
        log.error("the agent of %s cannot run: %s", config.server, exc)
        return 1
    except Exception:
        log.exception("the agent of %s stopped on an error", config.server)
        return 1
    finally:
        listener.stop()
    return 0
