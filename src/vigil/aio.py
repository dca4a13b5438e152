"""Timeouts that neither lose nor invent a cancellation on Python 3.11.

Python 3.11 has no safe way to bound one await from inside a task:

* ``asyncio.wait_for`` returns the result, and drops the caller's cancellation, when both
  happen in the same loop iteration (bpo-42130): an agent told to stop went on running
  its checks;
* ``asyncio.timeout`` cancels the task it runs in: when it expires in the same loop
  iteration as another cancellation of that task (a nested timeout with the same
  deadline, as a lease renewal's around the store client's own), one cancellation is
  delivered and the other stays pending with no request counted, and surfaces at the next
  ``await`` of whatever the task does next (the lease keeper died of it). Python 3.12 fixed
  both (``Task.uncancel`` clears the pending one).

``within`` runs the awaitable in a task of its own and waits for it with ``asyncio.wait``,
which takes no result and swallows no cancellation: a timeout cancels only that task, and
the caller's own cancellation reaches the caller. Written here because no library we use
offers it for 3.11.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["within"]

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """``await awaitable``, or ``TimeoutError`` after ``seconds`` (None: no limit); the
    awaitable is cancelled (and waited for) on timeout and when the caller is cancelled."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait((task,), timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.wait((task,))  # (a second cancellation of the caller ends this wait)
        raise
    if not done:
        task.cancel()
        await asyncio.wait((task,))
        if task.cancelled():
            raise TimeoutError(f"no answer within {seconds:g} s")
    return task.result()
