"""A booking's reminder is due (`wsm.reminder`, queued by the reminders pass,
engine/agent/reminders.py): send it through the conversation's outbox, once.

The command runs under the conversation's lease like a customer's message, and its reply is
committed with its ack (fenced), so a worker killed at any point sends it once: before the
commit nothing is written and the command is handled again; after it, the outbox's sender owns
the reply. The booking is read again here, not trusted from the payload: a booking cancelled or
moved after the command was queued gets no reminder from it (a moved one has its own). The
reminder's mark, committed in the state with the reply, refuses a repeat that the queue's dedupe
window no longer catches."""

from __future__ import annotations

from dataclasses import replace

from engine.agent.bookings import Booking
from engine.agent.metrics import REMINDERS
from engine.agent.reminders import (
    REMINDED_KEEP,
    REMINDED_KEY,
    REMINDER_KEY,
    STEP_REMINDER,
    reminder_mark,
)
from engine.state import State
from engine.turn.frame import ConversationTurn
from shared.keys import CalendarKeys

# States whose next customer message goes to the bot: there the answer is the reminder's.
_BOT_STATES = (State.NEW, State.CLOSED, State.BOT)


async def reminder(turn: ConversationTurn) -> None:
    payload = turn.payload
    booking_id = str(payload.get("booking_id") or "")
    text = str(payload.get("text") or "")
    try:
        start_ms, due = int(payload.get("start_ms") or 0), int(payload.get("due") or 0)
    except (TypeError, ValueError):
        return
    if not booking_id or not text or not start_ms:
        return
    mark = reminder_mark(booking_id, due)
    sent = [m for m in turn.state.collected.get(REMINDED_KEY, "").split(",") if m]
    if mark in sent:
        return  # committed before: a repeat
    calendar = CalendarKeys(turn.config.prefix)
    booking = Booking.from_hash(await turn.redis.hgetall(calendar.booking(booking_id)))
    if (
        booking is None
        or booking.customer != turn.conversation.token
        or booking.status != "booked"
        or booking.start_ms != start_ms
        or start_ms <= turn.now
    ):
        return  # cancelled, moved, or over since it was queued
    turn.reply(text)
    turn.state = turn.state.with_collected(
        {REMINDER_KEY: booking_id, REMINDED_KEY: ",".join([*sent, mark][-REMINDED_KEEP:])}
    )
    if turn.state.state in _BOT_STATES:
        # Its next message answers the reminder (a person or the line keep theirs otherwise).
        turn.state = replace(turn.state, step=STEP_REMINDER)
    awaiting, redis = calendar.reminders_awaiting, turn.redis

    async def sent_now() -> None:
        # After the commit: only a reminder really committed waits for its answer.
        if await redis.zadd(awaiting, {booking_id: start_ms}, nx=True):
            REMINDERS.labels("sent").inc()

    turn.after.append(sent_now)
