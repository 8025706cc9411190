"""What WAHA reports about messages already in the history: delivery statuses
(`message.ack`, `message.ack.group`), edits, revokes and reactions. Each is recorded on the
message it touches (engine/history.py); the conversation's state does not move."""

from __future__ import annotations

from engine.history import ack_writes, edit_writes, reaction_writes, revoke_writes
from engine.turn.frame import ConversationTurn
from shared.delivery_status import status_for_ack
from shared.events import short_message_id


async def ack(turn: ConversationTurn) -> None:
    status = status_for_ack(turn.payload.get("ack"))
    waha_id = str(turn.payload.get("id") or "")
    if status and waha_id:
        turn.writes += await ack_writes(
            turn.redis, turn.history, short_message_id(waha_id), status,
            retention_seconds=turn.config.retention_seconds,
        )  # fmt: skip


async def edited(turn: ConversationTurn) -> None:
    target = turn.payload.get("editedMessageId") or ""
    if target:
        turn.writes += await edit_writes(
            turn.redis, turn.history, short_message_id(str(target)),
            str(turn.payload.get("body") or ""),
        )  # fmt: skip


async def revoked(turn: ConversationTurn) -> None:
    target = turn.payload.get("revokedMessageId")
    before = turn.payload.get("before")
    if not target and isinstance(before, dict):
        target = before.get("id")
    if target:
        turn.writes += await revoke_writes(
            turn.redis, turn.history, short_message_id(str(target)), turn.now
        )


async def reaction(turn: ConversationTurn) -> None:
    payload = turn.payload
    reacted = payload.get("reaction") or {}
    target = reacted.get("messageId") if isinstance(reacted, dict) else None
    if target:
        reactor = str(payload.get("participant") or payload.get("from") or "")
        if payload.get("fromMe") is True:
            reactor = "business"
        turn.writes += await reaction_writes(
            turn.redis, turn.history, short_message_id(str(target)), reactor,
            str(reacted.get("text") or ""),
        )  # fmt: skip
