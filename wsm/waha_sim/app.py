"""The simulator's ASGI app: WAHA's API, the `/_sim/` control API, and in front of WAHA's
routes the X-Api-Key check and the API faults."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from urllib.parse import parse_qs

import httpx
import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from wsm.waha_sim import control_api, fastpath, waha_api
from wsm.waha_sim.config import SimConfig
from wsm.waha_sim.errors import SimError
from wsm.waha_sim.faults import ApiFailure, Faults
from wsm.waha_sim.simulator import Simulator
from wsm.waha_sim.store import SimStore
from wsm.waha_sim.web import error_response
from wsm.waha_sim.webhooks import WebhookDispatcher


def _is_waha_path(path: str) -> bool:
    return path.startswith("/api/") or path == "/ping"


async def _answer(send: Send, status: int, body: object, headers: dict[str, str]) -> None:
    raw = orjson.dumps(body)
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


def _failure_body(failure: ApiFailure, path: str) -> object:
    if failure.status == 429:
        return {"statusCode": 429, "message": "ThrottlerException: Too Many Requests"}
    # WAHA's catch-all exception filter for errors that are not HttpExceptions.
    return {
        "statusCode": failure.status,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "path": path,
        "error": "simulated failure (wsm waha-sim fault)",
    }


class Front:
    """In front of the app: for WAHA's routes the X-Api-Key check (header, or `x-api-key` in
    the query, as WAHA accepts) and the API faults; then the per-message routes straight to
    fastpath.py, everything else to FastAPI."""

    def __init__(self, app: ASGIApp, config: SimConfig, simulator: Simulator) -> None:
        self.app = app
        self.api_key = config.api_key.encode() if config.api_key else None
        self.faults = simulator.dispatcher.faults
        self.simulator = simulator
        self.fast_routes = fastpath.ROUTES if config.fast_path else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if _is_waha_path(path):
            if self.api_key is not None and not self._authorised(scope):
                await _answer(send, 401, {"message": "Unauthorized", "statusCode": 401}, {})
                return
            delay = self.faults.api_delay(path)
            if delay > 0:
                await asyncio.sleep(delay)
            failure = self.faults.take_api_failure(path)
            if failure is not None:
                headers = {}
                if failure.retry_after is not None:
                    headers["retry-after"] = f"{failure.retry_after:g}"
                await _answer(send, failure.status, _failure_body(failure, path), headers)
                return
        route = self.fast_routes.get(path) if scope["method"] == "POST" else None
        if route is not None:
            await fastpath.serve(self.simulator, route, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorised(self, scope: Scope) -> bool:
        assert self.api_key is not None
        given: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                given = value
                break
        if given is None and scope.get("query_string"):
            values = parse_qs(scope["query_string"].decode()).get("x-api-key")
            given = values[0].encode() if values else None
        return given is not None and hmac.compare_digest(given, self.api_key)


def create_app(
    config: SimConfig, *, webhook_transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    faults = Faults()
    store = SimStore(config.history_limit)
    dispatcher = WebhookDispatcher(config, faults, transport=webhook_transport)
    simulator = Simulator(config, store, dispatcher)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await dispatcher.start()
        await simulator.start()
        try:
            yield
        finally:
            await simulator.aclose()
            await dispatcher.aclose()

    app = FastAPI(
        title="wsm WAHA simulator",
        description="The part of WAHA's API that wsm uses, and a /_sim/ control API.",
        lifespan=lifespan,
    )
    app.state.sim = simulator
    app.include_router(waha_api.router)
    app.include_router(control_api.router)
    app.add_exception_handler(SimError, error_response)
    app.add_middleware(Front, config=config, simulator=simulator)
    return app
