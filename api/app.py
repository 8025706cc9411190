"""The operator API: conversations, their history, the waiting line, agents, erasure.

Every `/api/...` route needs `Authorization: Bearer <WSM_API_TOKEN>` (401 otherwise, before
anything is read or stored). `/metrics` and `/healthz` are open: Prometheus and the container's
health check reach them on the internal network; OpenAPI docs are at `/docs`.

What changes a conversation (an agent's message, close, handback) is queued to the
conversation as a command and handled by the worker fleet in order with the customer's
messages, so those routes answer 202 Accepted with the command's id.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.validation import operator_input
from engine import commands
from engine.agent.bookings import BookingStore
from engine.agent.service import calendar_from
from engine.erase import erase_customer
from engine.history import HistoryKeys, InvalidCursor, read_page
from engine.metrics import EngineSnapshot, EngineStateCollector
from engine.service import coordinator as make_coordinator
from engine.state import State, load_state
from engine.waiting_line import AgentUnavailable, now_ms
from shared.keys import (
    EngineIndexKeys,
    all_shards,
    conversation_token,
    engine_keys_for,
    outbox_pending_key,
    split_conversation_token,
)
from shared.queue_errors import ConversationBusy
from shared.settings import Settings

_bearer = HTTPBearer(auto_error=False)


class AgentMessage(BaseModel):
    agent_id: str = Field(min_length=1, max_length=100)
    text: str = Field(min_length=1, max_length=4096)
    agent_name: str | None = Field(None, max_length=100)


class AgentOnline(BaseModel):
    name: str | None = Field(None, max_length=100)


class Accepted(BaseModel):
    command_id: str
    queued: bool


# At module level: with `from __future__ import annotations` FastAPI resolves each parameter's
# annotation by name in this module's globals, and an alias local to create_app is not found
# there (the header was then ignored and /openapi.json answered 500).
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=100,
        description="Retrying with the same key queues the command once and gets the same "
        "answer (with `Idempotent-Replayed: true`). A key is scoped to the conversation and the "
        "action, and remembered for WSM_DEDUPE_TTL_SECONDS.",
    ),
]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def create_app(settings: Settings, redis: Any) -> FastAPI:
    if settings.api_token is None or not settings.api_token.get_secret_value():
        raise ValueError("WSM_API_TOKEN is not set: the operator API refuses to run without one")
    token = settings.api_token.get_secret_value().encode()
    coordinator = make_coordinator(redis, settings)
    line = coordinator.line
    queue = coordinator.queue
    index = EngineIndexKeys(settings.key_prefix)
    prefix, shards = settings.key_prefix, settings.queue_shards
    # Bookings live under the calendar's own keys; an erase must forget them too (LGPD).
    bookings = BookingStore(
        redis,
        calendar_from(settings),
        prefix=prefix,
        max_per_customer=settings.max_bookings_per_customer,
        retention_seconds=settings.history_retention_days * 24 * 3600,
        webhook_enabled=False,
    )

    async def authorized(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        given = credentials.credentials.encode() if credentials else b""
        if not given or not hmac.compare_digest(given, token):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    app = FastAPI(
        title="wsm operator API",
        description="Conversations, history, the waiting line, agents and erasure.",
        version="1",
    )
    # Bearer first (401), then the path and query forms (422) and, for commands, that the
    # conversation exists (404): api/validation.py.
    checked = operator_input(redis, prefix=prefix, shards=shards)
    api = APIRouter(prefix="/api", dependencies=[Depends(authorized), Depends(checked)])

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def redis_unavailable(request: Request, exc: Exception) -> Response:
        # Redis down, or a pooled connection that died with a Redis restart: the operator's
        # client should try again shortly, not read a 500 as a bug.
        return Response(
            orjson.dumps({"detail": "Redis is unavailable; try again shortly"}),
            status_code=503,
            media_type="application/json",
            headers={"Retry-After": "1"},
        )

    async def describe(session: str, chat_id: str) -> dict[str, Any] | None:
        keys = engine_keys_for(session, chat_id, shards, prefix)
        raw = await redis.hgetall(keys.state)
        if not raw:
            return None
        state = await load_state(redis, keys.state)
        position = await line.position(session, conversation_token(session, chat_id))
        return {
            "session": session,
            "chat_id": chat_id,
            "state": state.state.value,
            "phone": state.phone or None,
            "collected": dict(state.collected),
            "agent": {"id": state.agent_id, "name": state.agent_name} if state.agent_id else None,
            "queue_position": position,
            "last_activity_at": state.last_activity_at,
            "opened_at": state.opened_at,
            "closed_at": state.closed_at or None,
            "outbox_pending": int(await redis.llen(keys.outbox)),
        }

    @api.get("/conversations")
    async def list_conversations(
        state: State | None = None, session: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Conversations, most recently active first, optionally by state and session."""
        if state is not None:
            members = [_text(m) for m in await redis.smembers(index.in_state(state.value))]
        else:
            members = [_text(m) for m in await redis.zrevrange(index.conversations, 0, -1)]
        out = []
        for member in members:
            conv_session, chat_id = split_conversation_token(member)
            if session and conv_session != session:
                continue
            found = await describe(conv_session, chat_id)
            if found and (state is None or found["state"] == state.value):
                out.append(found)
        out.sort(key=lambda c: -int(c["last_activity_at"]))
        return out[:limit]

    @api.get("/conversations/{session}/{chat_id}")
    async def get_conversation(session: str, chat_id: str) -> dict[str, Any]:
        found = await describe(session, chat_id)
        if found is None:
            raise HTTPException(404, "no such conversation")
        return found

    @api.get("/conversations/{session}/{chat_id}/messages")
    async def get_messages(
        session: str, chat_id: str,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """The history, oldest first; `next_before` pages to older messages."""
        keys = engine_keys_for(session, chat_id, shards, prefix)
        try:
            entries, next_before = await read_page(
                redis, HistoryKeys(keys.history, keys.history_meta), limit=limit, before=before
            )
        except InvalidCursor as exc:
            raise HTTPException(400, str(exc)) from exc
        return {"messages": [e.public() for e in entries], "next_before": next_before}

    async def command(
        session: str,
        chat_id: str,
        name: str,
        payload: dict[str, Any],
        key: str | None,
        response: Response,
    ) -> Accepted:
        # A client's key names one command of one conversation: the same key on another
        # conversation (even of the same session) is another command. The id is a digest, so
        # it carries neither the key nor the customer's chat id.
        if key:
            scoped = f"{conversation_token(session, chat_id)}\n{name}\n{key}"
            command_id = "api:" + hashlib.sha256(scoped.encode()).hexdigest()[:32]
        else:
            command_id = f"api:{uuid.uuid4().hex}"
        if not await queue.send(session, chat_id, name, payload, event_id=command_id):
            # A retry: the command is queued already, once. It answers as the first request
            # did (a client whose first request timed out reads the same), and says it repeats.
            response.headers["Idempotent-Replayed"] = "true"
        return Accepted(command_id=command_id, queued=True)

    @api.post("/conversations/{session}/{chat_id}/messages", status_code=202)
    async def post_message(
        session: str,
        chat_id: str,
        body: AgentMessage,
        response: Response,
        idempotency_key: IdempotencyKey = None,
    ) -> Accepted:
        """An agent writes to the customer (the conversation becomes theirs)."""
        payload = {"agent_id": body.agent_id, "agent_name": body.agent_name or body.agent_id,
                   "text": body.text}  # fmt: skip
        return await command(
            session, chat_id, commands.AGENT_MESSAGE, payload, idempotency_key, response
        )

    @api.post("/conversations/{session}/{chat_id}/close", status_code=202)
    async def post_close(
        session: str, chat_id: str, response: Response, idempotency_key: IdempotencyKey = None
    ) -> Accepted:
        return await command(session, chat_id, commands.CLOSE, {}, idempotency_key, response)

    @api.post("/conversations/{session}/{chat_id}/handback", status_code=202)
    async def post_handback(
        session: str, chat_id: str, response: Response, idempotency_key: IdempotencyKey = None
    ) -> Accepted:
        """Back to the bot."""
        return await command(session, chat_id, commands.HANDBACK, {}, idempotency_key, response)

    @api.get("/queue")
    async def get_queue(session: str | None = None) -> list[dict[str, Any]]:
        """The waiting line(s), front first, with the time waited so far."""
        sessions = [session] if session else await line.sessions()
        now = now_ms()
        out = []
        for name in sessions:
            for member in await line.members(name):
                _, chat_id = split_conversation_token(member.token)
                out.append({
                    "session": name, "chat_id": chat_id, "position": member.position,
                    "entered_at": member.entered_at,
                    "waited_seconds": round(max(0, now - member.entered_at) / 1000, 3),
                })  # fmt: skip
        return out

    @api.post("/agents/{agent_id}/online")
    async def agent_online(agent_id: str, body: AgentOnline | None = None) -> dict[str, Any]:
        agent = await line.set_online(agent_id, body.name if body else None, now_ms())
        await coordinator.assign_free_agents()
        return {"id": agent.id, "name": agent.name, "online": True}

    @api.post("/agents/{agent_id}/offline")
    async def agent_offline(agent_id: str) -> dict[str, Any]:
        agent = await line.set_offline(agent_id, now_ms())
        return {"id": agent.id, "name": agent.name, "online": False}

    @api.get("/agents")
    async def list_agents() -> list[dict[str, Any]]:
        return [
            {"id": a.id, "name": a.name, "online": a.online, "conversations": a.conversations}
            for a in await line.agents()
        ]

    @api.post("/queue/next")
    async def queue_next(
        agent_id: Annotated[str, Query(min_length=1)], session: str | None = None
    ) -> Response:
        """The agent takes the longest-waiting customer (204 when nobody waits)."""
        try:
            taken = await coordinator.take_next(agent_id, session)
        except AgentUnavailable as exc:
            raise HTTPException(
                409, f"agent cannot take a customer now: {type(exc).__name__}"
            ) from exc
        if taken is None:
            return Response(status_code=204)
        taken_session, chat_id = split_conversation_token(taken.token)
        return Response(
            orjson.dumps({"session": taken_session, "chat_id": chat_id,
                          "waited_seconds": taken.waited_seconds, "agent_id": agent_id}),
            media_type="application/json",
        )  # fmt: skip

    @api.delete("/contacts/{session}/{chat_id}")
    async def erase(session: str, chat_id: str) -> dict[str, Any]:
        """Erase everything about this customer (LGPD). 409 while their messages are being
        handled: try again shortly."""
        try:
            removed = await erase_customer(
                redis, prefix=prefix, shards=shards, session=session, chat_id=chat_id
            )
        except ConversationBusy as exc:
            raise HTTPException(409, str(exc)) from exc
        removed += await bookings.erase_customer(conversation_token(session, chat_id))
        return {"erased": True, "removed": removed}

    @api.get("/sessions")
    async def sessions() -> dict[str, Any]:
        raw = await redis.hgetall(index.sessions)
        return {_text(k): orjson.loads(v) for k, v in raw.items()}

    app.include_router(api)
    from api.console import install as install_console  # the attendants' console, at /

    install_console(app, settings, redis, coordinator)

    collector = EngineStateCollector()
    registry = CollectorRegistry()
    registry.register(collector)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        collector.snapshot = await snapshot()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def snapshot() -> EngineSnapshot:
        pending = 0
        for shard in all_shards(shards, prefix):
            members = await redis.zrange(outbox_pending_key(shard), 0, -1)
            for member in members:
                conv_session, chat_id = split_conversation_token(_text(member))
                keys = engine_keys_for(conv_session, chat_id, shards, prefix)
                pending += int(await redis.llen(keys.outbox))
        lines = {name: await line.length(name) for name in await line.sessions()}
        conversations = {s.value: int(await redis.scard(index.in_state(s.value))) for s in State}
        registry_raw = await redis.hgetall(index.sessions)
        up = {_text(k): orjson.loads(v).get("status") == "WORKING" for k, v in registry_raw.items()}
        return EngineSnapshot(pending, lines, conversations, up)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> dict[str, str]:
        await redis.ping()
        return {"status": "ok"}

    return app
