"""Moving a booking onto a time that overlaps its own current slots: the booking's own slots
count as free for it (as the reschedule script counts them), by the agent's tools and by the
menu's answer to a reminder; another customer's booking still blocks the move. The times the
model lists for a move (list_available_slots with the booking_id) are exactly the times the
reschedule accepts."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from engine.agent.bookings import Booking, Customer
from engine.agent.confirmation import PENDING_KEY
from engine.agent.tools import MAX_SLOTS_LISTED, ToolSession
from shared.keys import CalendarKeys
from tests.engine.agent.chat import Chat
from tests.engine.agent.fake_groq import FakeGroq, completion, last_tool_results, tool_call
from tests.engine.agent.support import ANA, BIA, book, clock, ms  # noqa: F401
from tests.engine.harness import AgentHarness, FakeWaha


def reschedule_call(booking_id: str, start: datetime) -> dict[str, Any]:
    arguments = {"booking_id": booking_id, "new_start": f"{start:%Y-%m-%dT%H:%M}"}
    return completion(None, [tool_call("reschedule_appointment", arguments)])


def list_call(arguments: dict[str, Any]) -> dict[str, Any]:
    return completion(None, [tool_call("list_available_slots", arguments)])


async def holders(aredis: Any, key_prefix: str, day: datetime) -> dict[str, str]:
    """The day's taken slots: `HH:MM` -> booking id."""
    raw = await aredis.hgetall(CalendarKeys(key_prefix).day(f"{day:%Y-%m-%d}"))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def stored(aredis: Any, key_prefix: str, booking_id: str) -> Booking:
    booking = Booking.from_hash(await aredis.hgetall(CalendarKeys(key_prefix).booking(booking_id)))
    assert booking is not None
    return booking


@pytest.mark.parametrize(
    ("minutes", "held"),
    [(30, ["10:30", "11:00"]), (-30, ["09:30", "10:00"])],
    ids=["half-hour-later", "half-hour-earlier"],
)
async def test_the_agent_moves_a_booking_onto_its_own_slots(
    harness: Callable[..., AgentHarness],
    groq: FakeGroq,
    aredis: Any,
    key_prefix: str,
    now: datetime,
    minutes: int,
    held: list[str],
) -> None:
    agent = harness()
    start = now + timedelta(days=2, hours=1)  # Wednesday 10:00, a 60-minute Limpeza
    booking_id = await book(agent, ANA, start, service="limpeza")
    new_start = start + timedelta(minutes=minutes)
    groq.then(
        reschedule_call(booking_id, new_start),
        completion("Confirma?"),
        reschedule_call(booking_id, new_start),
        completion("Remarcado!"),
    )  # fmt: skip
    ana = Chat(ANA).named("Ana")

    await ana.say(agent.parts.brain, f"pode mudar a limpeza para {new_start:%H:%M}?")
    [proposed] = last_tool_results(groq.requests[-1])
    assert proposed.get("status") == "confirmation_required", proposed
    assert (await stored(aredis, key_prefix, booking_id)).start == f"{start:%Y-%m-%dT%H:%M}"

    await ana.say(agent.parts.brain, "sim")
    [moved] = last_tool_results(groq.requests[-1])
    assert moved.get("status") == "rescheduled", moved
    assert moved["booking"]["start"] == f"{new_start:%Y-%m-%dT%H:%M}"
    # Still one booking, now on the new slots only: the old slot outside them is free.
    mine = await agent.parts.agenda.mine(Customer(token=f"default|{ANA}"))
    assert [b.id for b in mine] == [booking_id]
    assert mine[0].start == f"{new_start:%Y-%m-%dT%H:%M}"
    assert await holders(aredis, key_prefix, start) == dict.fromkeys(held, booking_id)


async def test_another_customers_booking_still_blocks_the_move(
    harness: Callable[..., AgentHarness],
    groq: FakeGroq,
    aredis: Any,
    key_prefix: str,
    now: datetime,
) -> None:
    agent = harness()
    start = now + timedelta(days=2, hours=1)  # Wednesday 10:00
    ana_booking = await book(agent, ANA, start, service="limpeza")  # 10:00-11:00
    bia_booking = await book(agent, BIA, start + timedelta(hours=1))  # Consulta 11:00-11:30
    groq.then(
        reschedule_call(ana_booking, start + timedelta(minutes=30)),  # 10:30-11:30
        completion("Esse horário não está livre."),
    )  # fmt: skip
    ana = Chat(ANA).named("Ana")

    await ana.say(agent.parts.brain, "pode mudar a limpeza para 10:30?")
    [refused] = last_tool_results(groq.requests[-1])
    assert refused["error"] == "slot_taken", refused
    # The alternatives are times this booking can move to: its own overlapping 09:30 is one,
    # its current 10:00 is not, and nothing overlapping Bia's 11:00.
    alternatives = [a["start"][-5:] for a in refused["alternatives"]]
    assert alternatives == ["08:00", "08:30", "09:00", "09:30", "13:00"]
    assert ana.state.collected.get(PENDING_KEY, "") == ""
    assert (await stored(aredis, key_prefix, ana_booking)).start == f"{start:%Y-%m-%dT%H:%M}"
    assert await holders(aredis, key_prefix, start) == {
        "10:00": ana_booking, "10:30": ana_booking, "11:00": bia_booking,
    }  # fmt: skip


async def test_the_reminders_reschedule_offers_times_overlapping_the_booking(
    harness: Callable[..., AgentHarness],
    waha: FakeWaha,
    aredis: Any,
    key_prefix: str,
    now: datetime,
    move_clock: Callable[[int], None],
) -> None:
    # Reminded three hours ahead, so the times offered are the booking's own afternoon.
    agent = harness(groq_api_key=None, reminder_lead_hours=3)
    start = now + timedelta(hours=7)  # today 16:00, a 60-minute Limpeza
    booking_id = await book(agent, ANA, start, service="limpeza")
    move_clock(ms(start) - 3 * 3_600_000)  # 13:00: the reminder is due
    assert (await agent.service.reminders.run_once(force=True))["queued"] == 1
    await agent.drain()
    move_clock(ms(start) - 3 * 3_600_000 + 5 * 60_000)  # 13:05: Ana answers "2"

    await agent.say(ANA, "2")
    offer = waha.to(ANA)[-1].splitlines()
    today = f"{start:%d/%m}"
    tomorrow = f"{start + timedelta(days=1):%d/%m}"
    # 15:30 and 16:30 overlap the booking's own 16:00-17:00; 16:00 is where it already is.
    assert offer[1:9] == [
        f"1. seg {today} às 14:30",
        f"2. seg {today} às 15:00",
        f"3. seg {today} às 15:30",
        f"4. seg {today} às 16:30",
        f"5. seg {today} às 17:00",
        f"6. ter {tomorrow} às 08:00",
        f"7. ter {tomorrow} às 08:30",
        f"8. ter {tomorrow} às 09:00",
    ]

    await agent.say(ANA, "3")
    assert waha.to(ANA)[-1] == (
        f"Confirma mudar *Limpeza* de seg {today} às 16:00 para *seg {today} às 15:30*?"
        "\n1. Sim\n2. Não"
    )
    await agent.say(ANA, "1")
    assert waha.to(ANA)[-2] == (
        f"Pronto! ✅ Horário de *Limpeza* remarcado para *seg {today} às 15:30*."
    )
    moved = await stored(aredis, key_prefix, booking_id)
    assert moved.start == f"{start:%Y-%m-%d}T15:30" and moved.status == "booked"
    assert await holders(aredis, key_prefix, start) == {
        "15:30": booking_id, "16:00": booking_id,
    }  # fmt: skip


async def test_the_agent_lists_the_times_a_move_can_take_and_the_move_takes_one(
    harness: Callable[..., AgentHarness],
    groq: FakeGroq,
    aredis: Any,
    key_prefix: str,
    now: datetime,
) -> None:
    """The customer asks which times their 60-minute Limpeza at 10:00 can move to: listed for
    that booking, 09:30 and 10:30 (overlapping it) are offered, 10:00 (where it is) is not,
    and the move onto a listed overlapping time is proposed and carried out."""
    agent = harness()
    start = now + timedelta(days=2, hours=1)  # Wednesday 10:00, a 60-minute Limpeza
    booking_id = await book(agent, ANA, start, service="limpeza")
    day = f"{start:%Y-%m-%d}"
    for_move = {"service": "limpeza", "from_date": day, "to_date": day, "booking_id": booking_id}
    new_start = start + timedelta(minutes=30)
    groq.then(
        list_call(for_move),
        completion("Tenho 09:30, 10:30..."),
        reschedule_call(booking_id, new_start),
        completion("Confirma?"),
        reschedule_call(booking_id, new_start),
        completion("Remarcado!"),
    )  # fmt: skip
    ana = Chat(ANA).named("Ana")

    await ana.say(agent.parts.brain, "quais horários tem na quarta para mudar minha limpeza?")
    [listed] = last_tool_results(groq.requests[-1])
    assert listed.get("ok"), listed
    assert [s["start"][-5:] for s in listed["slots"]] == [
        "08:00", "08:30", "09:00", "09:30", "10:30", "11:00",
        "13:00", "13:30", "14:00", "14:30",
    ]  # fmt: skip
    assert listed["more"] is True

    await ana.say(agent.parts.brain, "pode ser às 10:30")
    [proposed] = last_tool_results(groq.requests[-1])
    assert proposed.get("status") == "confirmation_required", proposed
    await ana.say(agent.parts.brain, "sim")
    [moved] = last_tool_results(groq.requests[-1])
    assert moved.get("status") == "rescheduled", moved
    assert await holders(aredis, key_prefix, start) == {
        "10:30": booking_id, "11:00": booking_id,
    }  # fmt: skip


async def test_the_times_listed_for_a_move_are_the_times_the_reschedule_accepts(
    harness: Callable[..., AgentHarness], now: datetime
) -> None:
    """Ana's Limpeza at 10:00 and Bia's Consulta at 11:00: for every time of the day, listed for
    the move if and only if reschedule_appointment accepts it (proposes it); a listing for a new
    booking (no booking_id, or an empty one) still leaves out every time Ana's booking holds."""
    agent = harness()
    start = now + timedelta(days=2, hours=1)  # Wednesday 10:00
    ana_booking = await book(agent, ANA, start, service="limpeza")  # 10:00-11:00
    await book(agent, BIA, start + timedelta(hours=1))  # Consulta 11:00-11:30
    agenda = agent.parts.agenda
    ana = Chat(ANA).named("Ana")
    day = f"{start:%Y-%m-%d}"

    async def listed(**extra: Any) -> dict[str, Any]:
        tools = ToolSession.for_turn(agenda, ana.turn("que horários tem?"))
        arguments = {"service": "Limpeza", "from_date": day, "to_date": day, **extra}
        return await tools.call("list_available_slots", json.dumps(arguments))

    accepted = []
    for slot in agenda.calendar.slots(agenda.service("limpeza"), start.date(), start.date(), now):
        tools = ToolSession.for_turn(agenda, ana.turn(f"pode ser às {slot.id[-5:]}?"))
        arguments = {"booking_id": ana_booking, "new_start": slot.id}
        answer = await tools.call("reschedule_appointment", json.dumps(arguments))
        if answer.get("status") == "confirmation_required":
            accepted.append(slot.id)
        else:
            assert answer.get("error") in ("slot_taken", "invalid_slot"), answer
    assert "09:30" in [a[-5:] for a in accepted] and "10:30" not in [a[-5:] for a in accepted]

    for_move = await listed(booking_id=ana_booking)
    assert [s["start"] for s in for_move["slots"]] == accepted[:MAX_SLOTS_LISTED]
    assert for_move["more"] is (len(accepted) > MAX_SLOTS_LISTED)
    # For a new booking, nothing Ana's booking holds is free (09:30 and 10:00 overlap it).
    for new in (await listed(), await listed(booking_id="")):
        assert new["ok"], new
        times = [s["start"][-5:] for s in new["slots"]]
        assert times[:4] == ["08:00", "08:30", "09:00", "13:00"], times


async def test_listing_for_a_move_takes_only_the_customers_own_booking_of_that_service(
    harness: Callable[..., AgentHarness], now: datetime
) -> None:
    agent = harness()
    start = now + timedelta(days=2, hours=1)
    ana_booking = await book(agent, ANA, start, service="limpeza")
    bia_booking = await book(agent, BIA, start + timedelta(hours=4))
    agenda = agent.parts.agenda

    async def listed(chat: str, arguments: dict[str, Any]) -> dict[str, Any]:
        tools = ToolSession.for_turn(agenda, Chat(chat).turn("horários?"))
        return await tools.call("list_available_slots", json.dumps(arguments))

    # Someone else's booking is answered like one that does not exist, and lists nothing.
    for other in (bia_booking, "bk0000000000"):
        refused = await listed(ANA, {"service": "consulta", "booking_id": other})
        assert refused["error"] == "not_found" and "slots" not in refused, refused
    # A move keeps its service: the model is told which one.
    wrong = await listed(ANA, {"service": "consulta", "booking_id": ana_booking})
    assert (wrong["error"], wrong["service"]) == ("wrong_service", "Limpeza")
    # A cancelled booking is no longer one to move.
    await agent.parts.store.cancel(Customer(token=f"default|{ANA}"), ana_booking)
    gone = await listed(ANA, {"service": "limpeza", "booking_id": ana_booking})
    assert gone["error"] == "not_found", gone
