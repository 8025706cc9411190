"""The gateway's ASGI application: FastAPI, with `/webhook` taken off its slow path.

`GatewayApp` is a FastAPI app whose `__call__` hands `/webhook` straight to the raw
`WebhookEndpoint`, skipping the middleware stack and router (see bench/gateway_bench.py for
what that buys); FastAPI serves `/healthz`, `/readyz`, `/metrics` and runs the lifespan.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from gateway.health import health_router
from gateway.runtime import GatewayRuntime
from gateway.signature import UNSIGNED_REFUSED, UNSIGNED_WARNING, UnsignedRefused
from gateway.webhook import WebhookEndpoint
from shared.heap import settle_heap
from shared.logs import setup_logging
from shared.redis_client import RedisClient
from shared.settings import Settings

WEBHOOK_PATH = "/webhook"

log = logging.getLogger("wsm.gateway.app")


class GatewayApp(FastAPI):
    def __init__(self, runtime: GatewayRuntime, **options: Any) -> None:
        super().__init__(lifespan=runtime.lifespan, **options)
        self.runtime = runtime
        self.webhook: WebhookEndpoint = runtime.webhook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH:
            await self.webhook(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, client: RedisClient | None = None) -> GatewayApp:
    if not settings.hmac_keys():
        if not settings.allow_unsigned:
            raise UnsignedRefused(UNSIGNED_REFUSED)
        log.warning(UNSIGNED_WARNING)
    runtime = GatewayRuntime(settings, client)
    app = GatewayApp(
        runtime,
        title="wsm gateway",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(health_router(runtime))
    return app


def create_app_from_environment() -> GatewayApp:
    """uvicorn's factory: each worker process reads the settings once, at its start."""
    settings = Settings()
    setup_logging(settings.log_level)
    app = create_app(settings)
    # Everything imported and built so far lives as long as the process.
    settle_heap()
    return app
