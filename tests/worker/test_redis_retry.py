"""worker/redis_retry.py in-process: a call retried while Redis cannot be reached, until it
works or until its deadline (the lease's end) would be passed by the next wait.

The fleet's restart test (test_redis_restart.py) takes these paths in child processes, where
mutmut cannot see them; these tests pin the deadline where a mutation run can."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import ConnectionError, TimeoutError

from shared.embedded_redis import EmbeddedRedis, free_port
from shared.redis_client import connect
from worker.redis_retry import retry_until


class Flaky:
    """A call that fails with a Redis connection error `failures` times, then answers."""

    def __init__(self, failures: int | None) -> None:
        self.failures = failures  # None: never answers
        self.calls = 0
        self.raised: list[Exception] = []

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures is None or self.calls <= self.failures:
            error = ConnectionError(f"refused #{self.calls}")
            self.raised.append(error)
            raise error
        return "answer"


async def test_without_a_deadline_it_retries_until_redis_answers() -> None:
    call = Flaky(failures=3)
    assert await retry_until(call, None, "test") == "answer"
    assert call.calls == 4


async def test_a_deadline_still_ahead_leaves_room_for_retries() -> None:
    call = Flaky(failures=2)
    assert await retry_until(call, time.monotonic() + 30, "test") == "answer"
    assert call.calls == 3


async def test_a_retry_whose_wait_would_end_past_the_deadline_is_not_made() -> None:
    """The first wait is at least 25 ms (half of the first 50 ms step): with 10 ms left, the
    first failure is final. Measuring the wait's end, not its start, keeps a holder from
    writing after its lease ran out."""
    call = Flaky(failures=None)
    with pytest.raises(ConnectionError) as raised:
        await retry_until(call, time.monotonic() + 0.01, "test")
    assert call.calls == 1
    assert raised.value is call.raised[-1]


async def test_past_the_deadline_the_last_error_is_raised() -> None:
    call = Flaky(failures=None)
    with pytest.raises(ConnectionError) as raised:
        await retry_until(call, time.monotonic() + 0.3, "test")
    assert call.calls > 1  # it did retry while the deadline allowed
    assert raised.value is call.raised[-1]


async def test_a_timeout_is_retried_like_a_refused_connection() -> None:
    answers: list[Exception | str] = [TimeoutError("slow"), "answer"]

    async def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await retry_until(call, time.monotonic() + 30, "test") == "answer"


async def test_an_error_redis_answered_is_not_retried() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("not a connection problem")

    with pytest.raises(ValueError):
        await retry_until(call, None, "test")
    assert calls == 1


async def test_a_real_call_to_a_closed_port_gives_up_at_the_deadline() -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        with pytest.raises(ConnectionError):
            await retry_until(client.ping, time.monotonic() + 0.3, "ping")
    finally:
        await client.aclose()


async def test_a_call_made_while_redis_is_down_goes_through_once_it_is_back(
    private_redis: EmbeddedRedis,
) -> None:
    client = connect(private_redis.url, socket_connect_timeout=1)
    try:
        await client.set("k", "before")
        private_redis.stop()
        pending = asyncio.create_task(retry_until(lambda: client.get("k"), None, "get"))
        await asyncio.sleep(0.3)  # a few refused attempts
        assert not pending.done()
        private_redis.start()  # append-only: the value is still there
        assert await asyncio.wait_for(pending, timeout=30) == b"before"
    finally:
        await client.aclose()
