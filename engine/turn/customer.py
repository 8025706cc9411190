"""A customer's message (`message`): recorded in the history, then answered by the brain, by
the waiting line, or by nobody (the conversation is with a person, or paused)."""

from __future__ import annotations

from dataclasses import replace

from engine.brain import InboundMessage, Turn
from engine.history import HistoryEntry, mid_for, recent
from engine.state import State, Trigger
from engine.turn.frame import ConversationTurn
from engine.waha_client import short_message_id


async def message(turn: ConversationTurn) -> None:
    payload = turn.payload
    if payload.get("fromMe") is True:
        return
    text = str(payload.get("body") or "")
    waha_id = str(payload.get("id") or "")
    if waha_id and await mid_for(turn.redis, turn.history, short_message_id(waha_id)):
        # Already in this conversation's history: handled before (a webhook replayed after
        # the gateway's dedupe window). Recorded once, answered once.
        return
    at = int(payload.get("timestamp") or 0) * 1000 or turn.event.received_at_ms
    kind = "media" if payload.get("hasMedia") else "text"
    turn.record(
        HistoryEntry(
            mid=short_message_id(waha_id) if waha_id else f"in-{turn.event.id}",
            direction="in", text=text, at=at, author="customer", kind=kind,
            waha_id=waha_id, status="received",
        )
    )  # fmt: skip
    turn.seen_due = True
    if not turn.state.phone:
        conversation = turn.conversation
        phone = await turn.tools.resolver.phone(conversation.session, conversation.chat_id)
        if phone:
            turn.state = replace(turn.state, phone=phone)
    turn.state = replace(turn.state, last_activity_at=turn.now, last_customer_at=turn.now)
    current = turn.before.state
    if current in (State.NEW, State.CLOSED, State.BOT):
        await ask_brain(turn, InboundMessage(text=text, waha_id=waha_id, at=at, kind=kind))
    elif current is State.WAITING:
        turn.state = turn.state.moved(Trigger.CUSTOMER_MESSAGE)
        await waiting_message(turn, text)
    else:  # with a person, or paused: recorded for them, the bot keeps quiet
        turn.state = turn.state.moved(Trigger.CUSTOMER_MESSAGE)


async def ask_brain(turn: ConversationTurn, inbound: InboundMessage) -> None:
    past = await recent(turn.redis, turn.history, turn.config.brain_history_turns)
    decision = await turn.tools.brain.decide(
        Turn(conversation=turn.conversation, state=turn.state, history=past, message=inbound)
    )
    reopened = turn.before.state in (State.NEW, State.CLOSED)
    turn.state = turn.state.moved(Trigger.CUSTOMER_MESSAGE).with_collected(decision.collected)
    if reopened:
        turn.state = replace(turn.state, opened_at=turn.now, closed_at=0)
    if decision.step is not None:
        turn.state = replace(turn.state, step=decision.step)
    for text_out in decision.replies:
        turn.reply(text_out)
    if decision.hands_off:
        position, entered = await turn.line.enter(
            turn.conversation.session, turn.conversation.token, turn.now
        )
        turn.reply(await turn.position_text("line_entered", position))
        turn.state = turn.state.moved(
            Trigger.HANDOFF,
            line_entered_at=entered,
            line_position=position,
            line_notice_at=turn.now,
        )
    elif decision.closes:
        turn.state = turn.state.moved(Trigger.CLOSE, closed_at=turn.now)
        turn.reply(turn.texts.render("goodbye"))


async def waiting_message(turn: ConversationTurn, text: str) -> None:
    """A message from a customer in line: *sair* leaves it; anything else may get their place
    again (at most once per notice interval)."""
    if text.strip().casefold() in turn.texts.leave_words:
        await turn.leave_line()
        turn.state = turn.state.moved(Trigger.LEFT_LINE)
        turn.reply(turn.texts.render("line_left"))
        return
    position = await turn.line.position(turn.conversation.session, turn.conversation.token)
    interval_ms = turn.config.notice_interval_seconds * 1000
    if position and turn.now - turn.state.line_notice_at >= interval_ms:
        turn.reply(await turn.position_text("line_still_waiting", position))
        turn.state = replace(turn.state, line_position=position, line_notice_at=turn.now)
