"""A customer's message (`message`): recorded in the history, then answered by the brain, by
the waiting line, or by nobody (the conversation is with a person, or paused)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from engine.agent.calendar import Team
from engine.brain import Decision, InboundMessage, Turn, reads_history
from engine.history import HistoryEntry, mid_field, mid_from, recent, recent_from
from engine.identity import ChatKind
from engine.media.ingest import NOT_STORED, MediaItem, item_of
from engine.media.kinds import describe, is_notice
from engine.media.transcribe import TRANSCRIPT_MARK
from engine.menu_brain import MenuBrain, goes_back, option_number, unheard_audio, words
from engine.state import State, Trigger
from engine.turn import freed_slot
from engine.turn.frame import ConversationTurn
from shared.events import message_time_ms, short_message_id
from shared.text import fold


async def message(turn: ConversationTurn) -> None:
    payload = turn.payload
    if payload.get("fromMe") is True:
        return
    text = str(payload.get("body") or "")
    waha_id = str(payload.get("id") or "")
    if waha_id and turn.prefetched.get("mid"):
        # Already in this conversation's history: handled before (a webhook replayed after
        # the gateway's dedupe window). Recorded once, answered once.
        return
    at = message_time_ms(payload) or turn.event.received_at_ms
    item = await media_item(turn)
    kind = item.kind
    if kind != "text":
        # WAHA's body of a media message is its caption (of a WEBJS location, a thumbnail):
        # the history and the brain get the caption and the media fields instead.
        text = item.caption
    elif not text.strip() and is_notice(payload):
        # Nothing the customer wrote or sent: WAHA tells some events as a `message` without
        # words or media (a call, WhatsApp's own notices, an edit or a deletion on older
        # engines). Not a turn: nothing recorded, no reply (a call used to be answered "Não
        # entendi…", or greeted). Wordless content we cannot read (an order, a poll) is still
        # the customer's turn: answered as any message we do not understand.
        return
    turn.record(
        HistoryEntry(
            mid=short_message_id(waha_id) if waha_id else f"in-{turn.event.id}",
            direction="in", text=text, at=at, author="customer", kind=kind,
            waha_id=waha_id, status="received", **media_fields(item),
        )
    )  # fmt: skip
    if turn.conversation.kind is ChatKind.BROADCAST:
        # Only with WSM_IGNORE_BROADCASTS=false: kept in the history, never answered. Whatever
        # went back (a reply, even a read receipt) would go to the business's status, to a
        # broadcast list or to a channel: in public, not to one customer.
        turn.state = replace(turn.state, last_activity_at=turn.now)
        return
    turn.seen_due = True
    if not turn.state.phone:
        conversation = turn.conversation
        phone = await turn.tools.resolver.phone(conversation.session, conversation.chat_id)
        if phone:
            turn.state = replace(turn.state, phone=phone)
    turn.state = replace(turn.state, last_activity_at=turn.now, last_customer_at=turn.now)
    current = turn.before.state
    inbound = inbound_of(item, text=text, waha_id=waha_id, at=at)
    if current is State.BOT and turn.state.step == TEAM_STEP:
        await team_answer(turn, inbound)
    elif current in (State.NEW, State.CLOSED, State.BOT):
        await ask_brain(turn, inbound)
    elif current is State.WAITING:
        turn.state = turn.state.moved(Trigger.CUSTOMER_MESSAGE)
        # A voice note's words count as typed ones: *sair* said leaves the line.
        await waiting_message(turn, words(inbound))
    else:  # with a person, or paused: recorded for them, the bot keeps quiet
        turn.state = turn.state.moved(Trigger.CUSTOMER_MESSAGE)


async def media_item(turn: ConversationTurn) -> MediaItem:
    """The message's kind and media: fetched, stored and transcribed when the engine keeps
    media, within the turn's deadline (never raises: a file that cannot be had in time is
    recorded with a reason)."""
    if turn.tools.media is not None:
        return await turn.tools.media.ingest(
            turn.conversation, turn.payload, deadline=turn.deadline
        )
    return item_of(describe(turn.payload), reason=NOT_STORED)


def media_fields(item: MediaItem) -> dict[str, Any]:
    """The history entry's media fields (none for a text message)."""
    if item.kind == "text":
        return {}
    return {
        "media": item.media.public() if item.media is not None else None,
        "media_reason": item.reason,
        "caption": item.caption or None,
        "transcript": item.transcript,
        "location": item.location.public() if item.location is not None else None,
        "contact": item.contact.public() if item.contact is not None else None,
    }


def inbound_of(item: MediaItem, *, text: str, waha_id: str, at: int) -> InboundMessage:
    """The message as the brain reads it: a transcribed voice note or audio as
    "[áudio] <transcript>", a captioned file as its caption (engine/brain.py)."""
    if item.transcript:
        text = f"{TRANSCRIPT_MARK} {item.transcript}"
    return InboundMessage(
        text=text,
        waha_id=waha_id,
        at=at,
        kind=item.kind,
        caption=item.caption,
        transcript=item.transcript,
        media_available=item.available,
    )


def prefetch(turn: ConversationTurn, pipe: Any) -> Callable[[Sequence[Any]], None]:
    """Read with the state (one round trip): whether this message is in the history already,
    and the newest entries for the brain (read even when the brain is not asked: cheaper than
    a round trip of their own; none for a brain that does not read them)."""
    waha_id = str(turn.payload.get("id") or "")
    if waha_id:
        pipe.hget(turn.history.meta, mid_field(short_message_id(waha_id)))
    count = history_turns(turn)
    if count > 0:
        pipe.xrevrange(turn.history.stream, count=count)

    def take(answers: Sequence[Any]) -> None:
        rest = list(answers)
        if waha_id:
            turn.prefetched["mid"] = mid_from(rest.pop(0))
        if count > 0:
            turn.prefetched["recent"] = rest.pop(0)

    return take


def history_turns(turn: ConversationTurn) -> int:
    """How many recent entries the brain is given: none for a brain that does not read them."""
    if not reads_history(turn.tools.brain, turn.conversation):
        return 0
    return turn.config.brain_history_turns


async def ask_brain(turn: ConversationTurn, inbound: InboundMessage) -> None:
    if "recent" in turn.prefetched:
        past = await recent_from(turn.redis, turn.history, turn.prefetched["recent"])
    else:
        past = await recent(turn.redis, turn.history, history_turns(turn))
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
        await hand_off(turn, decision)
    elif decision.closes:
        turn.state = turn.state.moved(Trigger.CLOSE, closed_at=turn.now)
        turn.reply(turn.texts.render("goodbye"))


async def waiting_message(turn: ConversationTurn, text: str) -> None:
    """A message from a customer in line: *sair* leaves it; "1" answers a freed slot offered
    to them; anything else may get their place again (at most once per notice interval)."""
    if turn.texts.says_leave(text):
        await turn.leave_line()
        turn.state = turn.state.moved(Trigger.LEFT_LINE)
        turn.reply(turn.texts.render("line_left"))
        return
    if await freed_slot.answer(turn, text):
        return  # "1" to a cancelled slot offered to them (engine/turn/freed_slot.py)
    found = await turn.line.locate(turn.conversation.session, turn.conversation.token)
    if found is None:
        return
    team, position = found
    hours = turn.line.hours
    if hours is not None and not hours.is_open(turn.now):
        # Closed: the closed notice once per closed spell (not if told since it closed), and
        # never a minutes estimate; their place is told again at the opening.
        if turn.state.line_notice_at < hours.last_closing(turn.now):
            turn.reply(closed_text(turn, team))
            turn.state = replace(turn.state, line_notice_at=turn.now)
        return
    interval_ms = turn.config.notice_interval_seconds * 1000
    if turn.now - turn.state.line_notice_at >= interval_ms:
        turn.reply(await line_text(turn, "line_still_waiting", position, team))
        turn.state = replace(turn.state, line_position=position, line_notice_at=turn.now)


# --- the line's hours and teams (docs/conversations.md, "The business file") -------------------

# The bot asked which team (several teams): the next message answers it.
TEAM_STEP = "line_team"
# The AI agent's handoff names its team here (engine/agent/tools.py).
HANDOFF_TEAM = "handoff_team"
# The brain's step to go back to once the team is chosen.
TEAM_RETURN = "line_team_return"


def leave_team_question(turn: ConversationTurn) -> None:
    """A person took over while the bot's "which team?" was open (the business's phone, then a
    handback): the question is moot, and the customer's next message must not be read as its
    answer. Back to the step the brain had."""
    if turn.state.step == TEAM_STEP:
        turn.state = replace(turn.state, step=turn.state.collected.get(TEAM_RETURN, ""))


async def line_text(turn: ConversationTurn, key: str, position: int, team: str) -> str:
    """A place in line with its estimate. With nobody of the line's team online, the
    `<key>_nobody` text, which says so instead of counting minutes; when the estimate runs
    past today's closing, the `<key>_closing` text, which names the closing and the reopening
    instead of minutes that would count the closed hours."""
    values = {
        "position": position,
        "ordinal": turn.texts.ordinal(position),
        "leave_word": turn.texts.templates["leave_word"],
    }
    if await turn.line.online_count(team) == 0:
        return turn.texts.render(f"{key}_nobody", **values)
    session = turn.conversation.session
    minutes = await turn.line.estimate_minutes(session, position, team)
    hours = turn.line.hours
    if hours is not None:
        closes = hours.closes_at(turn.now)
        # Open again at that instant (an interval to midnight, the next from midnight): no
        # closing to tell of.
        reopens = hours.next_opening(closes) if closes and not hours.is_open(closes) else None
        if reopens is not None and turn.now + minutes * 60_000 > closes:
            return turn.texts.render(
                f"{key}_closing",
                closes=hours.clock_label(closes),
                opens=hours.opening_label(turn.now, reopens, turn.texts.language),
                **values,
            )
    return turn.texts.render(key, minutes=minutes, **values)


def closed_text(turn: ConversationTurn, team: str) -> str:
    """Closed: when it opens ("amanhã às 08:00"), and that they keep their place."""
    hours = turn.line.hours
    assert hours is not None
    names = {t.id: t.name for t in turn.line.teams}
    leave_word = turn.texts.templates["leave_word"]
    opens = hours.next_opening(turn.now)
    if opens is None:
        return turn.texts.render(
            "line_closed_no_opening", team=names.get(team, ""), leave_word=leave_word
        )
    label = hours.opening_label(turn.now, opens, turn.texts.language)
    text = turn.texts.render(
        "line_closed", opens=label, team=names.get(team, ""), leave_word=leave_word
    )
    if not isinstance(turn.tools.brain, MenuBrain):
        # The bot books (the AI agent, or its scheduling menu): offer that instead of waiting;
        # leaving the line brings the customer back to it. The engine's plain menu cannot.
        text += "\n" + turn.texts.render("line_closed_booking", leave_word=leave_word)
    return text


def _team(teams: tuple[Team, ...], ref: str) -> Team | None:
    ref = ref.strip()
    number = option_number(ref)
    if number is not None and 1 <= number <= len(teams):
        return teams[number - 1]
    wanted = fold(ref)
    return next((t for t in teams if wanted in (fold(t.id), fold(t.name))), None) if ref else None


def _ask_team(turn: ConversationTurn) -> None:
    options = "\n".join(
        turn.texts.render("menu_option", number=n, label=t.name)
        for n, t in enumerate(turn.line.teams, start=1)
    )
    leave_word = turn.texts.templates["leave_word"]
    turn.reply(turn.texts.render("team_question", teams=options, leave_word=leave_word))


async def hand_off(turn: ConversationTurn, decision: Decision) -> None:
    """The brain asks for a person: with several teams and none named, ask which one first."""
    teams = turn.line.teams
    team = _team(teams, decision.collected.get(HANDOFF_TEAM, ""))
    collected = {k: v for k, v in turn.state.collected.items() if k != HANDOFF_TEAM}
    turn.state = replace(turn.state, collected=collected)
    if len(teams) > 1 and team is None:
        turn.state = replace(turn.state, step=TEAM_STEP).with_collected(
            {TEAM_RETURN: decision.step or turn.before.step}
        )
        _ask_team(turn)
        return
    await enter_line(turn, team.id if team is not None and len(teams) > 1 else "")


async def team_answer(turn: ConversationTurn, inbound: InboundMessage) -> None:
    """The answer to "which team?": a number or a name, typed or said in a voice note, enters
    that team's line; the leave word gives up; a voice note nobody could transcribe is told
    so; anything else asks again."""
    turn.state = turn.state.moved(Trigger.CUSTOMER_MESSAGE)
    back = turn.state.collected.get(TEAM_RETURN, "")
    if unheard_audio(inbound):
        turn.reply(turn.texts.render("team_audio_unsupported"))
        _ask_team(turn)
        return
    text = words(inbound)
    # The leave word gives up, and so do the menus' own ways back ("menu", "voltar").
    if turn.texts.says_leave(text) or goes_back(text):
        turn.state = replace(turn.state, step=back)
        turn.reply(turn.texts.render("team_left"))  # not "you left the line": never in one
        return
    team = _team(turn.line.teams, text)
    if team is None:
        turn.reply(turn.texts.render("invalid_option"))
        _ask_team(turn)
        return
    turn.state = replace(turn.state, step=back)
    await enter_line(turn, team.id)


async def enter_line(turn: ConversationTurn, team: str) -> None:
    """Into the line (`team`'s when given): told their place and estimate, or, outside opening
    hours, that it is closed and when it opens (once; no minutes)."""
    line = turn.line
    position, entered = await line.enter(
        turn.conversation.session, turn.conversation.token, turn.now, team
    )
    if line.is_open(turn.now):
        turn.reply(await line_text(turn, "line_entered", position, team))
    else:
        # The record of this session's business: the default business's stays as its own
        # hours say (announce_opening compares each record with its own business's hours).
        await line.mark_hours(False, line.hours_owner(turn.conversation.session))
        turn.reply(closed_text(turn, team))
    turn.state = turn.state.moved(
        Trigger.HANDOFF,
        line_entered_at=entered,
        line_position=position,
        line_notice_at=turn.now,
    )
