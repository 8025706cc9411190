"""The console's two background loops (the Watcher and the Hub, api/console/live.py) end when
the API stops, even when a cancel is lost inside the Redis client (CPython gh-86296 on 3.11:
redis-py's `wait_for` can swallow it). One that ran on kept the test run from closing its
event loop, and could keep `wsm api` from exiting after Ctrl-C."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.app import create_app
from tests.engine.harness import settings_for
from tests.support.asgi import served

TOKEN = "console-test-token-" + "x" * 32


def absorbing_a_cancel(real: Any, absorbed: asyncio.Event) -> Any:
    """`real`, after a wait whose cancellation is swallowed, as `wait_for` may on 3.11."""

    async def call() -> Any:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            absorbed.set()
        return await real()

    return call


async def test_a_lost_cancel_still_ends_the_watcher_and_the_hub(
    aredis: Any, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    console = create_app(settings_for(key_prefix, redis_url, api_token=TOKEN), aredis).state.console
    absorbed = {"watcher": asyncio.Event(), "hub": asyncio.Event()}
    watcher, hub = console.watcher, console.hub
    monkeypatch.setattr(
        watcher, "holds_lock", absorbing_a_cancel(watcher.holds_lock, absorbed["watcher"])
    )
    monkeypatch.setattr(hub, "latest_id", absorbing_a_cancel(hub.latest_id, absorbed["hub"]))
    console.start()
    tasks = list(console.tasks)
    try:
        await asyncio.sleep(0.05)  # both are inside the wait that swallows the cancel
        for task in tasks:
            task.cancel()
        _, running = await asyncio.wait(tasks, timeout=5)
        assert all(event.is_set() for event in absorbed.values())  # the cancel was lost…
        assert not running, [task.get_name() for task in running]  # …and both ended anyway
    finally:
        await console.stop()


async def test_the_api_stops_the_console_when_it_shuts_down(
    aredis: Any, redis_url: str, key_prefix: str
) -> None:
    app = create_app(settings_for(key_prefix, redis_url, api_token=TOKEN), aredis)
    console = app.state.console
    async with served(app, "http://console.test") as client:
        page = await client.get("/")  # the first console request starts the loops
        assert page.status_code == 303
        tasks = list(console.tasks)
        assert [task.get_name() for task in tasks] == ["console-watcher", "console-hub"]
        assert not any(task.done() for task in tasks)
    # The server's shut-down (its ASGI lifespan, as uvicorn drives it) stopped both.
    assert all(task.done() for task in tasks) and console.tasks == []
