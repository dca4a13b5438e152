"""``vigil.aio.within``: a timeout that neither loses nor invents a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from vigil.aio import within


def test_the_result_and_the_exception_come_back() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def failing() -> None:
        raise ValueError("no")

    async def main() -> None:
        assert await within(answer(), 1.0) == 42
        with pytest.raises(ValueError, match="no"):
            await within(failing(), 1.0)

    asyncio.run(main())


def test_a_timeout_cancels_the_work_and_says_so() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await within(slow(), 0.01)
        assert cancelled.is_set()
        await asyncio.sleep(0.01)  # nothing left pending for this task

    asyncio.run(main())


def test_the_callers_cancellation_is_never_dropped() -> None:
    """The work finishing in the same loop iteration as the caller's cancellation: the
    caller is cancelled all the same (wait_for returned the result on Python 3.11)."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        lost = 0
        for _ in range(200):
            result: asyncio.Future[int] = loop.create_future()
            caller = asyncio.ensure_future(within(result, 5.0))
            await asyncio.sleep(0)
            result.set_result(1)
            caller.cancel()
            await asyncio.wait((caller,))
            lost += not caller.cancelled()
        return lost

    assert asyncio.run(main()) == 0


def test_nested_timeouts_with_one_deadline_leave_no_stray_cancellation() -> None:
    """An inner ``asyncio.timeout`` and ``within`` expiring together: the caller's next
    await is not cancelled (with an outer ``asyncio.timeout`` it could be, on 3.11)."""

    async def inner(seconds: float) -> None:
        async with asyncio.timeout(seconds):
            await asyncio.sleep(10)

    async def main() -> int:
        strays = 0
        for _ in range(100):
            with pytest.raises(TimeoutError):
                await within(inner(0.001), 0.001)
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                strays += 1
        return strays

    assert asyncio.run(main()) == 0
