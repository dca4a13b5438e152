"""An event loop on a thread of its own that first entered a namespace.

Network and mount namespaces are per thread: sockets opened, processes started and
filesystems mounted from that loop live in the namespace, while the rest of the test
process stays where it was. Subclasses say how the thread enters its namespace
(``_enter``); ``run`` is the kit conformance suite's ``Runner``; ``close`` cancels what is
left on the loop (background tasks of a kit), stops it, joins the threads it started and
then its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any


def libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def libc_check(result: int, what: str) -> None:
    """Raise ``OSError`` with errno's message when a libc call failed."""
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


class ThreadLoop:
    """The loop and its thread; ``_enter`` runs on the thread before the loop starts."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._entered: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._entered.result(timeout=10)

    def _enter(self) -> None:
        raise NotImplementedError

    def _main(self) -> None:
        try:
            self._enter()
        except BaseException as exc:
            self._entered.set_exception(exc)
            return
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._entered.set_result, None)
        try:
            self.loop.run_forever()
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    async def run(self, action: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``action()`` on the namespace's loop and return its result."""

        async def call() -> Any:
            return await action()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), self.loop))

    def close(self) -> None:
        if self._thread.is_alive() and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
