"""shared/periodic.py: a background step that survives its failures and stops on its Event."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from shared.periodic import run_every, sleep_unless

# A bound on a test that would otherwise hang; no assertion is about time.
HANG_GUARD_SECONDS = 10


class Steps:
    """A step that counts its calls; `then(n)` runs inside the n-th one (to set an Event
    during the step, or fail it)."""

    def __init__(self, then: Callable[[int], None]) -> None:
        self.calls = 0
        self.then = then

    async def __call__(self) -> None:
        self.calls += 1
        self.then(self.calls)


async def test_a_failing_step_does_not_stop_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()

    def third_stops(calls: int) -> None:
        if calls == 3:
            stop.set()
        if calls <= 2:
            raise RuntimeError(f"boom {calls}")

    step = Steps(third_stops)
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(
            run_every(0, step, stop, what="test pass", logger=logging.getLogger("wsm.test")),
            HANG_GUARD_SECONDS,
        )
    assert step.calls == 3
    failures = [r for r in caplog.records if r.getMessage() == "test pass failed"]
    assert [str(r.exc_info[1]) for r in failures if r.exc_info] == ["boom 1", "boom 2"]
    assert all(r.name == "wsm.test" for r in failures)


async def test_it_stops_on_its_event_even_mid_wait() -> None:
    stop = asyncio.Event()
    # Set during the step: the long wait that follows is cut short.
    step = Steps(lambda _: stop.set())
    await asyncio.wait_for(run_every(3600, step, stop, what="once"), HANG_GUARD_SECONDS)
    assert step.calls == 1


async def test_a_set_event_runs_no_step() -> None:
    stop = asyncio.Event()
    stop.set()
    ran: list[int] = []

    async def step() -> None:
        ran.append(1)

    await asyncio.wait_for(run_every(1, step, stop, what="never"), HANG_GUARD_SECONDS)
    assert ran == []


async def test_the_interval_may_be_drawn_anew_each_round() -> None:
    stop = asyncio.Event()
    drawn: list[float] = []

    def interval() -> float:
        drawn.append(0.0)
        if len(drawn) == 3:
            stop.set()
        return 0.0

    async def step() -> None:
        pass

    await asyncio.wait_for(run_every(interval, step, stop, what="jitter"), HANG_GUARD_SECONDS)
    assert len(drawn) == 3


async def test_sleep_unless_returns_when_the_event_is_set() -> None:
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(sleep_unless(stop, 3600), HANG_GUARD_SECONDS)
    assert stop.is_set()


async def test_a_wake_starts_the_next_step_at_once() -> None:
    stop = asyncio.Event()
    wake = asyncio.Event()

    def first_wakes(calls: int) -> None:
        if calls == 1:
            wake.set()  # set during the step: the hour-long wait after it is skipped
        else:
            stop.set()

    step = Steps(first_wakes)
    await asyncio.wait_for(run_every(3600, step, stop, what="woken", wake=wake), HANG_GUARD_SECONDS)
    assert step.calls == 2
