"""Logging in and out."""

from __future__ import annotations

import ipaddress
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from engine.waiting_line import now_ms

from .context import Console
from .sessions import COOKIE, PRE_COOKIE


def client_address(request: Request) -> str:
    """The client a failed login is counted against. Behind nginx the peer is nginx (on a
    loopback or private address) and X-Real-IP, which the edge sets and never takes from the
    client, names the client; from anywhere else the header is not trusted."""
    peer = request.client.host if request.client else "-"
    forwarded = request.headers.get("x-real-ip", "")
    try:
        trusted = ipaddress.ip_address(peer).is_private
    except ValueError:
        trusted = False
    return forwarded if trusted and forwarded else peer


def router(console: Console) -> APIRouter:
    routes = APIRouter(include_in_schema=False)
    ui, sessions = console.ui, console.sessions

    def login_page(
        request: Request, error: str = "", status: int = 200, user: str = ""
    ) -> Response:
        pre = request.cookies.get(PRE_COOKIE)
        fresh = not pre or len(pre) > 64
        if fresh:
            pre = secrets.token_urlsafe(24)
        assert pre is not None
        body = ui.render(
            "login.html", viewer=None, error=error, user=user, csrf=sessions.login_token(pre)
        )
        response = HTMLResponse(body, status_code=status)
        if fresh:
            sessions.set_cookie(response, request, PRE_COOKIE, pre)
        return response

    @routes.get("/login")
    async def login_form(request: Request) -> Response:
        console.start()
        if await sessions.viewer(request) is not None:
            return RedirectResponse("/", status_code=303)
        return login_page(request)

    @routes.post("/login")
    async def login(request: Request) -> Response:
        console.start()
        form = await request.form()
        user = str(form.get("user") or "").strip().lower()
        password = str(form.get("password") or "")
        if not sessions.login_token_ok(
            request.cookies.get(PRE_COOKIE), str(form.get("csrf") or "")
        ):
            return login_page(request, ui.t("error.csrf"), 403, user)
        address = client_address(request)
        wait = await sessions.locked_for(user, address)
        if wait:
            response = login_page(request, ui.t("login.slow_down", seconds=wait), 429, user)
            response.headers["Retry-After"] = str(wait)
            return response
        account = await console.accounts.verify(user, password)
        if account is None:
            await sessions.failed(user, address)
            return login_page(request, ui.t("login.wrong"), 401, user)
        await sessions.succeeded(user)
        sid = await sessions.create(account)
        response = RedirectResponse("/", status_code=303)
        sessions.set_cookie(response, request, COOKIE, sessions.cookie_value(sid))
        response.delete_cookie(PRE_COOKIE, path="/")
        return response

    @routes.post("/logout")
    async def logout(request: Request) -> Response:
        viewer = await console.acting(request)
        await sessions.end(viewer.sid, viewer.id)
        # Whoever logs out stops receiving customers (WSM_AUTO_ASSIGN would go on giving them).
        await console.coordinator.line.set_offline(viewer.id, now_ms())
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    return routes
