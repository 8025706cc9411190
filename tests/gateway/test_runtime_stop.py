"""The gateway stops even when the cancellation of its spool replayer is swallowed.

A cancellation that lands inside a Redis call under a deadline can come out of it as a timeout
(CPython gh-86296); the replayer takes a timeout for "Redis away", logs it and goes on. A full
run once hung for half an hour in the gateway's shutdown so. Here the replayer's step turns the
first cancellation into TimeoutError, as that race does (or swallows it and goes on waiting, for
Redis or for work, without ever reaching its stop flag), and stop() must still return."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.runtime import GatewayRuntime
from tests.gateway.conftest import gateway_settings


@pytest.mark.parametrize("then", ["reported as a timeout", "goes on waiting"])
async def test_stop_returns_when_the_replayer_swallows_a_cancellation(
    redis_url: str, key_prefix: str, tmp_path: Path, monkeypatch: Any, then: str
) -> None:
    """Kills, in GatewayRuntime.stop (the "goes on waiting" case): the recheck interval None
    or dropped (`asyncio.wait` would wait for the task for ever after the first cancel)."""
    runtime = GatewayRuntime(gateway_settings(redis_url, key_prefix, tmp_path / "spool"))
    swallowed = []
    real_step = runtime.replayer._step

    async def step_that_swallows_one_cancel(loop: asyncio.AbstractEventLoop) -> None:
        try:
            await real_step(loop)
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed.append(True)
            if then == "goes on waiting":
                await asyncio.Event().wait()
            raise TimeoutError("a cancellation redis-py reported as a timeout") from None

    monkeypatch.setattr(runtime.replayer, "_step", step_that_swallows_one_cancel)
    await runtime.start()
    await asyncio.sleep(0.05)  # the replayer is in its loop
    stopping = asyncio.ensure_future(runtime.stop())
    # Not a speed check: a stop() that never returns fails here instead of hanging the suite.
    done, _ = await asyncio.wait({stopping}, timeout=60)
    assert stopping in done, "stop() did not return after a swallowed cancellation"
    stopping.result()
    assert swallowed == [True]


async def test_ready_names_the_version_before_the_replayer_asked(
    redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: Any
) -> None:
    # /readyz right after start, before the replayer's first step checked the server's
    # version (a busy machine): ready means a server known to be new enough, so it asks.
    runtime = GatewayRuntime(gateway_settings(redis_url, key_prefix, tmp_path / "spool"))
    try:
        assert runtime.status.version is None  # the replayer is not started here
        ready, document = await runtime.readiness()
        assert ready, document
        assert document["redis"] == {"ok": True, "version": sync_redis.info()["redis_version"]}
    finally:
        await runtime.stop()
