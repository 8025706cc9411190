"""A cancelled slot of today offered to the customers in the waiting line, through the real
engine (queue, fenced commit, state, outbox, sender), the real booking scripts and the real
waiting line; the option off, on, and every refusal; one session's backlog of slots (held
back by its pace) not holding back another session's offers. The clock is driven as in
test_reminders.py, by the same helpers (tests/engine/agent/support.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from engine import commands
from engine.agent import proactive
from engine.agent.bookings import Customer, booking_id_for
from engine.agent.freed_slots import OFFER_KEY, OFFERS_MAX, FreedSlots, freed_event_id
from engine.state import State, load_state
from shared.keys import CalendarKeys, EngineConversationKeys, engine_keys_for
from tests.engine.agent.conftest import CALENDAR
from tests.engine.agent.support import book, clock, ms  # noqa: F401
from tests.engine.harness import AgentHarness
from tests.support.waha import text_message

ANA = "5511987650001@c.us"  # the customer who cancels
LINE = [f"55119876501{n:02d}@c.us" for n in range(1, 6)]  # waiting, in this order
OTHER = "5521999999999@c.us"  # waiting in the line of the session `other`
OFFER = "Vagou um horário hoje na *Clínica Sorriso*: *Consulta* em *seg {day} às 13:00*."


def counted(event: str) -> float:
    return REGISTRY.get_sample_value("wsm_freed_slot_offers_total", {"event": event}) or 0.0


def turn_on(calendar_file: Path) -> None:
    """The business turns the option on in its business file."""
    document = {**CALENDAR, "offer_freed_slots": True}
    calendar_file.write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")


def freed_pass(agent: AgentHarness) -> FreedSlots:
    """The worker process's freed-slots pass (its queue, its waiting line), the same one from
    pass to pass, as the process runs it."""
    return agent.service.freed_slots


async def wait_in_line(agent: AgentHarness, chats: list[str], session: str = "default") -> None:
    for chat in chats:
        for words in ("oi", "Bia", "quero falar com um atendente"):  # the menu asks a name first
            assert await agent.webhook(text_message(chat, words, session=session))
            await agent.drain()
        assert await state_of(agent, chat, session) is State.WAITING


@pytest.fixture
def in_line(harness, calendar_file: Path) -> Callable[..., Awaitable[AgentHarness]]:
    """The engine with `chats` waiting in line, in that order, the business having turned the
    option on (`offers=False`: as it ships, off)."""

    async def make(chats: list[str], *, offers: bool = True, pace: int = 0) -> AgentHarness:
        if offers:
            turn_on(calendar_file)
        agent = harness(groq_api_key=None, reminder_pace=pace)
        await wait_in_line(agent, chats)
        return agent

    return make


def keys_of(agent: AgentHarness, chat: str, session: str = "default") -> EngineConversationKeys:
    return engine_keys_for(session, chat, 1, agent.settings.key_prefix)


async def state_of(agent: AgentHarness, chat: str, session: str = "default") -> State:
    return (await load_state(agent.redis, keys_of(agent, chat, session).state)).state


async def collected(agent: AgentHarness, chat: str) -> dict[str, str]:
    return dict((await load_state(agent.redis, keys_of(agent, chat).state)).collected)


async def cancelled(agent: AgentHarness, chat: str, start: datetime) -> str:
    """`chat` books at `start` and cancels it (the booking store's cancel, as the menu and the
    agent's tools reach it)."""
    booking_id = await book(agent, chat, start)
    await agent.parts.store.cancel(Customer(token=f"default|{chat}"), booking_id)
    return booking_id


async def cancel_today(agent: AgentHarness, now: datetime) -> str:
    """ANA books today 13:00 and cancels it."""
    return await cancelled(agent, ANA, now + timedelta(hours=4))


async def offer_round(agent: AgentHarness) -> dict[str, int]:
    done = await freed_pass(agent).run_once(force=True)
    await agent.drain()
    return done


async def offer(
    agent: AgentHarness, chat: str, payload: dict[str, Any], event_id: str, session: str = "default"
) -> bool:
    """An offer command queued as the pass queues it; whether the queue took it (not a repeat)."""
    queue = agent.service.coordinator.queue
    return await queue.send(session, chat, commands.FREED_SLOT, payload, event_id=event_id)


@pytest.mark.parametrize(
    ("offers", "days"), [(False, 0), (True, 1)], ids=["off-by-default", "another-day"]
)
async def test_nothing_is_offered_when_off_or_for_a_slot_on_another_day(
    in_line, waha, aredis, key_prefix, now, offers, days
) -> None:
    agent = await in_line(LINE[:2], offers=offers)
    before = list(waha.sent)
    await cancelled(agent, ANA, now + timedelta(days=days, hours=4))
    assert await aredis.zcard(CalendarKeys(key_prefix).freed) == 0
    assert (await offer_round(agent))["queued"] == 0
    assert waha.sent == before


async def test_the_first_in_line_get_one_offer_each(in_line, waha, aredis, key_prefix, now) -> None:
    agent = await in_line(LINE[:4])
    sent_before = counted("sent")
    booking_id = await cancel_today(agent, now)
    keys = CalendarKeys(key_prefix)
    assert await aredis.zscore(keys.freed, booking_id) is not None

    assert (await offer_round(agent))["queued"] == OFFERS_MAX == 3
    offer_text = OFFER.format(day=f"{now:%d/%m}")
    for chat in LINE[:3]:
        assert waha.to(chat)[-1].startswith(offer_text)
        assert OFFER_KEY in await collected(agent, chat)
        assert await state_of(agent, chat) is State.WAITING  # still in line
    assert not any(text.startswith("Vagou") for text in waha.to(LINE[3]))
    assert await aredis.zcard(keys.freed) == 0
    assert counted("sent") == sent_before + 3

    # The first leaves the line: the fourth is now third, but the slot was offered already.
    await agent.say(LINE[0], "sair")
    total = len(waha.sent)
    # The pass again, a repeated cancel (a redelivered message), the same commands queued
    # again (dedupe) and under other ids (past the dedupe window): nothing more.
    await agent.parts.store.cancel(Customer(token=f"default|{ANA}"), booking_id)
    assert (await offer_round(agent))["queued"] == 0
    for n, chat in enumerate(LINE[:3]):
        event_id = freed_event_id(booking_id, f"default|{chat}")
        payload = {"booking_id": booking_id, "start_ms": ms(now) + 4 * 3_600_000, "text": "x"}
        assert not await offer(agent, chat, payload, event_id)
        assert await offer(agent, chat, payload, f"o{n}")
    await agent.drain()
    assert len(waha.sent) == total
    assert counted("sent") == sent_before + 3


async def test_two_accept_one_books_the_other_is_told_it_was_taken(
    in_line, waha, aredis, key_prefix, now
) -> None:
    first, second = LINE[:2]
    agent = await in_line([first, second])
    await cancel_today(agent, now)
    await offer_round(agent)
    taken, lost = counted("taken"), counted("lost")

    await agent.say(first, "1")
    when = f"seg {now:%d/%m} às 13:00"
    assert waha.to(first)[-1].startswith(f"Pronto! ✅ Horário de *Consulta* marcado para *{when}*.")
    assert await state_of(agent, first) is State.BOT  # booked: out of the line
    line = agent.service.coordinator.line
    assert await line.position("default", f"default|{first}") is None

    await agent.say(second, "1")
    assert waha.to(second)[-1] == (
        "Que pena: esse horário não está mais disponível. 😕 Você continua na fila."
    )
    assert await state_of(agent, second) is State.WAITING
    assert await line.position("default", f"default|{second}") == 1
    assert OFFER_KEY not in {k for k, v in (await collected(agent, second)).items() if v}

    keys = CalendarKeys(key_prefix)
    winner = await agent.parts.store.upcoming(Customer(token=f"default|{first}"))
    assert [b.start for b in winner] == [f"{now:%Y-%m-%d}T13:00"]
    # Nothing stored for the one who lost: no booking, no index.
    assert await aredis.exists(keys.customer(f"default|{second}")) == 0
    assert await aredis.exists(keys.customer_all(f"default|{second}")) == 0
    assert await aredis.hget(keys.day(f"{now:%Y-%m-%d}"), "13:00") == winner[0].id.encode()
    assert (counted("taken"), counted("lost")) == (taken + 1, lost + 1)


async def test_a_slot_taken_again_before_the_pass_is_not_offered(
    in_line, waha, aredis, key_prefix, now
) -> None:
    agent = await in_line(LINE[:1])
    before = list(waha.sent)
    await cancel_today(agent, now)
    await book(agent, LINE[4], now + timedelta(hours=4))  # someone booked it meanwhile
    done = await offer_round(agent)
    assert (done["queued"], done["dropped"]) == (0, 1)
    assert waha.sent == before
    assert await aredis.zcard(CalendarKeys(key_prefix).freed) == 0


async def test_offers_share_the_reminders_pace(in_line, waha, aredis, key_prefix, now) -> None:
    agent = await in_line(LINE[:2], pace=1)
    booking_id = await cancel_today(agent, now)
    done = await offer_round(agent)
    assert (done["queued"], done["paced"]) == (1, 1)
    assert waha.to(LINE[0])[-1].startswith("Vagou")
    assert not waha.to(LINE[1])[-1].startswith("Vagou")
    # The rest waits for the session's pace: the slot stays marked.
    assert await aredis.zscore(CalendarKeys(key_prefix).freed, booking_id) is not None


async def backlog(agent: AgentHarness, now: datetime, count: int) -> list[str]:
    """`count` slots of today freed in the session `default`, by as many customers, each
    booking one of today's Consulta times and cancelling it -> their bookings, in that order."""
    agenda = agent.parts.agenda
    consulta, at = agenda.service("consulta"), agenda.now()
    times = [slot.start for slot in agenda.calendar.slots(consulta, now.date(), now.date(), at)]
    return [
        await cancelled(agent, f"5511955{n:06d}@c.us", times[n % len(times)]) for n in range(count)
    ]


async def freed_in_other_session(agent: AgentHarness, now: datetime, key_prefix: str) -> str:
    """A slot of today freed in the session `other`, marked after every other -> its booking."""
    agenda = agent.parts.agenda
    slot = agenda.calendar.slot(
        agenda.service("consulta"), f"{now + timedelta(hours=5):%Y-%m-%dT%H:%M}", agenda.now()
    )
    customer = Customer(token="other|5521988880000@c.us", name="Caio")
    booking_id = booking_id_for(customer.token, "m-other", slot.id)
    await agent.parts.store.book(customer, slot, booking_id=booking_id)
    await agent.parts.store.cancel(customer, booking_id)
    keys = CalendarKeys(key_prefix)
    [(_, last)] = await agent.redis.zrange(keys.freed, -1, -1, withscores=True)
    assert await agent.redis.zadd(keys.freed, {booking_id: last + 1}, xx=True, ch=True)
    return booking_id


def offers_to(waha: Any, chat: str) -> list[str]:
    return [text for text in waha.to(chat) if text.startswith("Vagou")]


async def test_a_sessions_backlog_does_not_hold_back_another_sessions_offer(
    in_line, waha, aredis, key_prefix, now
) -> None:
    """120 slots freed in `default` (more than a pass handles), its line over its pace of 4 a
    minute: the slot freed in `other` after all of them is offered at the first pass, once."""
    agent = await in_line(LINE[:3], pace=4)  # the default pace
    await wait_in_line(agent, [OTHER], session="other")
    held = await backlog(agent, now, 120)
    other = await freed_in_other_session(agent, now, key_prefix)
    keys = CalendarKeys(key_prefix)

    done = await offer_round(agent)
    # The first slot of `default` to its first in line (the pace's burst of one), and `other`'s.
    assert (done["queued"], done["paced"]) == (2, 120)
    assert len(offers_to(waha, OTHER)) == 1
    assert await aredis.zscore(keys.freed, other) is None
    assert await aredis.zcard(keys.freed) == len(held) == 120
    # Further passes within the pace offer nothing more, in either session.
    for _ in range(3):
        assert (await offer_round(agent))["queued"] == 0
    assert len(offers_to(waha, OTHER)) == 1
    assert [len(offers_to(waha, chat)) for chat in LINE[:3]] == [1, 0, 0]


async def test_a_backlog_longer_than_a_pass_reads_is_read_in_turns(
    in_line, waha, aredis, key_prefix, now, monkeypatch
) -> None:
    """With more paced slots marked than one pass reads, the next pass reads on from where the
    last stopped, so a slot behind them is reached, and offered once."""
    monkeypatch.setattr(proactive, "SCAN_LIMIT", 20)
    monkeypatch.setattr(proactive, "PAGE", 6)
    agent = await in_line(LINE[:3], pace=4)
    await wait_in_line(agent, [OTHER], session="other")
    await backlog(agent, now, 30)
    other = await freed_in_other_session(agent, now, key_prefix)
    keys = CalendarKeys(key_prefix)

    first = await offer_round(agent)
    assert (first["queued"], first["paced"]) == (1, 20)
    assert await aredis.zscore(keys.freed, other) is not None
    second = await offer_round(agent)
    assert second["queued"] == 1
    assert await aredis.zscore(keys.freed, other) is None
    # Past the end: back to the head, where nothing is sendable yet either.
    assert (await offer_round(agent))["queued"] == 0
    assert len(offers_to(waha, OTHER)) == 1
    assert [len(offers_to(waha, chat)) for chat in LINE[:3]] == [1, 0, 0]


def _payloads(booking_id: str, start_ms: int) -> list[dict[str, Any]]:
    return [
        {"booking_id": "", "start_ms": start_ms, "text": "x"},
        {"booking_id": booking_id, "start_ms": "soon", "text": "x"},
        {"booking_id": booking_id, "start_ms": start_ms, "text": ""},
        {"booking_id": booking_id, "start_ms": start_ms + 1, "text": "x"},  # another start
        {"booking_id": "bk000000000000", "start_ms": start_ms, "text": "x"},  # no such booking
    ]


@pytest.mark.parametrize("case", range(5))
async def test_a_malformed_offer_command_changes_nothing(in_line, waha, aredis, now, case) -> None:
    chat = LINE[0]
    agent = await in_line([chat])
    booking_id = await cancel_today(agent, now)
    keys = keys_of(agent, chat)
    state_before = await aredis.hgetall(keys.state)
    sent_before = list(waha.sent)
    assert await offer(
        agent, chat, _payloads(booking_id, ms(now + timedelta(hours=4)))[case], "bad"
    )
    await agent.drain()
    assert waha.sent == sent_before
    assert await aredis.hgetall(keys.state) == state_before
    assert await aredis.exists(keys.outbox) == 0


async def test_foreign_offers_change_nothing(in_line, waha, aredis, now) -> None:
    """Offers the pass never makes: a booked (not cancelled) slot, the customer's own
    cancelled booking, another session's slot, and someone not in line."""
    chat = LINE[0]
    agent = await in_line([chat])
    start = now + timedelta(hours=4)
    booked = await book(agent, ANA, start)
    keys = keys_of(agent, chat)
    state_before = await aredis.hgetall(keys.state)
    sent_before = list(waha.sent)
    assert await offer(agent, chat, {"booking_id": booked, "start_ms": ms(start), "text": "x"}, "a")
    # Their own cancelled booking (booked by the customer in line, then cancelled).
    own_start = start + timedelta(hours=1)
    own = await cancelled(agent, chat, own_start)
    assert await offer(
        agent, chat, {"booking_id": own, "start_ms": ms(own_start), "text": "x"}, "b"
    )
    await agent.drain()
    assert waha.sent == sent_before
    assert await aredis.hgetall(keys.state) == state_before
    # Another session's customer, and a customer not in line at all.
    await agent.parts.store.cancel(Customer(token=f"default|{ANA}"), booked)
    payload = {"booking_id": booked, "start_ms": ms(start), "text": "x"}
    assert await offer(agent, chat, payload, "c", session="other")
    assert await offer(agent, LINE[4], payload, "d")
    await agent.drain()
    assert waha.sent == sent_before
    other, nobody = keys_of(agent, chat, "other"), keys_of(agent, LINE[4])
    assert await aredis.exists(other.state, nobody.state) == 0


async def test_a_1_without_an_offer_is_an_ordinary_message_in_line(
    in_line, aredis, key_prefix
) -> None:
    chat = LINE[0]
    agent = await in_line([chat])
    await agent.say(chat, "1")
    assert await state_of(agent, chat) is State.WAITING
    assert await aredis.exists(CalendarKeys(key_prefix).customer_all(f"default|{chat}")) == 0
