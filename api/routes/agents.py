"""Agents: online, offline, and who is there."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import Parts
from shared.clock import now_ms

router = APIRouter()


class AgentOnline(BaseModel):
    name: str | None = Field(None, max_length=100)


@router.post("/agents/{agent_id}/online")
async def agent_online(
    parts: Parts, agent_id: str, body: AgentOnline | None = None
) -> dict[str, Any]:
    agent = await parts.coordinator.line.set_online(agent_id, body.name if body else None, now_ms())
    await parts.coordinator.assign_free_agents()
    return {"id": agent.id, "name": agent.name, "online": True}


@router.post("/agents/{agent_id}/offline")
async def agent_offline(parts: Parts, agent_id: str) -> dict[str, Any]:
    agent = await parts.coordinator.line.set_offline(agent_id, now_ms())
    return {"id": agent.id, "name": agent.name, "online": False}


@router.get("/agents")
async def list_agents(parts: Parts) -> list[dict[str, Any]]:
    return [
        {"id": a.id, "name": a.name, "online": a.online, "conversations": a.conversations}
        for a in await parts.coordinator.line.agents()
    ]
