"""The simulator runs in-process (its own lifespan, driven through httpx's ASGI transport);
its webhooks go over real HTTP to a small receiver served by uvicorn on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from tests.support.polling import async_wait_until
from wsm.waha_sim import create_app
from wsm.waha_sim.config import SimConfig
from wsm.waha_sim.fastpath import read_body

HMAC_KEY = "sim-test-key-0123456789abcdef01234567"  # >= 32 characters


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.body)
        return value

    @property
    def event(self) -> str:
        return str(self.json["event"])


class Receiver:
    """A webhook target: records every request; answers from a script of statuses (then
    `default_status`)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: deque[int] = deque()
        self.default_status = 200
        self.url = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        status = self.script.popleft() if self.script else self.default_status
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append(Received(time.monotonic(), headers, body, status))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def of(self, event: str) -> list[Received]:
        return [r for r in self.requests if r.event == event]

    async def wait_for(self, event: str, count: int = 1, seconds: float = 10.0) -> list[Received]:
        async def enough() -> list[Received] | None:
            found = self.of(event)
            return found if len(found) >= count else None

        found = await async_wait_until(enough, timeout=seconds, what=f"{count} {event} webhook(s)")
        assert found is not None
        return found


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    target = Receiver()
    server = uvicorn.Server(
        uvicorn.Config(target, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    # uvicorn's signal capture would take over the test run's Ctrl-C.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    await async_wait_until(started, what="webhook receiver to listen")
    port = server.servers[0].sockets[0].getsockname()[1]
    target.url = f"http://127.0.0.1:{port}/webhook"
    try:
        yield target
    finally:
        server.should_exit = True
        await task


@dataclass
class Sim:
    client: httpx.AsyncClient
    config: SimConfig

    async def control(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.client.request(method, "/_sim" + path, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    async def inbound(self, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.control("POST", "/inbound", json=body)
        return result

    async def set_status(self, status: str, session: str = "default") -> None:
        await self.control("POST", f"/sessions/{session}/status", json={"status": status})

    async def chat(self, chat_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.control("GET", f"/chats/{chat_id}/messages")
        return result


SimFactory = Callable[..., AbstractAsyncContextManager[Sim]]


@pytest.fixture
def make_sim() -> SimFactory:
    """`async with make_sim(webhook_urls=(...,), **overrides) as sim:`; fast defaults."""

    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[Sim]:
        fields: dict[str, Any] = {
            "hmac_key": HMAC_KEY,
            "retries_delay": 0.05,
            "retries_attempts": 3,
            "ack_delay": 0.0,
            "read_delay": 0.01,
            "session_wait": 0.05,
            "announce": False,
        }
        fields.update(overrides)
        config = dataclasses.replace(SimConfig(), **fields)
        app = create_app(config)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
                yield Sim(client, config)

    return factory
