"""The waiting line(s), and an agent taking the longest-waiting customer."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Response

from api.deps import Parts
from engine.waiting_line import AgentUnavailable
from shared.clock import now_ms
from shared.keys import split_conversation_token

router = APIRouter()


@router.get("/queue")
async def get_queue(parts: Parts, session: str | None = None) -> list[dict[str, Any]]:
    """The waiting line(s), front first, with the time waited so far."""
    line = parts.coordinator.line
    sessions = [session] if session else await line.sessions()
    now = now_ms()
    out = []
    for name in sessions:
        for member in await line.members(name):
            _, chat_id = split_conversation_token(member.token)
            out.append({
                "session": name, "team": member.team or None, "chat_id": chat_id,
                "position": member.position,
                "entered_at": member.entered_at,
                "waited_seconds": round(max(0, now - member.entered_at) / 1000, 3),
            })  # fmt: skip
    return out


@router.post("/queue/next")
async def queue_next(
    parts: Parts, agent_id: Annotated[str, Query(min_length=1)], session: str | None = None
) -> Response:
    """The agent takes the longest-waiting customer of the plain lines and their teams' lines
    (204 when nobody waits there)."""
    try:
        taken = await parts.coordinator.take_next(agent_id, session)
    except AgentUnavailable as exc:
        raise HTTPException(409, f"agent cannot take a customer now: {type(exc).__name__}") from exc
    if taken is None:
        return Response(status_code=204)
    taken_session, chat_id = split_conversation_token(taken.token)
    return Response(
        orjson.dumps({"session": taken_session, "chat_id": chat_id,
                      "waited_seconds": taken.waited_seconds, "agent_id": agent_id}),
        media_type="application/json",
    )  # fmt: skip
