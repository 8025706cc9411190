"""The WAHA sessions the engine has heard of, with their last status."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter

from api.deps import Parts
from shared.text import as_text

router = APIRouter()


@router.get("/sessions")
async def sessions(parts: Parts) -> dict[str, Any]:
    raw = await parts.redis.hgetall(parts.index.sessions)
    return {as_text(k): orjson.loads(v) for k, v in raw.items()}
