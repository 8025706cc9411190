"""Conversations: the list, one conversation, its history, and the commands an operator sends
to it (an agent's message, close, handback).

A command is queued to the conversation and handled by the worker fleet in order with the
customer's messages, so those routes answer 202 Accepted with the command's id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ApiParts, Parts
from api.media_send import KEY_REUSED, command_id_for, same_request
from api.reads import conversations_page, describe_many
from api.validation import AGENT_ID, AGENT_ID_RULE, AgentName, NoFields, ReplyText
from engine import commands
from engine.history import HistoryKeys, InvalidCursor, read_page
from engine.state import State
from shared.keys import engine_keys_for

router = APIRouter()


class AgentMessage(BaseModel):
    # A field the API does not know (a typo: `agentName`) is refused, not silently dropped.
    model_config = ConfigDict(extra="forbid")

    # The same rule as an agent id anywhere else in the API (it names Redis keys).
    agent_id: str = Field(pattern=f"^{AGENT_ID.pattern}$", description=AGENT_ID_RULE)
    text: ReplyText = Field(description="Trimmed; 1-4096 characters, not only blanks.")
    agent_name: AgentName = Field(None, description="At most 100 characters; blank: agent_id.")


class Accepted(BaseModel):
    command_id: str
    queued: bool


# At module level: with `from __future__ import annotations` FastAPI resolves each parameter's
# annotation by name in the route's module globals, and an alias local to a function is not
# found there (the header was then ignored and /openapi.json answered 500).
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=100,
        description="Retrying with the same key queues the command once and gets the same "
        "answer (with `Idempotent-Replayed: true`). A key is scoped to the conversation and the "
        "action, and remembered for WSM_DEDUPE_TTL_SECONDS. The same key with another request "
        "(another text, another file) is refused with 422, nothing queued: a new command "
        "takes a new key.",
    ),
]


@router.get("/conversations")
async def list_conversations(
    parts: Parts, state: State | None = None, session: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:  # fmt: skip
    """Conversations, most recently active first, optionally by state and session."""
    return await conversations_page(parts, state=state, session=session, limit=limit)


@router.get("/conversations/{session}/{chat_id}")
async def get_conversation(parts: Parts, session: str, chat_id: str) -> dict[str, Any]:
    [found] = await describe_many(parts, [(session, chat_id)])
    if found is None:
        raise HTTPException(404, "no such conversation")
    return found


@router.get("/conversations/{session}/{chat_id}/messages")
async def get_messages(
    parts: Parts, session: str, chat_id: str,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The history, oldest first; `next_before` pages to older messages (400 for a `before`
    that is not one)."""
    keys = engine_keys_for(session, chat_id, parts.shards, parts.prefix)
    try:
        entries, next_before = await read_page(
            parts.redis, HistoryKeys(keys.history, keys.history_meta), limit=limit, before=before
        )
    except InvalidCursor as exc:
        raise HTTPException(400, str(exc)) from exc
    return {"messages": [e.public() for e in entries], "next_before": next_before}


@dataclass(frozen=True, slots=True)
class _Target:
    """The conversation a command route addresses, and what queuing a command there needs."""

    parts: ApiParts
    session: str
    chat_id: str
    response: Response
    idempotency_key: str | None

    async def queue(self, name: str, payload: dict[str, Any]) -> Accepted:
        session, chat_id, key = self.session, self.chat_id, self.idempotency_key
        # A client's key names one command of one conversation (api/media_send.py).
        command_id = command_id_for(session, chat_id, name, key)
        queue = self.parts.coordinator.queue
        if key and not await same_request(queue, session, chat_id, command_id, payload):
            raise HTTPException(422, KEY_REUSED)
        if not await queue.send(session, chat_id, name, payload, event_id=command_id):
            # A retry: the command is queued already, once. It answers as the first request
            # did (a client whose first request timed out reads the same), and says it repeats.
            self.response.headers["Idempotent-Replayed"] = "true"
        return Accepted(command_id=command_id, queued=True)


async def _target(
    parts: Parts,
    session: str,
    chat_id: str,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> _Target:
    return _Target(parts, session, chat_id, response, idempotency_key)


# Every command route: the conversation from the path, the Idempotency-Key header, and the
# response whose headers say when a retry was recognised.
CommandTarget = Annotated[_Target, Depends(_target)]


@router.post("/conversations/{session}/{chat_id}/messages", status_code=202)
async def post_message(target: CommandTarget, body: AgentMessage) -> Accepted:
    """An agent writes to the customer (the conversation becomes theirs)."""
    payload = {"agent_id": body.agent_id, "agent_name": body.agent_name or body.agent_id,
               "text": body.text}  # fmt: skip
    return await target.queue(commands.AGENT_MESSAGE, payload)


@router.post("/conversations/{session}/{chat_id}/close", status_code=202)
async def post_close(target: CommandTarget, body: NoFields | None = None) -> Accepted:
    """Closes the conversation. No body (or `{}`)."""
    return await target.queue(commands.CLOSE, {})


@router.post("/conversations/{session}/{chat_id}/handback", status_code=202)
async def post_handback(target: CommandTarget, body: NoFields | None = None) -> Accepted:
    """Back to the bot. No body (or `{}`)."""
    return await target.queue(commands.HANDBACK, {})
