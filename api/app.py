"""The operator API: conversations, their history, the waiting line, agents, erasure.

Every `/api/...` route needs `Authorization: Bearer <WSM_API_TOKEN>` (401 otherwise, before
anything is stored; one exception to the order: a body that is not JSON at all is refused 422
by FastAPI as it reads it, before any dependency runs, the token's check included). `/metrics`
and `/healthz` are open: Prometheus and the container's health check reach them on the internal
network; OpenAPI docs are at `/docs`.

The routes live in api/routes/ (one module per concern) and get what they share (settings,
Redis, the engine's coordinator, the bookings) from api/deps.py; this module builds the app.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request, Response

from api.deps import authorized, build_parts, operator_or_console, valid_input
from api.routes import agents, contacts, conversations, media, ops, queue, sessions
from shared.redis_client import RedisClient
from shared.redis_errors import REDIS_UNAVAILABLE
from shared.settings import Settings


async def redis_unavailable(request: Request, exc: Exception) -> Response:
    # Redis down, or a pooled connection that died with a Redis restart: the operator's
    # client should try again shortly, not read a 500 as a bug.
    return Response(
        orjson.dumps({"detail": "Redis is unavailable; try again shortly"}),
        status_code=503,
        media_type="application/json",
        headers={"Retry-After": "1"},
    )


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    # The console's watcher and hub start with its first request; they are stopped here, by
    # their flag, before the server's loop cancels what is left: a cancel can be lost inside
    # redis-py (shared/periodic.py), and the process would not exit.
    await app.state.console.stop()


def create_app(settings: Settings, redis: RedisClient) -> FastAPI:
    parts = build_parts(settings, redis)  # ValueError without WSM_API_TOKEN
    app = FastAPI(
        title="wsm operator API",
        description="Conversations, history, the waiting line, agents and erasure.",
        version="1",
        lifespan=lifespan,
    )
    app.state.api = parts
    for error in REDIS_UNAVAILABLE:
        app.add_exception_handler(error, redis_unavailable)
    # Bearer first (401), then the path and query forms (422) and, for commands, that the
    # conversation exists (404): api/validation.py.
    api = APIRouter(prefix="/api", dependencies=[Depends(authorized), Depends(valid_input)])
    for module in (conversations, queue, agents, contacts, sessions, media):
        api.include_router(module.router)
    app.include_router(api)
    # Stored media is read by the operator (token) and by the console's pages (session).
    media_reads = APIRouter(
        prefix="/api", dependencies=[Depends(operator_or_console), Depends(valid_input)]
    )
    media_reads.include_router(media.reads)
    app.include_router(media_reads)
    from api.console import install as install_console  # the attendants' console, at /

    install_console(app, settings, redis, parts.coordinator)
    app.include_router(ops.router)
    return app
