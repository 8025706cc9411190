"""Waiting for a condition with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class _Deadline:
    """The one timeout rule of both waits: past `timeout` seconds, fail naming `what`."""

    def __init__(self, timeout: float, what: str) -> None:
        self.timeout, self.what = timeout, what
        self.at = time.monotonic() + timeout

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise AssertionError(f"timed out after {self.timeout}s waiting for {self.what}")


def wait_until(
    condition: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    deadline = _Deadline(timeout, what)
    while not (value := condition()):
        deadline.check()
        time.sleep(interval)
    return value


async def async_wait_until(
    condition: Callable[[], Awaitable[T]],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    deadline = _Deadline(timeout, what)
    while not (value := await condition()):
        deadline.check()
        await asyncio.sleep(interval)
    return value
