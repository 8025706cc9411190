"""Agents: online, offline, and who is there."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Parts
from api.validation import AgentName, NoFields
from shared.clock import now_ms

router = APIRouter()


TeamId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]


class AgentOnline(BaseModel):
    # A field the API does not know (a typo: `team`) is refused, not silently dropped.
    model_config = ConfigDict(extra="forbid")

    name: AgentName = Field(None, description="At most 100 characters; blank: kept, or the id.")
    # The teams whose lines the agent takes from (the business file's `teams` ids); left out
    # keeps the agent's teams, [] leaves them all.
    teams: list[TeamId] | None = Field(None, max_length=50)


@router.post("/agents/{agent_id}/online")
async def agent_online(
    parts: Parts, agent_id: str, body: AgentOnline | None = None
) -> dict[str, Any]:
    line = parts.coordinator.line
    if body and body.teams and (unknown := line.unknown_teams(body.teams)):
        raise HTTPException(422, unknown)
    agent = await line.set_online(
        agent_id, body.name if body else None, now_ms(), teams=body.teams if body else None
    )
    await parts.coordinator.assign_free_agents()
    return {"id": agent.id, "name": agent.name, "online": True, "teams": list(agent.teams)}


@router.post("/agents/{agent_id}/offline")
async def agent_offline(
    parts: Parts, agent_id: str, body: NoFields | None = None
) -> dict[str, Any]:
    """404 for an agent never put online (a typo would be kept as an agent otherwise). No
    body (or `{}`)."""
    line = parts.coordinator.line
    if not await parts.redis.hexists(line.keys.agents, agent_id):
        raise HTTPException(404, "no such agent: it was never put online")
    agent = await line.set_offline(agent_id, now_ms())
    return {"id": agent.id, "name": agent.name, "online": False}


@router.get("/agents")
async def list_agents(parts: Parts) -> list[dict[str, Any]]:
    return [
        {
            "id": a.id,
            "name": a.name,
            "online": a.online,
            "conversations": a.conversations,
            "teams": list(a.teams),
        }
        for a in await parts.coordinator.line.agents()
    ]
