"""The attendants' console: a web inbox served by `wsm api` at `/` (the JSON API stays at
`/api/…` with its bearer token). See docs/console.md.

    accounts.py  accounts and argon2 password hashes (`wsm agent …`: cli.py)
    sessions.py  server-side sessions, signed cookies, CSRF, the slowdown of failed logins
    auth.py      /login, /logout
    pages.py     the pages and what an agent does on them (through the engine's commands)
    channel.py   /events, the live channel (SSE); live.py derives the events it carries
    audit.py     who took, sent, closed or handed back what, and when
    canned.py    canned replies
    views.py     the reads the pages and the channel share
    ui.py, i18n.py, templates/, static/  rendering, in pt-BR or English (WSM_LANGUAGE)
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.assignment import LineCoordinator
from engine.parts import booking_store
from shared.keys import ConsoleKeys
from shared.redis_client import RedisClient
from shared.settings import Settings

from . import auth, channel, pages
from .accounts import AccountStore
from .audit import Audit
from .canned import CannedReplies
from .context import Console
from .live import Hub, Watcher
from .sessions import CsrfRefused, LoginRequired, Sessions, cookie_secret
from .ui import STATIC, Ui
from .views import Reads

# The console's pages load only their own scripts and styles (htmx is served from /static);
# nginx sends the same policy for these paths (nginx/templates/default.conf.template).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    # The conversation's voice notes, audio and video play from /api/media/… (same origin).
    "media-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]
NOT_CONSOLE = ("/api/", "/metrics", "/healthz", "/docs", "/redoc", "/openapi.json")


class SecurityHeaders:
    """Adds the console's security headers to its own answers (pure ASGI: the live channel
    streams through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(NOT_CONSOLE):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, with_headers)


def build(settings: Settings, redis: RedisClient, coordinator: LineCoordinator) -> Console:
    assert settings.api_token is not None
    keys = ConsoleKeys(settings.key_prefix)
    accounts = AccountStore(redis, keys)
    retention = settings.history_retention_seconds
    bookings = booking_store(redis, settings)  # read only: no webhook
    reads = Reads(redis, settings, coordinator, bookings, keys)
    return Console(
        redis=redis,
        settings=settings,
        coordinator=coordinator,
        queue=coordinator.queue,
        keys=keys,
        accounts=accounts,
        sessions=Sessions(
            redis, keys, accounts, cookie_secret(settings.api_token.get_secret_value())
        ),
        reads=reads,
        audit=Audit(redis, keys, retention),
        canned=CannedReplies(redis, keys),
        ui=Ui(settings.language, settings.media_max_bytes),
        hub=Hub(redis, keys),
        watcher=Watcher(redis, reads, keys),
    )


def install(
    app: FastAPI, settings: Settings, redis: RedisClient, coordinator: LineCoordinator
) -> Console:
    """Serve the console from `app` (the operator API's): pages at `/`, /static, /events."""
    console = build(settings, redis, coordinator)
    app.include_router(auth.router(console))
    app.include_router(pages.router(console))
    app.include_router(channel.router(console))
    app.mount("/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_middleware(SecurityHeaders)
    app.state.console = console

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: Exception) -> Response:
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": "/login"})
        if request.method == "GET" and request.url.path != "/events":
            return RedirectResponse("/login", status_code=303)
        return Response("login required", status_code=401, media_type="text/plain")

    @app.exception_handler(CsrfRefused)
    async def csrf_refused(request: Request, exc: Exception) -> Response:
        return HTMLResponse(console.ui.t("error.csrf"), status_code=403)

    previous = app.exception_handlers.get(StarletteHTTPException)

    @app.exception_handler(StarletteHTTPException)
    async def console_errors(request: Request, exc: StarletteHTTPException) -> Response:
        # The API keeps FastAPI's JSON errors; console pages get a short page in its language.
        if request.url.path.startswith(NOT_CONSOLE) and previous is not None:
            result: Response = await previous(request, exc)  # type: ignore[misc]
            return result
        body = console.ui.render(
            "error.html", viewer=None, status=exc.status_code, detail=str(exc.detail)
        )
        return HTMLResponse(body, status_code=exc.status_code, headers=exc.headers)

    return console
