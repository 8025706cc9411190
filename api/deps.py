"""What the operator API's routes share, and the dependencies that hand it to them.

`create_app` builds one `ApiParts` per app (the engine's parts on the app's Redis) and keeps it
on `app.state.api`; a route asks for it with the `Parts` annotation. The routers in
api/routes/ are module-level and hold no state, so two apps (tests build many) never share a
client or a coordinator.

Every `/api/...` route runs two router dependencies, in this order: `authorized` (401, before
anything is read or stored) and `valid_input` (api/validation.py: 422 for a malformed path or
query parameter, 404 for a command to a conversation that does not exist).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry

from api.media_send import MediaSendParts, media_send_parts
from api.validation import operator_input
from engine import parts as engine_parts
from engine.agent.bookings import BookingStore
from engine.assignment import LineCoordinator
from engine.media.store import MediaLibrary
from engine.metrics import EngineStateCollector
from shared.keys import EngineIndexKeys
from shared.redis_client import RedisClient
from shared.settings import Settings

_bearer = HTTPBearer(auto_error=False)


@dataclass(slots=True)
class ApiParts:
    settings: Settings
    redis: RedisClient
    token: bytes
    coordinator: LineCoordinator
    bookings: BookingStore
    index: EngineIndexKeys
    check_input: Callable[[Request], Awaitable[None]]
    # Stored files (customers' and agents'): GET /api/media/…, and files agents send.
    media: MediaLibrary
    # The engine's gauges, read from Redis just before each scrape (api/routes/ops.py).
    collector: EngineStateCollector = field(default_factory=EngineStateCollector)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.registry.register(self.collector)

    @property
    def prefix(self) -> str:
        return self.settings.key_prefix

    @property
    def shards(self) -> int:
        return self.settings.queue_shards

    @property
    def media_send(self) -> MediaSendParts:
        """What api/media_send.py's send_media needs (the console builds the same)."""
        return media_send_parts(self.settings, self.redis, self.coordinator.queue, self.media)


def build_parts(settings: Settings, redis: RedisClient) -> ApiParts:
    """The API's parts; refuses (ValueError) a settings without WSM_API_TOKEN."""
    if settings.api_token is None or not settings.api_token.get_secret_value():
        raise ValueError("WSM_API_TOKEN is not set: the operator API refuses to run without one")
    prefix = settings.key_prefix
    return ApiParts(
        settings=settings,
        redis=redis,
        token=settings.api_token.get_secret_value().encode(),
        # The engine's own builders (engine/parts.py), so the API agrees with the worker on
        # keys, limits and retention. Bookings live under the calendar's own keys; an erase
        # must forget them too (LGPD).
        coordinator=engine_parts.coordinator(redis, settings),
        bookings=engine_parts.booking_store(redis, settings),
        index=EngineIndexKeys(prefix),
        check_input=operator_input(redis, prefix=prefix, shards=settings.queue_shards),
        media=engine_parts.media_library(redis, settings),
    )


def api_parts(request: Request) -> ApiParts:
    parts: ApiParts = request.app.state.api
    return parts


Parts = Annotated[ApiParts, Depends(api_parts)]


async def authorized(
    parts: Parts,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    given = credentials.credentials.encode() if credentials else b""
    if not given or not hmac.compare_digest(given, parts.token):
        raise HTTPException(401, "missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


async def operator_or_console(
    parts: Parts,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The operator's bearer token, or an attendant's console session (its signed cookie):
    what reading stored media takes, so the console's pages show images and play audio from
    the same route as the API (`GET /api/media/{id}`). A GET changes nothing, so no CSRF token
    is asked; 401 with neither. The attendant is kept in `request.state.console_viewer`: a
    route then serves them only what the console would show them (api/routes/media.py)."""
    given = credentials.credentials.encode() if credentials else b""
    if given and hmac.compare_digest(given, parts.token):
        return
    console = getattr(request.app.state, "console", None)
    viewer = await console.sessions.viewer(request) if console is not None else None
    if viewer is not None:
        request.state.console_viewer = viewer
        return
    raise HTTPException(401, "missing or wrong bearer token, and no console session",
                        headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


async def valid_input(parts: Parts, request: Request) -> None:
    await parts.check_input(request)
