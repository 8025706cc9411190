"""The console's pages and what an agent does on them.

Every action goes through the same engine pieces as the operator API: presence through the
line's set_online / set_offline, "Atender próximo" through the coordinator's take_next, and a
reply, a close or a handback as a command queued to the conversation (engine/commands.py), so
the worker handles it in order with the customer's messages, exactly once. The agent is always
the logged-in one (the session's), never anything the page sends; a command is named after the
form's one-time nonce, so a form sent twice queues once.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from engine import commands
from engine.state import State
from engine.waiting_line import AgentAtCapacity, AgentOffline, AgentUnavailable, now_ms
from shared.keys import conversation_token, split_conversation_token

from .canned import CannedError
from .context import Console
from .sessions import Viewer
from .views import ConversationView

CLOSABLE = {State.BOT, State.WAITING, State.AGENT, State.PAUSED}
HANDBACKABLE = {State.WAITING, State.AGENT, State.PAUSED}
MAX_REPLY = 4096
NOTICES = {"empty": "take_next.empty", "offline": "take_next.offline", "full": "take_next.full"}


def conv_url(session: str, chat_id: str) -> str:
    return f"/c/{quote(session, safe='')}/{quote(chat_id, safe='@.')}"


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def router(console: Console) -> APIRouter:
    routes = APIRouter(include_in_schema=False)
    ui, reads, line = console.ui, console.reads, console.coordinator.line

    async def online(viewer: Viewer) -> bool:
        return any(a.id == viewer.id and a.online for a in await line.agents())

    async def sidebar(viewer: Viewer) -> dict[str, Any]:
        context: dict[str, Any] = {
            "viewer": viewer,
            "online": await online(viewer),
            "line": await reads.line_entries(),
            "mine": await reads.mine(viewer),
        }
        if viewer.admin:
            context["agents"] = await agents_view()
        return context

    async def agents_view() -> list[dict[str, Any]]:
        out = []
        names = {a.id: a.name for a in await console.accounts.list()}
        for agent in await line.agents():
            tokens = await reads.agent_tokens(agent.id)
            out.append(
                {
                    "id": agent.id,
                    "name": names.get(agent.id, agent.name),
                    "online": agent.online,
                    "conversations": await reads.summaries(tokens),
                }
            )
        return out

    async def page(
        name: str, viewer: Viewer, view: ConversationView | None = None, **extra: Any
    ) -> HTMLResponse:
        # The events stream's id BEFORE anything is read: whatever changes after the reads
        # below reaches the page over the live channel, nothing falls between.
        since = await console.hub.latest_id() or "0-0"
        context = await sidebar(viewer)
        return HTMLResponse(ui.render(name, since=since, view=view, **context, **extra))

    # --- pages -----------------------------------------------------------------------------
    @routes.get("/")
    async def home(request: Request, notice: str = "") -> Response:
        viewer = await console.viewer(request)
        text = ui.t(NOTICES[notice]) if notice in NOTICES else ""
        return await page("home.html", viewer, notice=text)

    @routes.get("/c/{session}/{chat_id}")
    async def conversation(
        request: Request, session: str, chat_id: str, before: str | None = None
    ) -> Response:
        viewer = await console.viewer(request)
        token = conversation_token(session, chat_id)
        if not await reads.may_view(viewer, token):
            raise HTTPException(403, ui.t("error.forbidden"))
        since = await console.hub.latest_id() or "0-0"
        view = await reads.conversation(token, before=_cursor(before))
        if view is None:
            raise HTTPException(404, ui.t("error.not_found"))
        await console.redis.zadd(console.keys.viewed, {token: now_ms() + 60_000})
        last = view.entries[-1].cursor if view.entries else ""
        if before is None:
            await reads.mark_read(viewer.id, token, last)
        context = await sidebar(viewer)
        body = ui.render(
            "conversation.html",
            since=since,
            view=view,
            after=last,
            **context,
            can_act=await reads.owns(viewer, token),
            closable=view.state.state in CLOSABLE,
            handbackable=view.state.state in HANDBACKABLE,
            nonce=ui.nonce(),
            canned=await console.canned.all(),
            audit=await console.audit.entries(token),
            url=conv_url(session, chat_id),
        )
        return HTMLResponse(body)

    @routes.get("/conversations")
    async def search(request: Request, q: str = "") -> Response:
        viewer = await console.viewer(request)
        found = await reads.search_closed(viewer, q)
        return await page("search.html", viewer, q=q, found=found)

    # --- presence and the line -------------------------------------------------------------
    @routes.post("/presence")
    async def presence(request: Request) -> Response:
        viewer = await console.acting(request)
        want = _field(await request.form(), "online") == "1"
        if want:
            await line.set_online(viewer.id, viewer.name, now_ms())
            await console.coordinator.assign_free_agents()
        else:
            await line.set_offline(viewer.id, now_ms())
        return HTMLResponse(ui.render("_presence.html", viewer=viewer, online=want))

    @routes.post("/take-next")
    async def take_next(request: Request) -> Response:
        viewer = await console.acting(request)
        try:
            taken = await console.coordinator.take_next(viewer.id)
        except AgentOffline:
            return RedirectResponse("/?notice=offline", status_code=303)
        except AgentAtCapacity:
            return RedirectResponse("/?notice=full", status_code=303)
        except AgentUnavailable:
            return RedirectResponse("/?notice=full", status_code=303)
        if taken is None:
            return RedirectResponse("/?notice=empty", status_code=303)
        await console.audit.record(taken.token, viewer.id, "took")
        await console.redis.zadd(console.keys.handled(viewer.id), {taken.token: now_ms()})
        session, chat_id = split_conversation_token(taken.token)
        return RedirectResponse(conv_url(session, chat_id), status_code=303)

    # --- a conversation's actions ----------------------------------------------------------
    async def may_act(viewer: Viewer, session: str, chat_id: str) -> str:
        token = conversation_token(session, chat_id)
        if not await reads.owns(viewer, token):
            raise HTTPException(403, ui.t("error.forbidden"))
        return token

    async def queue(
        viewer: Viewer,
        session: str,
        chat_id: str,
        name: str,
        payload: dict[str, Any],
        nonce: str,
    ) -> bool:
        command_id = f"console:{viewer.id}:{nonce or ui.nonce()}"
        return await console.queue.send(session, chat_id, name, payload, event_id=command_id)

    @routes.post("/c/{session}/{chat_id}/reply")
    async def reply(request: Request, session: str, chat_id: str) -> Response:
        viewer = await console.acting(request)
        token = await may_act(viewer, session, chat_id)
        form = await request.form()
        text = _field(form, "text").strip()
        if not text or len(text) > MAX_REPLY:
            raise HTTPException(422, f"a reply has 1 to {MAX_REPLY} characters")
        payload = {"agent_id": viewer.id, "agent_name": viewer.name, "text": text}
        if await queue(
            viewer, session, chat_id, commands.AGENT_MESSAGE, payload, _field(form, "nonce")
        ):
            await console.audit.record(token, viewer.id, "sent", text)
            await console.redis.zadd(console.keys.handled(viewer.id), {token: now_ms()})
        body = ui.render(
            "_reply_form.html",
            url=conv_url(session, chat_id),
            nonce=ui.nonce(),
            canned=await console.canned.all(),
        )
        return HTMLResponse(body)

    async def ending(
        request: Request, session: str, chat_id: str, name: str, action: str
    ) -> Response:
        viewer = await console.acting(request)
        token = await may_act(viewer, session, chat_id)
        form = await request.form()
        if await queue(viewer, session, chat_id, name, {}, _field(form, "nonce")):
            await console.audit.record(token, viewer.id, action)
        return RedirectResponse(conv_url(session, chat_id), status_code=303)

    @routes.post("/c/{session}/{chat_id}/close")
    async def close(request: Request, session: str, chat_id: str) -> Response:
        return await ending(request, session, chat_id, commands.CLOSE, "closed")

    @routes.post("/c/{session}/{chat_id}/handback")
    async def handback(request: Request, session: str, chat_id: str) -> Response:
        return await ending(request, session, chat_id, commands.HANDBACK, "handed_back")

    # --- canned replies (admins) -----------------------------------------------------------
    async def admin(request: Request, *, acting: bool) -> Viewer:
        viewer = await (console.acting(request) if acting else console.viewer(request))
        if not viewer.admin:
            raise HTTPException(403, ui.t("error.admin_only"))
        return viewer

    @routes.get("/canned")
    async def canned_page(request: Request, error: str = "") -> Response:
        viewer = await admin(request, acting=False)
        return await page("canned.html", viewer, canned=await console.canned.all(), error=error)

    @routes.post("/canned")
    async def canned_put(request: Request) -> Response:
        await admin(request, acting=True)
        form = await request.form()
        try:
            await console.canned.put(_field(form, "shortcut"), _field(form, "text"))
        except CannedError as exc:
            return RedirectResponse(f"/canned?error={quote(str(exc))}", status_code=303)
        return RedirectResponse("/canned", status_code=303)

    @routes.post("/canned/{shortcut}/delete")
    async def canned_remove(request: Request, shortcut: str) -> Response:
        await admin(request, acting=True)
        await console.canned.remove(shortcut)
        return RedirectResponse("/canned", status_code=303)

    return routes


def _cursor(before: str | None) -> str | None:
    if before is None:
        return None
    ms, _, seq = before.partition("-")
    return before if ms.isdigit() and (not seq or seq.isdigit()) else None
