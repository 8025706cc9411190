"""The tools as the model calls them: validated arguments, errors the model can correct, the
conversation's customer only, and the confirmation rule enforced in code."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from engine.agent.confirmation import PENDING_KEY, PendingAction, confirms, refuses
from engine.agent.tools import SPECS, ToolSession, tool_definitions
from tests.engine.agent.chat import Chat

ANA = "5511987650001@c.us"
BIA = "5511987650002@c.us"


@pytest.fixture
def agent(make_agent):
    return make_agent()


def session(agent, chat: Chat, text: str) -> ToolSession:
    return ToolSession.for_turn(agent.agenda, chat.turn(text))


def carry(chat: Chat, tools: ToolSession) -> None:
    """What the engine commits after the turn: the pending action in collected data."""
    chat.state = chat.state.with_collected(tools.collected())


def test_tool_definitions_have_groq_function_shape() -> None:
    definitions = tool_definitions()
    assert [d["function"]["name"] for d in definitions] == [s.name for s in SPECS]
    book = next(d for d in definitions if d["function"]["name"] == "book_appointment")
    assert book["type"] == "function"
    params = book["function"]["parameters"]
    assert params["type"] == "object" and params["additionalProperties"] is False
    assert set(params["properties"]) == {"service", "start"}
    assert set(params["required"]) == {"service", "start"}
    slots = next(d for d in definitions if d["function"]["name"] == "list_available_slots")
    assert slots["function"]["parameters"]["properties"]["from_date"] == {
        "type": "string", "format": "date", "description": "First day to look at (YYYY-MM-DD).",
    }  # fmt: skip
    # The booking being moved is an optional plain string: a call naming only the service is
    # as valid as ever (tests/engine/agent/test_reschedule_own_slots.py uses it).
    listing = slots["function"]["parameters"]
    assert set(listing["properties"]) == {"service", "from_date", "to_date", "booking_id"}
    assert listing["required"] == ["service"]
    assert listing["properties"]["booking_id"]["type"] == "string"
    assert "list_my_appointments" in listing["properties"]["booking_id"]["description"]
    # Nothing in any tool lets the model name a customer.
    text = json.dumps(definitions)
    assert "customer_id" not in text and '"phone"' not in text and '"chat' not in text


async def test_bad_calls_return_errors_the_model_can_correct(agent, now: datetime) -> None:
    chat = Chat(ANA)
    tools = session(agent, chat, "quero marcar")
    assert (await tools.call("book_appointment", "{not json"))["error"] == "invalid_arguments"
    wrong = await tools.call("book_appointment", json.dumps({"service": "consulta"}))
    assert wrong["error"] == "invalid_arguments" and "start" in wrong["detail"]
    extra = await tools.call("list_my_appointments", json.dumps({"customer": "5511987650002@c.us"}))
    assert extra["error"] == "invalid_arguments" and "customer" in extra["detail"]
    unknown = await tools.call("delete_all_bookings", "{}")
    assert unknown["error"] == "unknown_tool" and "book_appointment" in unknown["available"]
    service = await tools.call("list_available_slots", json.dumps({"service": "massagem"}))
    assert service["error"] == "unknown_service" and service["services"] == ["Consulta", "Limpeza"]
    bad_slot = await tools.call(
        "book_appointment", json.dumps({"service": "consulta", "start": f"{now.date()}T10:10"})
    )
    assert bad_slot["error"] == "invalid_slot" and "grid" in bad_slot["detail"]
    listed = await tools.call("list_available_slots", json.dumps({"service": "Consulta"}))
    assert listed["ok"] and listed["slots"][0] == {
        "start": f"{now.date()}T10:00", "label": f"seg {now:%d/%m} às 10:00",
    }  # fmt: skip
    assert len(listed["slots"]) == 10 and listed["more"] is True
    assert tools.collected() == {}  # nothing proposed, nothing to commit


async def test_booking_waits_for_a_later_yes_for_exactly_what_was_asked(
    agent, aredis, key_prefix, now: datetime
) -> None:
    chat = Chat(ANA).named("Ana")
    args = json.dumps({"service": "Consulta", "start": f"{now.date()}T10:00"})
    first = session(agent, chat, "pode ser às 10h, sim, marca!")
    proposed = await first.call("book_appointment", args)
    assert proposed["status"] == "confirmation_required"
    # Even asked twice in the same message, nothing is booked: the customer was not asked yet.
    assert (await first.call("book_appointment", args))["status"] == "confirmation_required"
    assert await chat.booked(aredis, key_prefix) == 0
    carry(chat, first)
    pending = PendingAction.decode(chat.state.collected[PENDING_KEY])
    assert pending and (pending.kind, pending.service) == ("book", "consulta")

    # Another time than the one asked about is a new proposal, not a booking.
    other = session(agent, chat, "sim")
    other_args = json.dumps({"service": "consulta", "start": f"{now.date()}T11:00"})
    assert (await other.call("book_appointment", other_args))["status"] == "confirmation_required"
    assert await chat.booked(aredis, key_prefix) == 0

    # A "no" does not book what was asked.
    refused = session(agent, chat, "não, prefiro outro dia")
    assert (await refused.call("book_appointment", args))["status"] == "confirmation_required"

    # A yes, in a later message, for the same thing: booked, once.
    yes = session(agent, chat, "Sim, pode confirmar 👍")
    booked = await yes.call("book_appointment", args)
    assert booked["ok"] and booked["status"] == "booked"
    assert booked["booking"]["start"] == f"{now.date()}T10:00"
    assert (await yes.call("book_appointment", args))["error"] == "already_booked"
    assert yes.collected() == {PENDING_KEY: ""}
    assert len(yes.changes) == 1
    stored = await agent.store.upcoming(agent.agenda.customer(chat.turn("x")), 0)
    assert [(b.start, b.name, b.customer) for b in stored] == [
        (f"{now.date()}T10:00", "Ana", f"default|{ANA}")
    ]


async def test_tools_only_reach_the_conversations_customer(agent, now: datetime) -> None:
    ana, bia = Chat(ANA), Chat(BIA)
    args = json.dumps({"service": "consulta", "start": f"{now.date()}T10:00"})
    tools = session(agent, bia, "quero")
    await tools.call("book_appointment", args)
    carry(bia, tools)
    booked = await session(agent, bia, "sim").call("book_appointment", args)
    bia_booking = booked["booking"]["booking_id"]

    spy = session(agent, ana, "sim")
    assert (await spy.call("list_my_appointments", "{}"))["appointments"] == []
    for name, call_args in [
        ("cancel_appointment", {"booking_id": bia_booking}),
        ("reschedule_appointment", {"booking_id": bia_booking, "new_start": f"{now.date()}T15:00"}),
    ]:
        result = await spy.call(name, json.dumps(call_args))
        assert result["error"] == "not_found"
    # Ana asking for Bia's time is told it is taken, with free alternatives.
    taken = await spy.call("book_appointment", args)
    assert taken["error"] == "slot_taken"
    assert taken["alternatives"][0]["start"] == f"{now.date()}T10:30"
    assert "5511987650002" not in json.dumps(taken)
    mine = await session(agent, bia, "x").call("list_my_appointments", "{}")
    assert [a["booking_id"] for a in mine["appointments"]] == [bia_booking]


async def test_cancel_and_reschedule_need_a_yes_too(agent, now: datetime) -> None:
    chat = Chat(ANA)
    args = json.dumps({"service": "consulta", "start": f"{now.date()}T10:00"})
    first = session(agent, chat, "quero")
    await first.call("book_appointment", args)
    carry(chat, first)
    booking_id = (await session(agent, chat, "sim").call("book_appointment", args))["booking"][
        "booking_id"
    ]
    chat.state = chat.state.with_collected({PENDING_KEY: ""})

    move = json.dumps({"booking_id": booking_id, "new_start": f"{now.date()}T14:00"})
    asked = session(agent, chat, "muda pras 14h")
    proposal = await asked.call("reschedule_appointment", move)
    assert proposal["status"] == "confirmation_required" and "10:00" in proposal["summary"]
    carry(chat, asked)
    moved = await session(agent, chat, "ok").call("reschedule_appointment", move)
    assert moved["status"] == "rescheduled" and moved["booking"]["start"].endswith("T14:00")
    chat.state = chat.state.with_collected({PENDING_KEY: ""})

    cancel = json.dumps({"booking_id": booking_id})
    asked = session(agent, chat, "cancela")
    assert (await asked.call("cancel_appointment", cancel))["status"] == "confirmation_required"
    carry(chat, asked)
    done = await session(agent, chat, "sim, pode cancelar").call("cancel_appointment", cancel)
    assert done["status"] == "cancelled"
    assert await agent.agenda.mine(agent.agenda.customer(chat.turn("x"))) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sim", True), ("Sim!", True), ("pode", True), ("confirmo", True), ("ok", True),
        ("👍", True), ("yes please", True), ("Isso mesmo, pode marcar", True),
        ("não", False), ("nao sei", False), ("sim, mas prefiro outro horário", False),
        ("talvez", False), ("qual o endereço?", False), ("", False),
        # A yes word inside something else is not an answer to the question asked (an
        # audit found each of these booking on the menu).
        ("pode ser às 14h?", False), ("Pode ser mais tarde?", False), ("quero às 15h", False),
        ("isso é caro?", False), ("quero saber o preço", False), ("certo?", False),
        ("beleza, mas troca pra terça", False), ("quero cancelar", False),
        ("Sim, pode marcar. Obrigada!", True), ("sim, até lá!", True), ("Sim, boa tarde", True),
        ("[áudio] Sim.", True), ("1️⃣", True), ("pode confirmar, estarei lá", True),
    ],
)  # fmt: skip
def test_what_counts_as_a_yes(text: str, expected: bool) -> None:
    assert confirms(text) is expected


@pytest.mark.parametrize(
    ("text", "yes_to_cancel", "yes_to_book", "no_to_cancel", "no_to_book"),
    [
        ("sim, pode cancelar", True, False, False, True),
        ("cancela", True, False, False, True),
        ("quero cancelar", True, False, False, True),
        ("sim", True, True, False, False),
        ("não", False, False, True, True),
    ],
)
def test_a_cancel_word_is_a_yes_to_a_cancel_and_a_no_to_anything_else(
    text: str, yes_to_cancel: bool, yes_to_book: bool, no_to_cancel: bool, no_to_book: bool
) -> None:
    assert confirms(text, "cancel") is yes_to_cancel
    assert confirms(text, "book") is yes_to_book
    assert refuses(text, "cancel") is no_to_cancel
    assert refuses(text, "book") is no_to_book


async def test_a_proposal_the_customer_did_not_accept_lapses(
    agent, aredis, key_prefix, now: datetime
) -> None:
    """Found by an audit: after a "não" answered in plain words the proposal stayed, and a
    later message holding a yes word ("quero saber...") booked it."""
    chat = Chat(ANA).named("Ana")
    args = json.dumps({"service": "Consulta", "start": f"{now.date()}T14:00"})
    asked = session(agent, chat, "tem às 14h?")
    assert (await asked.call("book_appointment", args))["status"] == "confirmation_required"
    carry(chat, asked)
    # The model answers "não, obrigada" without a tool: the proposal lapses with the turn.
    declined = session(agent, chat, "não, obrigada, vou ver minha agenda")
    assert declined.collected() == {PENDING_KEY: ""}
    carry(chat, declined)
    later = session(agent, chat, "quero")
    assert (await later.call("book_appointment", args))["status"] == "confirmation_required"
    assert await chat.booked(aredis, key_prefix) == 0
    # Proposed again and answered yes: booked.
    carry(chat, later)
    yes = session(agent, chat, "sim")
    assert (await yes.call("book_appointment", args))["status"] == "booked"
