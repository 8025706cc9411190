"""shared/deadlines.py: `with deadline(s)` behaves as `async with asyncio.timeout(s)` does, to
within one tick, with one timer per loop for every wait in flight."""

from __future__ import annotations

import asyncio

import pytest

from shared import deadlines
from shared.deadlines import TICK_SECONDS, deadline


def watch() -> deadlines._Watch:
    return deadlines._WATCHES[asyncio.get_running_loop()]


async def test_a_wait_past_its_deadline_is_cut_with_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError), deadline(0.1):
        await asyncio.sleep(10)
    took = loop.time() - started
    assert 0.1 <= took < 0.1 + TICK_SECONDS + 0.5
    # The task is not left cancelled: the next await runs.
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0)


async def test_a_wait_that_ends_in_time_returns_and_leaves_nothing_behind() -> None:
    with deadline(5):
        value = await asyncio.sleep(0.01, result="ok")
    assert value == "ok"
    assert not watch()._waits
    await asyncio.sleep(TICK_SECONDS * 2)
    assert watch()._timer is None  # an idle loop keeps no timer
    await asyncio.sleep(0.01)  # and nothing cancels us later


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    async def waits() -> None:
        with deadline(5):
            await asyncio.sleep(10)

    task = asyncio.create_task(waits())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nested_deadlines_each_raise_for_their_own() -> None:
    # The inner one expires: only it raises; the outer block goes on.
    with deadline(5):
        with pytest.raises(TimeoutError), deadline(0.05):
            await asyncio.sleep(10)
        assert await asyncio.sleep(0.01, result=1) == 1
    # The outer one expires while the inner waits: the inner lets the cancel through and the
    # outer raises.
    with pytest.raises(TimeoutError), deadline(0.05):
        try:
            with deadline(5):
                await asyncio.sleep(10)
        except TimeoutError:
            pytest.fail("the inner deadline did not expire")
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_many_waits_share_one_timer_and_only_the_late_ones_are_cut() -> None:
    async def one(seconds: float, sleeps: float) -> str:
        try:
            with deadline(seconds):
                await asyncio.sleep(sleeps)
        except TimeoutError:
            return "cut"
        return "done"

    results = await asyncio.gather(
        *(one(5, 0.05) for _ in range(50)), *(one(0.05, 5) for _ in range(50))
    )
    assert results == ["done"] * 50 + ["cut"] * 50


async def test_an_answer_ready_as_the_deadline_passes_is_cut_and_the_task_goes_on() -> None:
    """The answer's future is done but the task has not resumed when the timer fires: the
    task still meets the cancel at that await (as with asyncio.timeout) and it ends there."""
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def waits() -> str:
        try:
            with deadline(0):
                return await answer
        except TimeoutError:
            return "cut"

    task = asyncio.create_task(waits())
    await asyncio.sleep(0)  # the task waits on the answer
    answer.set_result("late")
    for wait in list(watch()._waits):  # the timer's tick, in the same loop iteration
        wait.expire()
    assert await task == "cut"
    assert task.cancelling() == 0
