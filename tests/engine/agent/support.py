"""Helpers of the agent's tests, kept apart from the tests that use them.

- The driven clock and the booking made as the tools make it: the reminders' and the freed
  slots' tests (test_reminders.py, test_freed_slots.py).
- Customers with bookings made through the model, and the check that nobody's booking was
  touched: the brain's and the knowledge agent's tests (test_agent_brain.py,
  test_knowledge_agent.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest

from engine.agent.bookings import Customer, booking_id_for
from shared import clock as clock_module
from shared.keys import CalendarKeys
from tests.engine.agent.chat import Chat
from tests.engine.agent.fake_groq import completion, last_tool_results, tool_call
from tests.engine.agent.receptionist import receptionist
from tests.engine.harness import AgentHarness

ANA = "5511987650001@c.us"
BIA = "5511987650002@c.us"


# --- the driven clock and bookings as the tools make them -------------------------------------


@pytest.fixture
def clock(now: datetime) -> Callable[[], datetime]:
    """The agent reads the engine's clock here (conftest.py fixes it at `now`), so both move
    together when a test moves time (conftest.py's `move_clock`). A test module that drives
    time imports it, overriding conftest.py's fixed clock for its tests only."""
    return lambda: datetime.fromtimestamp(clock_module.now_ms() / 1000, now.tzinfo)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def book(agent: AgentHarness, chat: str, start: datetime, service: str = "consulta") -> str:
    """The customer's booking, made as the tools make it (the real booking script)."""
    agenda = agent.parts.agenda
    slot = agenda.calendar.slot(agenda.service(service), f"{start:%Y-%m-%dT%H:%M}", agenda.now())
    customer = Customer(token=f"default|{chat}", name="Ana")
    booking_id = booking_id_for(customer.token, f"m-{start:%d%H%M}", slot.id)
    change = await agent.parts.store.book(customer, slot, booking_id=booking_id)
    assert not change.repeated
    return booking_id


# --- bookings made through the model -----------------------------------------------------------


def book_call(now: datetime, hhmm: str) -> dict:
    """The model asking to book a consulta today at `hhmm`."""
    start = f"{now.date()}T{hhmm}"
    return completion(
        None, [tool_call("book_appointment", {"service": "consulta", "start": start})]
    )


async def other_customers_booking(brain, groq, now: datetime) -> tuple[Chat, str]:
    groq.policy = receptionist
    bia = Chat(BIA).named("Bia Souza")
    await bia.say(brain, "quero marcar o primeiro horário de consulta")
    await bia.say(brain, "sim")
    booked = last_tool_results(groq.requests[-1])[0]["booking"]
    groq.policy = None
    groq.requests.clear()
    return bia, booked["booking_id"]


async def ana_with_a_booking(brain, groq, now: datetime) -> tuple[Chat, str]:
    groq.then(
        book_call(now, "14:00"),
        completion("Confirma?"),
        book_call(now, "14:00"),
        completion("Marcado!"),
    )  # fmt: skip
    ana = Chat(ANA).named("Ana")
    await ana.say(brain, "consulta às 14h")
    await ana.say(brain, "sim")
    booked = last_tool_results(groq.requests[-1])[0]["booking"]
    groq.requests.clear()
    return ana, booked["booking_id"]


async def assert_bookings_intact(aredis, key_prefix: str, *booking_ids: str) -> None:
    for booking_id in booking_ids:
        status = await aredis.hget(CalendarKeys(key_prefix).booking(booking_id), "status")
        assert status == b"booked", booking_id
