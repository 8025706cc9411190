"""A booking's reminder through the real engine (queue, fenced commit, state, outbox, sender)
with the agent as its brain: scheduled with the booking, moved and cancelled with it, queued
when due by the reminders pass, sent once, and answered by number (the menu) or in words (the
agent). The engine's clock is driven: the tests move it to the due moment and past it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from engine import commands
from engine.agent.bookings import Booking, BookingNotFound, Customer
from engine.agent.reminders import REMINDER_KEY, STEP_REMINDER, reminder_event_id
from engine.state import ConversationState, load_state
from shared.keys import CalendarKeys, engine_keys_for
from tests.engine.agent.fake_groq import completion, tool_call
from tests.engine.agent.support import book, clock, ms  # noqa: F401
from tests.engine.harness import AgentHarness

ANA = "5511987650001@c.us"
BIA = "5511987650002@c.us"
DAY_MS = 24 * 3600 * 1000


def sent(name: str) -> float:
    return REGISTRY.get_sample_value("wsm_reminders_total", {"event": name}) or 0.0


@pytest.fixture
def keys(key_prefix: str) -> CalendarKeys:
    """The calendar's keys (bookings, reminder timers) under the test's prefix."""
    return CalendarKeys(key_prefix)


async def pass_at(
    agent: AgentHarness, at_ms: int, move_clock: Callable[[int], None]
) -> dict[str, int]:
    """The reminders pass at `at_ms`, then everything it queued handled and delivered."""
    move_clock(at_ms)
    done = await agent.service.reminders.run_once(force=True)
    await agent.drain()
    return done


async def reminded(
    agent: AgentHarness, now: datetime, move_clock: Callable[[int], None]
) -> tuple[datetime, str]:
    """Ana's booking two days ahead, and the reminders pass at its due moment (she has the
    reminder): its start and id."""
    start, booking_id = await booked(agent, now)
    await pass_at(agent, ms(start) - DAY_MS, move_clock)
    return start, booking_id


@pytest.fixture
async def answering(
    harness, groq, waha, now: datetime, move_clock: Callable[[int], None]
) -> tuple[AgentHarness, datetime, str]:
    """The model up, and Ana reminded of her booking: the engine, the booking's start and id.
    After the model's and WAHA's stand-ins, which the reminder goes through."""
    agent = harness()
    start, booking_id = await reminded(agent, now, move_clock)
    return agent, start, booking_id


async def booked(agent: AgentHarness, now: datetime) -> tuple[datetime, str]:
    """Ana's booking two days ahead (09:00): its start and id."""
    start = now + timedelta(days=2)
    return start, await book(agent, ANA, start)


async def stored(aredis: Any, keys: CalendarKeys, booking_id: str) -> Booking:
    booking = Booking.from_hash(await aredis.hgetall(keys.booking(booking_id)))
    assert booking is not None
    return booking


async def state_of(agent: AgentHarness, chat: str = ANA) -> ConversationState:
    keys = engine_keys_for("default", chat, 1, agent.settings.key_prefix)
    return await load_state(agent.redis, keys.state)


async def remind(agent: AgentHarness, chat: str, payload: dict[str, Any], event_id: str) -> bool:
    """A reminder command queued as the pass queues it; whether the queue took it."""
    queue = agent.service.coordinator.queue
    return await queue.send("default", chat, commands.REMINDER, payload, event_id=event_id)


async def test_a_booking_two_days_ahead_gets_one_reminder_at_its_lead(
    harness, waha, aredis, key_prefix, keys, now, move_clock
) -> None:
    agent = harness(groq_api_key=None)
    start = now + timedelta(days=2, hours=1)  # Wednesday 10:00
    booking_id = await book(agent, ANA, start)
    due = ms(start) - DAY_MS
    assert await aredis.zscore(keys.reminders, booking_id) == due
    sent_before = sent("sent")

    # A minute before it is due: nothing.
    assert (await pass_at(agent, due - 60_000, move_clock))["queued"] == 0
    assert waha.sent == []
    # Due: the reminder, once.
    assert (await pass_at(agent, due, move_clock))["queued"] == 1
    day = f"{start:%d/%m}"
    assert waha.to(ANA) == [
        f"Olá! Lembrete da *Clínica Sorriso*: *Consulta* em *qua {day} às 10:00*.\n"
        "1. Confirmar\n2. Remarcar\n3. Cancelar\nResponda com o número."
    ]
    assert await aredis.zscore(keys.reminders, booking_id) is None
    # Later passes, and the same command queued again (a pass that died before forgetting the
    # timer): still one.
    assert (await pass_at(agent, due + 3_600_000, move_clock))["queued"] == 0
    again = {"booking_id": booking_id, "start_ms": ms(start), "due": due, "text": "x"}
    assert not await remind(agent, ANA, again, reminder_event_id(booking_id, due))
    await agent.drain()
    assert len(waha.to(ANA)) == 1
    assert sent("sent") == sent_before + 1
    state = await state_of(agent)
    assert state.step == STEP_REMINDER and state.collected[REMINDER_KEY] == booking_id


async def test_a_repeat_past_the_dedupe_window_sends_nothing(
    harness, waha, aredis, key_prefix, now, move_clock
) -> None:
    """The mark committed with the reply refuses the same reminder queued under another id
    (what a repeat looks like once the queue's dedupe marker has expired)."""
    agent = harness(groq_api_key=None)
    start, booking_id = await reminded(agent, now, move_clock)
    assert len(waha.to(ANA)) == 1
    due = ms(start) - DAY_MS
    payload = {"booking_id": booking_id, "start_ms": ms(start), "due": due, "text": "again"}
    assert await remind(agent, ANA, payload, "other-id")
    await agent.drain()
    assert waha.to(ANA)[1:] == []


async def test_a_booking_inside_the_lead_gets_none(
    harness, waha, aredis, keys, now, move_clock
) -> None:
    agent = harness(groq_api_key=None)
    start = now + timedelta(hours=6)
    booking_id = await book(agent, ANA, start)
    assert await aredis.zcard(keys.reminders) == 0
    assert await aredis.hget(keys.booking(booking_id), "reminder_at") == b"0"
    await pass_at(agent, ms(start) - 60_000, move_clock)
    assert waha.sent == []


async def test_reminders_can_be_turned_off(
    harness, waha, aredis, key_prefix, now, move_clock
) -> None:
    agent = harness(groq_api_key=None, reminder_lead_hours=0)
    await book(agent, ANA, now + timedelta(days=2))
    assert await aredis.zcard(CalendarKeys(key_prefix).reminders) == 0


async def test_a_moved_booking_moves_its_reminder(
    harness, waha, aredis, keys, now, move_clock
) -> None:
    agent = harness(groq_api_key=None)
    start = now + timedelta(days=2, hours=1)  # Wednesday 10:00
    booking_id = await book(agent, ANA, start)
    later = now + timedelta(days=3, hours=2)  # Thursday 11:00
    agenda = agent.parts.agenda
    slot = agenda.calendar.slot(agenda.service("consulta"), f"{later:%Y-%m-%dT%H:%M}", agenda.now())
    await agent.parts.store.reschedule(Customer(token=f"default|{ANA}"), booking_id, slot)
    assert await aredis.zscore(keys.reminders, booking_id) == ms(later) - DAY_MS
    # Moved inside the lead: the reminder goes.
    other = await book(agent, BIA, start)
    soon = now + timedelta(hours=4)  # 13:00
    slot = agenda.calendar.slot(agenda.service("consulta"), f"{soon:%Y-%m-%dT%H:%M}", agenda.now())
    await agent.parts.store.reschedule(Customer(token=f"default|{BIA}"), other, slot)
    assert await aredis.zscore(keys.reminders, other) is None

    # The old due moment passes quietly.
    assert (await pass_at(agent, ms(start) - DAY_MS, move_clock))["queued"] == 0
    assert waha.sent == []
    await pass_at(agent, ms(later) - DAY_MS, move_clock)
    [reminder] = waha.to(ANA)
    assert f"qui {later:%d/%m} às 11:00" in reminder


async def test_a_cancelled_booking_gets_no_reminder(
    harness, waha, aredis, keys, now, move_clock
) -> None:
    agent = harness(groq_api_key=None)
    start, booking_id = await booked(agent, now)
    await agent.parts.store.cancel(Customer(token=f"default|{ANA}"), booking_id)
    assert await aredis.zcard(keys.reminders) == 0
    await pass_at(agent, ms(start) - DAY_MS, move_clock)
    assert waha.sent == []


async def test_a_booking_cancelled_after_its_reminder_was_queued_gets_none(
    harness, waha, aredis, key_prefix, now, move_clock
) -> None:
    agent = harness(groq_api_key=None)
    start, booking_id = await booked(agent, now)
    move_clock(ms(start) - DAY_MS)
    assert (await agent.service.reminders.run_once(force=True))["queued"] == 1
    await agent.parts.store.cancel(Customer(token=f"default|{ANA}"), booking_id)
    await agent.drain()
    assert waha.sent == []
    assert REMINDER_KEY not in (await state_of(agent)).collected


async def test_reminders_are_paced_per_session(
    harness, waha, aredis, keys, now, move_clock
) -> None:
    agent = harness(groq_api_key=None, reminder_pace=1)
    start = now + timedelta(days=2)
    first = await book(agent, ANA, start)
    second = await book(agent, BIA, start + timedelta(hours=1))
    move_clock(ms(start + timedelta(hours=1)) - DAY_MS)
    done = await agent.service.reminders.run_once(force=True)
    assert done["queued"] == 1 and done["paced"] == 1
    await agent.drain()
    assert len(waha.sent) == 1
    # The other one waits for its turn in the session's pace, still due.
    assert await aredis.zscore(keys.reminders, second) is not None
    assert await aredis.zscore(keys.reminders, first) is None


async def test_answering_1_confirms(answering, groq, waha, aredis, keys) -> None:
    agent, start, booking_id = answering  # the model is up: a number still goes to the menu
    confirmed = sent("confirmed")
    await agent.say(ANA, "1")
    assert waha.to(ANA)[-1] == (
        f"Obrigado! ✅ Horário de *Consulta* confirmado para *qua {start:%d/%m} às 09:00*. Até lá!"
    )
    booking = await stored(aredis, keys, booking_id)
    assert booking.confirmed_at > 0 and booking.status == "booked"
    assert sent("confirmed") == confirmed + 1
    assert await aredis.zcard(keys.reminders_awaiting) == 0
    assert groq.requests == []


async def test_answering_2_starts_the_reschedule(
    answering, groq, waha, aredis, keys, now, move_clock
) -> None:
    agent, start, booking_id = answering
    move_clock(ms(start) - DAY_MS + 10 * 60_000)  # Tuesday 09:10: the customer answers
    rescheduled = sent("rescheduled")
    await agent.say(ANA, "2")
    offer = waha.to(ANA)[-1].splitlines()
    day = f"{now + timedelta(days=1):%d/%m}"
    assert offer[:2] == ["Horários livres para *Consulta*:", f"1. ter {day} às 10:30"]
    await agent.say(ANA, "1")
    assert waha.to(ANA)[-1] == (
        f"Confirma mudar *Consulta* de qua {start:%d/%m} às 09:00 para *ter {day} às 10:30*?"
        "\n1. Sim\n2. Não"
    )
    assert (await stored(aredis, keys, booking_id)).start_ms == ms(start)  # asked, not moved
    await agent.say(ANA, "1")
    assert (
        waha.to(ANA)[-2] == f"Pronto! ✅ Horário de *Consulta* remarcado para *ter {day} às 10:30*."
    )
    moved = await stored(aredis, keys, booking_id)
    assert moved.start == f"{now + timedelta(days=1):%Y-%m-%d}T10:30"
    assert sent("rescheduled") == rescheduled + 1
    # Moved inside the lead: no second reminder.
    assert await aredis.zcard(keys.reminders) == 0
    assert groq.requests == []


async def test_answering_3_cancels_only_after_confirmation(
    answering, groq, waha, aredis, keys
) -> None:
    agent, start, booking_id = answering
    cancelled = sent("cancelled")
    when = f"qua {start:%d/%m} às 09:00"
    await agent.say(ANA, "3")
    assert waha.to(ANA)[-1] == (
        f"Confirma o cancelamento de *Consulta* em *{when}*?\n1. Sim\n2. Não"
    )
    assert (await aredis.hget(keys.booking(booking_id), "status")) == b"booked"
    await agent.say(ANA, "2")  # no
    assert waha.to(ANA)[-2] == "Tudo bem, não alterei nada."
    assert (await aredis.hget(keys.booking(booking_id), "status")) == b"booked"
    assert sent("cancelled") == cancelled

    assert await aredis.zcard(keys.reminders_awaiting) == 1  # still unanswered
    assert groq.requests == []


async def test_a_first_answer_after_the_conversation_closed_is_the_reminders(
    harness, waha, aredis, key_prefix, keys, now, move_clock
) -> None:
    """The customer was chatting when the reminder came; the conversation closed for
    inactivity before they answered "3": still the cancel of the reminded booking."""
    agent = harness(groq_api_key=None)
    start, booking_id = await booked(agent, now)
    await agent.say(ANA, "oi")
    await pass_at(agent, ms(start) - DAY_MS, move_clock)
    assert waha.to(ANA)[-1].startswith("Olá! Lembrete da *Clínica Sorriso*")
    await agent.service.timers_once()
    await agent.drain()
    state = await state_of(agent)
    assert state.state.value == "closed" and state.step == ""
    cancelled = sent("cancelled")
    await agent.say(ANA, "3")
    when = f"qua {start:%d/%m} às 09:00"
    assert waha.to(ANA)[-1] == (
        f"Confirma o cancelamento de *Consulta* em *{when}*?\n1. Sim\n2. Não"
    )
    await agent.say(ANA, "sim")
    assert waha.to(ANA)[-2] == f"Pronto: o horário de *Consulta* em {when} foi cancelado."
    assert (await aredis.hget(keys.booking(booking_id), "status")) == b"cancelled"
    assert sent("cancelled") == cancelled + 1


async def test_answering_in_words_goes_to_the_agent(
    answering, groq, waha, aredis, keys, move_clock
) -> None:
    agent, start, booking_id = answering
    [reminder] = waha.to(ANA)

    def policy(request: dict[str, Any]) -> dict[str, Any]:
        if request["messages"][-1]["role"] == "tool":
            return completion("Confirmado, até quarta! 😊")
        return completion(None, [tool_call("confirm_appointment", {"booking_id": booking_id})])

    groq.policy = policy
    await agent.say(ANA, "pode confirmar, estarei lá")
    assert waha.to(ANA)[-1] == "Confirmado, até quarta! 😊"
    # The model saw the reminder it answers, in the conversation's history.
    assert reminder.splitlines()[0] in groq.sent_text
    # ...and the system's facts name the reminded booking (context.state_summary).
    assert f"was reminded of booking_id {booking_id}" in groq.sent_text
    assert (await stored(aredis, keys, booking_id)).confirmed_at > 0
    # Answered: the reminder is behind her. Once the conversation has closed, a "3" is no
    # longer its cancel (the agent answers it as any first message).
    assert (await state_of(agent)).collected.get(REMINDER_KEY, "") == ""
    move_clock(ms(start) - DAY_MS // 2)  # half a day later, still before the booking
    await agent.service.timers_once()
    await agent.drain()
    assert (await state_of(agent)).state.value == "closed"
    groq.policy = lambda request: completion("Olá de novo! Em que posso ajudar?")
    await agent.say(ANA, "3")
    assert waha.to(ANA)[-1] == "Olá de novo! Em que posso ajudar?"
    assert "Confirma o cancelamento" not in "".join(waha.to(ANA))


@pytest.mark.parametrize("answer", ["3️⃣", "três"])
async def test_answering_3_as_an_emoji_or_a_word(answering, groq, waha, answer) -> None:
    agent, start, _ = answering
    await agent.say(ANA, answer)
    when = f"qua {start:%d/%m} às 09:00"
    assert waha.to(ANA)[-1] == (
        f"Confirma o cancelamento de *Consulta* em *{when}*?\n1. Sim\n2. Não"
    )
    assert groq.requests == []


async def test_someone_elses_booking_cannot_be_confirmed(harness, aredis, key_prefix, now) -> None:
    agent = harness(groq_api_key=None)
    booking_id = await book(agent, ANA, now + timedelta(days=2))
    with pytest.raises(BookingNotFound):
        await agent.parts.store.confirm(Customer(token=f"default|{BIA}"), booking_id)
    assert await aredis.hget(CalendarKeys(key_prefix).booking(booking_id), "confirmed_at") is None


async def test_an_unanswered_reminder_is_counted_once_the_booking_starts(
    harness, waha, aredis, keys, now, move_clock
) -> None:
    agent = harness(groq_api_key=None)
    start, _ = await reminded(agent, now, move_clock)
    assert await aredis.zcard(keys.reminders_awaiting) == 1
    unanswered = sent("unanswered")
    await pass_at(agent, ms(start) - 1, move_clock)
    assert sent("unanswered") == unanswered
    await pass_at(agent, ms(start) + 1, move_clock)
    assert sent("unanswered") == unanswered + 1
    assert await aredis.zcard(keys.reminders_awaiting) == 0


async def test_a_timer_without_its_booking_is_dropped_unsent(
    harness, waha, aredis, keys, now, move_clock
) -> None:
    agent = harness(groq_api_key=None)
    start, booking_id = await booked(agent, now)
    assert await agent.parts.store.erase_customer(f"default|{ANA}") == 1
    assert await aredis.zcard(keys.reminders) == 0  # the erase takes the timer with it
    await aredis.zadd(keys.reminders, {booking_id: ms(start) - DAY_MS})  # left by a crash
    done = await pass_at(agent, ms(start) - DAY_MS, move_clock)
    assert done["stale"] == 1 and done["queued"] == 0
    assert await aredis.zcard(keys.reminders) == 0
    assert waha.sent == []


@pytest.mark.parametrize(
    "payload",
    [
        {"booking_id": "", "start_ms": 1, "due": 1, "text": "x"},
        {"booking_id": "bk1", "start_ms": "soon", "due": 1, "text": "x"},
        {"booking_id": "bk1", "start_ms": 1, "due": 1, "text": ""},
    ],
)
async def test_a_malformed_reminder_command_changes_nothing(
    harness, waha, aredis, key_prefix, payload
) -> None:
    agent = harness(groq_api_key=None)
    assert await remind(agent, ANA, payload, "bad")
    await agent.drain()
    assert waha.sent == []
    assert await aredis.exists(engine_keys_for("default", ANA, 1, key_prefix).state) == 0


async def test_someone_elses_reminder_is_not_sent(
    harness, waha, aredis, key_prefix, now, move_clock
) -> None:
    """A command naming another customer's booking (it cannot come from the pass, which
    queues to the booking's own conversation) sends nothing and stores nothing."""
    agent = harness(groq_api_key=None)
    start, booking_id = await booked(agent, now)
    payload = {"booking_id": booking_id, "start_ms": ms(start), "due": 1, "text": "lembrete"}
    assert await remind(agent, BIA, payload, "x")
    await agent.drain()
    assert waha.sent == []
    assert await aredis.exists(engine_keys_for("default", BIA, 1, key_prefix).state) == 0
