"""Driving an ASGI app in-process as uvicorn would: its lifespan (start-up and shut-down) and
an httpx client over ASGITransport, which alone runs no lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.support.polling import async_wait_until


@contextlib.asynccontextmanager
async def running_lifespan(app: Any) -> AsyncIterator[None]:
    """Drive the app's ASGI lifespan as uvicorn does (`lifespan="on"`): startup, then shutdown
    when the block ends; each must be answered complete."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(app(scope, receive, send))
    await inbox.put({"type": "lifespan.startup"})

    async def answered() -> bool:
        if task.done():
            task.result()  # the app's own error, if it failed
        return bool(sent)

    await async_wait_until(answered, timeout=10, what="lifespan startup answered")
    assert sent == [{"type": "lifespan.startup.complete"}]
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 30)
    assert sent[-1] == {"type": "lifespan.shutdown.complete"}


@contextlib.asynccontextmanager
async def served(app: Any, base_url: str = "http://api.test") -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` between its start-up and its shut-down, as a request of a running
    server sees it (the API's shut-down stops the console's loops its requests started)."""
    async with running_lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client
