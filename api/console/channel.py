"""`GET /events`: one page's live channel (Server-Sent Events, sse-starlette).

The page connects with the events stream id it was rendered at (`since`), the conversation it
shows (`conv`) and that conversation's last history id on the page (`after`). The browser's
Last-Event-ID (its native reconnect), or `last` (when htmx's SSE extension opens a new
EventSource after an error and the header would be lost), takes over from `since`.

Each event becomes htmx out-of-band fragments for this agent and this page only: the line, the
agent's conversations (with unread counts), the conversation's new messages, a message's new
delivery status, the conversation's header and audit trail. An agent never receives a
conversation that is not theirs to see: that is checked when the page connects and again at
each event of its conversation (another agent may have taken it from the line meanwhile).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from sse_starlette.sse import EventSourceResponse

from engine.waiting_line import now_ms
from shared.keys import split_conversation_token
from shared.stream_ids import stream_id

from .context import Console
from .live import KEEPALIVE_SECONDS, VIEW_TTL_MS, Event, event_stream
from .pages import CLOSABLE, HANDBACKABLE
from .sessions import Viewer
from .ui import conv_url


def _valid_id(value: str | None) -> str:
    # `<ms>-<seq>` that Redis takes as a bound (api/validation.py), else none.
    return value if value and "-" in value and stream_id(value) is not None else ""


class PageChannel:
    """What one open page has been sent, and how each event looks on it."""

    def __init__(self, console: Console, viewer: Viewer, token: str, after: str) -> None:
        self.console = console
        self.viewer = viewer
        self.token = token
        self.after = after  # the newest message of `token` the page has

    async def render(self, event: Event) -> str | None:
        viewer, ui, reads = self.viewer, self.console.ui, self.console.reads
        parts: list[str] = []
        if event.kind == "line":
            # The same for every page showing the same lines (an agent's teams): rendered once
            # per event and set of lines in this process.
            teams = await reads.line_teams(viewer)
            cached = self.console.line_cache.get(teams)
            if cached is None or cached[0] != event.id:
                line = await reads.line_entries(teams)
                cached = (event.id, ui.render("_oob_line.html", line=line))
                self.console.line_cache[teams] = cached
            parts.append(cached[1])
        if event.kind == "agents":
            online = any(a.id == viewer.id and a.online for a in await reads.line.agents())
            parts.append(ui.render("_oob_presence.html", viewer=viewer, online=online))
            parts.append(await self.mine())
            if viewer.admin:
                parts.append(await self.agents())
        # The open conversation first: its new messages are marked read before the agent's
        # list (with its unread counts) is rendered. Asked again at each of its events, not
        # only when the page connected: a customer an agent could see while in line is no
        # longer theirs once another agent takes them, and the page stops following it.
        if (
            event.token
            and event.token == self.token
            and not await reads.may_view(viewer, self.token)
        ):
            self.token = ""
        if event.token and event.token == self.token:
            if event.kind == "msg":
                parts.append(await self.messages(event))
            elif event.kind == "conv":
                parts.append(await self.head())
            elif event.kind == "status":
                parts.append(
                    ui.render("_oob_status.html", cursor=event.cursor, status=event.status)
                )
        if event.kind in ("conv", "msg") and event.token:
            mine = await reads.agent_tokens(viewer.id)
            if event.token in mine:
                parts.append(await self.mine())
            elif viewer.admin and event.kind == "conv":
                parts.append(await self.agents())
        return "".join(parts) or None

    async def mine(self) -> str:
        return self.console.ui.render(
            "_oob_mine.html", mine=await self.console.reads.mine(self.viewer)
        )

    async def agents(self) -> str:
        accounts = {a.id: a.name for a in await self.console.accounts.list()}
        agents = await self.console.reads.agents(accounts)
        return self.console.ui.render("_oob_agents.html", agents=agents)

    async def messages(self, event: Event) -> str:
        reads = self.console.reads
        entries = await reads.entries_between(self.token, self.after, event.upto)
        if not entries:
            return ""
        self.after = entries[-1].cursor
        await reads.mark_read(self.viewer.id, self.token, self.after)
        audit = await self.console.audit.entries(self.token)
        return self.console.ui.render("_oob_messages.html", entries=entries, audit=audit)

    async def head(self) -> str:
        console = self.console
        view = await console.reads.conversation(self.token)
        if view is None:
            return ""
        session, chat_id = split_conversation_token(self.token)
        return console.ui.render(
            "_oob_head.html",
            view=view,
            viewer=self.viewer,
            url=conv_url(session, chat_id),
            nonce=console.ui.nonce(),
            can_act=await console.reads.owns(self.viewer, self.token),
            closable=view.state.state in CLOSABLE,
            handbackable=view.state.state in HANDBACKABLE,
            audit=await console.audit.entries(self.token),
            canned=await console.canned.all(),
        )


def router(console: Console) -> APIRouter:
    routes = APIRouter(include_in_schema=False)

    @routes.get("/events")
    async def events(
        request: Request, since: str = "", conv: str = "", after: str = "", last: str = ""
    ) -> Response:
        viewer = await console.viewer(request)
        if conv and not await console.reads.may_view(viewer, conv):
            raise HTTPException(403, console.ui.t("error.forbidden"))
        resume = (
            _valid_id(request.headers.get("last-event-id")) or _valid_id(last) or _valid_id(since)
        )
        channel = PageChannel(console, viewer, conv, _valid_id(after))

        async def keepalive() -> None:
            if conv:
                await console.redis.zadd(console.keys.viewed, {conv: now_ms() + VIEW_TTL_MS})

        async def alive() -> bool:
            return await console.sessions.alive(viewer)

        await keepalive()
        stream: Any = event_stream(console.hub, resume, channel.render, alive, keepalive)
        return EventSourceResponse(
            stream,
            ping=int(KEEPALIVE_SECONDS),
            # nginx must not buffer the stream (its location says so too).
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return routes
