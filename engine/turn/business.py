"""`message.any` with `fromMe`: a message sent from the business's own WhatsApp. Either the
echo of one of our own replies (already in the history; it may settle a send whose sender
died before recording it, or a reply dead-lettered although WhatsApp had it), or a person of
the business answering from the phone: recorded, and the bot keeps quiet (`paused`). Without
`fromMe`, `message.any` repeats a `message` event and is handled there."""

from __future__ import annotations

from engine.history import HistoryEntry
from engine.sender import InflightSend, inflight_chats
from engine.state import State, Trigger
from engine.turn.frame import ConversationTurn
from engine.waha_client import SentMessage
from shared.delivery_status import status_for_ack
from shared.events import message_time_ms, short_message_id
from shared.keys import WahaSessionKeys


async def any_message(turn: ConversationTurn) -> None:
    if turn.payload.get("fromMe") is True:
        await from_business_phone(turn)


async def any_message_light(turn: ConversationTurn) -> bool:
    """The light path (engine/turn/dispatch.py): True when the event changes nothing in the
    conversation - a `message` twin (no `fromMe`) or the echo of one of our own replies - so
    it is acked without reading the state. A message from the business's phone goes on to the
    full turn (any_message)."""
    payload = turn.payload
    if payload.get("fromMe") is not True:
        return True
    waha_id = str(payload.get("id") or "")
    short = short_message_id(waha_id) if waha_id else ""
    return await is_our_send(turn, short, str(payload.get("body") or ""))


async def from_business_phone(turn: ConversationTurn) -> None:
    payload = turn.payload
    waha_id = str(payload.get("id") or "")
    short = short_message_id(waha_id) if waha_id else ""
    text = str(payload.get("body") or "")
    if await is_our_send(turn, short, text):
        return  # the echo of one of our replies: already in the history
    at = message_time_ms(payload) or turn.event.received_at_ms
    turn.record(
        HistoryEntry(
            mid=short or f"out-{turn.event.id}", direction="out", text=text, at=at,
            author="business", waha_id=waha_id,
            status=status_for_ack(payload.get("ack")) or "sent",
        )
    )  # fmt: skip
    if turn.before.state is State.WAITING:
        await turn.leave_line()
    turn.state = turn.state.moved(Trigger.BUSINESS_REPLIED, last_activity_at=turn.now)


async def is_our_send(turn: ConversationTurn, short_id: str, body: str) -> bool:
    session_keys = WahaSessionKeys(turn.conversation.session, turn.config.prefix)
    redis = turn.redis
    sender = turn.tools.sender
    # The echo can overtake WAHA's answer to our sendText: a send under way to this chat with
    # the same text is ours. If its sender died before recording it, the echo records it, so
    # it is not sent a second time (Sender.settle_echo). Looked at even when the id is known
    # as ours: the sender remembers the id first and takes the reply off the outbox second,
    # and may have died in between.
    chats = inflight_chats(turn.conversation.chat_id)
    # The markers and the id in one round trip (one hash tag: the session's).
    pipe = redis.pipeline(transaction=False)
    for chat in chats:
        pipe.get(session_keys.inflight(chat))
    if short_id:
        pipe.exists(session_keys.ours(short_id))
    answers = await pipe.execute()
    waha_id = str(turn.payload.get("id") or "")
    echo_at_ms = message_time_ms(turn.payload)
    for raw in answers[: len(chats)]:
        if raw is None:
            continue
        marker = InflightSend.decode(raw)
        if marker.text != body:
            continue
        if sender is not None and waha_id:
            await sender.settle_echo(
                turn.conversation.token, marker, SentMessage(waha_id), echo_at_ms
            )
        return True
    if short_id and answers[len(chats)]:
        return True
    # A reply dead-lettered with its outcome unknown may be echoed after its marker lapsed;
    # only messages nothing else claimed pay this round trip (those typed on the phone), and
    # not those without text (no such reply is noted: outbox_dead.lua).
    if sender is None or not body:
        return False
    return await sender.settle_late_echo(
        turn.conversation.token, body, SentMessage(waha_id), echo_at_ms
    )
