"""Erasing a customer (LGPD): engine/erase.py, plus the calendar's bookings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from api.deps import Parts
from engine.erase import erase_customer
from shared.keys import conversation_token
from shared.queue_errors import ConversationBusy

router = APIRouter()


@router.delete("/contacts/{session}/{chat_id}")
async def erase(parts: Parts, session: str, chat_id: str) -> dict[str, Any]:
    """Erase everything about this customer (LGPD). 409 while their messages are being
    handled: try again shortly."""
    token = conversation_token(session, chat_id)
    try:
        # The bookings go while the erase holds the conversation's lease, so no handler can
        # book again for her between the two.
        removed = await erase_customer(
            parts.redis,
            prefix=parts.prefix,
            shards=parts.shards,
            session=session,
            chat_id=chat_id,
            also=lambda: parts.bookings.erase_customer(token),
            media=parts.media,
        )
    except ConversationBusy as exc:
        raise HTTPException(409, str(exc)) from exc
    return {"erased": True, "removed": removed}
