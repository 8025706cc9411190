"""The handler seam: `--handler module:attr` names a handler or a factory; the lifecycle hooks
run at process start and stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings
from tests.support.polling import async_wait_until
from tests.worker.support.fleet import chat_id, enqueue_texts, running_fleet, wait_all_handled
from tests.worker.support.handlers import Lifecycle
from worker.handler import HandlerLoadError, HandlerSetup, load_handler
from worker.handlers.recording import record


def setup() -> HandlerSetup:
    return HandlerSetup(Settings(), redis=object(), process_index=0, fleet_id="f")


async def test_an_async_callable_is_used_as_is() -> None:
    assert await load_handler("worker.handlers.recording:record", setup()) is record


async def test_a_factory_is_called_with_the_setup() -> None:
    """The factory gets this process's setup (its Redis client and settings), and what it
    returns is the handler, not the factory itself. That the fleet then calls it for each
    message is the fleet test below."""
    redis_client = object()
    given = HandlerSetup(
        Settings(WSM_KEY_PREFIX="seam"),  # type: ignore[call-arg]
        redis=redis_client,
        process_index=3,
        fleet_id="f",
    )
    handler = await load_handler("tests.worker.support.handlers:lifecycle", given)
    assert isinstance(handler, Lifecycle)
    assert handler.redis is redis_client
    assert handler.prefix == "seam"


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("no.such.module:x", "cannot load handler"),
        ("worker.handlers.recording:nothing", "cannot load handler"),
        ("worker.handlers.recording:RECORD_LIMIT", "neither a handler nor a factory"),
        ("tests.worker.support.handlers:not_async", "not an async handler"),
    ],
)
async def test_what_is_not_a_handler_is_refused(spec: str, reason: str) -> None:
    with pytest.raises(HandlerLoadError, match=reason):
        await load_handler(spec, setup())


async def test_start_runs_before_any_message_and_aclose_at_stop(
    aredis: Any, redis_url: str, key_prefix: str, workdir: Path
) -> None:
    log_key = f"{key_prefix}:test:lifecycle"
    with running_fleet(
        redis_url,
        key_prefix,
        workdir,
        processes=1,
        concurrency=2,
        handler="tests.worker.support.handlers:lifecycle",
    ) as fleet:
        (pid,) = (await fleet.wait_running(aredis, 1)).values()

        async def started() -> bool:
            return await aredis.lrange(log_key, 0, -1) == [f"start {pid}".encode()]

        await async_wait_until(started, what="start() with nothing queued")
        sent = await enqueue_texts(aredis, key_prefix, {chat_id(0): ["oi"]})
        assert (await wait_all_handled(aredis, sent, key_prefix))[chat_id(0)] == sent[chat_id(0)]
        assert fleet.terminate() == 0, fleet.tail()
    assert await aredis.lrange(log_key, 0, -1) == [f"start {pid}".encode(), f"close {pid}".encode()]
