"""The waiting line(s), and an agent taking the longest-waiting customer."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from api.deps import Parts
from engine.waiting_line import AgentAtCapacity, AgentOffline, AgentUnavailable
from shared.clock import now_ms
from shared.keys import split_conversation_token

router = APIRouter()

# Why an agent cannot take a customer now: 409 `{"error": <code>, "detail": <text>}` (the shape
# of the media route's refusals), stable words for the client, never the engine's class names.
UNAVAILABLE: dict[type[AgentUnavailable], tuple[str, str]] = {
    AgentOffline: ("agent_offline", "the agent is offline: put them online first"),
    AgentAtCapacity: (
        "agent_at_capacity",
        "the agent already has as many conversations as one agent takes "
        "(WSM_CONVERSATIONS_PER_AGENT)",
    ),
}
UNAVAILABLE_OTHERWISE = ("agent_unavailable", "the agent cannot take a customer now")


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


@router.post(
    "/queue/next",
    responses={
        204: {"description": "Nobody waits in the agent's lines."},
        409: {
            "description": '`{"error": "agent_offline" | "agent_at_capacity", "detail": '
            "<text>}`: the agent is not online, or already has a full load."
        },
    },
)
async def queue_next(
    parts: Parts, agent_id: Annotated[str, Query(min_length=1)], session: str | None = None
) -> Response:
    """The agent takes the longest-waiting customer of the plain lines and their teams' lines
    (204 when nobody waits there; 409 `agent_offline` or `agent_at_capacity`)."""
    try:
        taken = await parts.coordinator.take_next(agent_id, session)
    except AgentUnavailable as exc:
        error, detail = UNAVAILABLE.get(type(exc), UNAVAILABLE_OTHERWISE)
        return JSONResponse({"error": error, "detail": detail}, status_code=409)
    if taken is None:
        return Response(status_code=204)
    taken_session, chat_id = split_conversation_token(taken.token)
    return Response(
        orjson.dumps({"session": taken_session, "chat_id": chat_id,
                      "waited_seconds": taken.waited_seconds, "agent_id": agent_id}),
        media_type="application/json",
    )  # fmt: skip
