"""The console's pages and what an agent does on them.

Every action goes through the same engine pieces as the operator API: presence through the
line's set_online / set_offline, "Atender próximo" through the coordinator's take_next, and a
reply, a close or a handback as a command queued to the conversation (engine/commands.py), so
the worker handles it in order with the customer's messages, exactly once. The agent is always
the logged-in one (the session's), never anything the page sends; a command is named after the
form's one-time nonce and what it sends, so a form sent twice queues once, and sent again with
another text or file (a failed request left it on the page) queues that one too.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData, UploadFile

from api.forms import whole_form
from api.media_send import MediaRefused, media_send_parts, send_media
from api.validation import REPLY_MAX
from engine import commands
from engine import parts as engine_parts
from engine.sender import WAHA_PLUS_REQUIRED
from engine.state import State
from engine.waiting_line import AgentAtCapacity, AgentOffline, AgentUnavailable, now_ms
from shared.keys import conversation_token, split_conversation_token
from shared.stream_ids import history_cursor

from .canned import CannedError
from .context import Console
from .sessions import Viewer, require_csrf
from .ui import conv_url
from .views import ConversationView

CLOSABLE = {State.BOT, State.WAITING, State.AGENT, State.PAUSED}
HANDBACKABLE = {State.WAITING, State.AGENT, State.PAUSED}
MAX_REPLY = REPLY_MAX  # the API's rule for what an agent writes (api/validation.py)
# Room for the multipart envelope and the small fields around an uploaded file.
UPLOAD_OVERHEAD = 64 * 1024
NOTICES = {"empty": "take_next.empty", "offline": "take_next.offline", "full": "take_next.full"}


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
            "line": await reads.line_entries(await reads.line_teams(viewer)),
            "mine": await reads.mine(viewer),
        }
        if viewer.admin:
            context["agents"] = await agents_view()
        return context

    async def agents_view() -> list[dict[str, Any]]:
        return await reads.agents({a.id: a.name for a in await console.accounts.list()})

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
            # By hand: the attendant sees who waits and takes them with "Atender próximo"
            # (issue 14); the line's automatic assignment is for agents put online by the API.
            await line.set_online(viewer.id, viewer.name, now_ms(), by_hand=True)
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
        # An admin owns every conversation, but only existing ones are written to (as in the
        # operator API): a made-up number is never messaged, nor a command queued for it.
        if not await reads.exists(token):
            raise HTTPException(404, ui.t("error.not_found"))
        return token

    def sent_once(viewer: Viewer, nonce: str, *what: Any) -> str:
        """The name of what a form sends: its nonce (a double click sends once) and a digest
        of what it carries (the same form with another text is another message, never
        dropped as a repeat of the first)."""
        digest = hashlib.sha256(orjson.dumps(what, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return f"console:{viewer.id}:{nonce or ui.nonce()}:{digest[:32]}"

    async def queue(
        viewer: Viewer,
        session: str,
        chat_id: str,
        name: str,
        payload: dict[str, Any],
        nonce: str,
    ) -> bool:
        command_id = sent_once(viewer, nonce, name, payload)
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

    # --- sending a file ---------------------------------------------------------------------
    # The same send_media as POST /api/conversations/…/media (api/media_send.py): the same
    # checks, store, command and wait. Its outcome (or refusal) is shown in the form that
    # replaces the old one: answered 200 so htmx swaps it in; refusals store nothing.
    sending = media_send_parts(
        console.settings,
        console.redis,
        console.queue,
        engine_parts.media_library(console.redis, console.settings),
    )

    def upload_form(session: str, chat_id: str, viewer: Viewer, **outcome: str) -> HTMLResponse:
        body = ui.render(
            "_media_form.html",
            url=conv_url(session, chat_id),
            viewer=viewer,
            nonce=ui.nonce(),
            **outcome,
        )
        return HTMLResponse(body)

    def refusal_text(refusal: MediaRefused, mimetype: str = "") -> str:
        if refusal.error == WAHA_PLUS_REQUIRED:
            return ui.t("media.upload.plus")
        if refusal.error in ("no_file", "empty_file"):
            return ui.t("media.upload.missing")
        if refusal.error == "file_too_large":
            return ui.upload_too_big
        if refusal.error in ("unsupported_type", "type_mismatch"):
            return ui.t("media.upload.type", mimetype=mimetype or "?")
        if refusal.error == "caption_too_long":
            return ui.t("media.upload.caption_too_long")
        return ui.t("media.upload.failed", reason=refusal.detail)

    @routes.post("/c/{session}/{chat_id}/media")
    async def media(request: Request, session: str, chat_id: str) -> Response:
        viewer = await console.viewer(request)
        token = await may_act(viewer, session, chat_id)
        # A body announcing more than a file may be is refused before it is read (the CSRF
        # token may be one of its fields; htmx sends it as a header too).
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > sending.max_bytes + UPLOAD_OVERHEAD:
            refused = MediaRefused(413, "file_too_large", "")
            return upload_form(
                session, chat_id, viewer, upload_error=refusal_text(refused),
                upload_reason=refused.error,
            )  # fmt: skip
        await require_csrf(request, viewer)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(422, "a file is sent as multipart/form-data")
        try:
            async with whole_form(request, max_files=1, max_fields=10) as form:
                upload = form.get("file")
                caption, nonce = _field(form, "caption"), _field(form, "nonce")
                if not isinstance(upload, UploadFile) or not upload.filename:
                    raise MediaRefused(422, "no_file", "")
                data = await upload.read(sending.max_bytes + 1)
                mimetype, filename = upload.content_type or "", upload.filename
        except MediaRefused as refused:
            return upload_form(
                session, chat_id, viewer, upload_error=refusal_text(refused),
                upload_reason=refused.error,
            )  # fmt: skip
        try:
            sent = await send_media(
                sending,
                session=session,
                chat_id=chat_id,
                agent_id=viewer.id,
                agent_name=viewer.name,
                data=data,
                mimetype=mimetype,
                filename=filename,
                caption=caption,
                # Scoped to the conversation and the action by send_media: a form sent twice
                # (its nonce) sends the file once; with another file or caption, that one.
                idempotency_key=sent_once(
                    viewer, nonce, hashlib.sha256(data).hexdigest(), mimetype, filename, caption
                ),
            )
        except MediaRefused as refusal:
            return upload_form(
                session, chat_id, viewer, upload_error=refusal_text(refusal, mimetype),
                upload_reason=refusal.error,
            )  # fmt: skip
        name = filename or ""
        if sent.status in ("sent", "queued"):
            if not sent.replayed:
                # The audit trail's "sent", naming the file (its kind, as WhatsApp got it).
                await console.audit.record(token, viewer.id, "sent", f"[{sent.kind}] {name}")
                await console.redis.zadd(console.keys.handled(viewer.id), {token: now_ms()})
            done = ui.t(f"media.upload.{sent.status}", filename=name)
            return upload_form(
                session, chat_id, viewer, upload_done=done, upload_status=sent.status
            )
        error = (
            ui.t("media.upload.plus")
            if sent.status == WAHA_PLUS_REQUIRED
            else ui.t("media.upload.refused")
        )
        return upload_form(session, chat_id, viewer, upload_error=error, upload_reason=sent.status)

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
    # Anything but a usable history cursor shows the newest page (a 500 from Redis otherwise).
    return before if before is not None and history_cursor(before) else None
