"""Whole conversations in pt-BR through the real engine (queue, fenced commit, state, history,
outbox, sender) with the agent as its brain: with the model (Groq stood in for), and with the
scheduling menu alone (no GROQ_API_KEY). Bookings land in Redis and the booking webhook tells
another system."""

from __future__ import annotations

import json

import httpx

from engine.agent.booking_webhook import verify
from engine.history import HistoryKeys, read_page
from engine.state import State, load_state
from shared.keys import CalendarKeys, engine_keys_for
from tests.engine.agent.receptionist import receptionist

ANA = "5511987650001@c.us"
HOOKS = "https://crm.test/hooks/bookings"
HOOK_SECRET = "crm-secret-0123456789abcdef01234567"


async def test_booking_a_consulta_with_the_agent_end_to_end(
    harness, groq, waha, router, aredis, key_prefix, now
) -> None:
    received: list[httpx.Request] = []
    router.post(HOOKS).mock(side_effect=lambda r: received.append(r) or httpx.Response(204))
    agent = harness(booking_webhook_url=HOOKS, booking_webhook_secret=HOOK_SECRET)
    groq.policy = receptionist
    day = f"{now:%d/%m}"

    await agent.say(ANA, "Oi! Quero marcar uma consulta")
    assert waha.to(ANA)[-1].startswith(f"Tenho estes horários para consulta: seg {day} às 10:00")
    await agent.say(ANA, "Pode ser o primeiro")
    assert (
        waha.to(ANA)[-1] == f"Confirma Consulta, seg {day} às 10:00? Responda *sim* para confirmar."
    )
    await agent.say(ANA, "Sim")
    assert waha.to(ANA)[-1] == f"Pronto! ✅ Consulta marcada para seg {day} às 10:00."
    assert len(waha.to(ANA)) == 3

    token = f"default|{ANA}"
    keys = CalendarKeys(key_prefix)
    [booking_id] = [b.decode() for b in await aredis.zrange(keys.customer(token), 0, -1)]
    booking = await aredis.hgetall(keys.booking(booking_id))
    assert booking[b"start"] == f"{now.date()}T10:00".encode()
    assert booking[b"status"] == b"booked" and booking[b"phone"] == b"5511987650001"
    state = await load_state(aredis, engine_keys_for("default", ANA, 1, key_prefix).state)
    assert state.state is State.BOT and state.step == "agent"
    assert state.collected["pending_action"] == ""
    conv = engine_keys_for("default", ANA, 1, key_prefix)
    entries, _ = await read_page(aredis, HistoryKeys(conv.history, conv.history_meta), limit=10)
    assert [e.direction for e in entries] == ["in", "out"] * 3
    # The third turn's prompt carried the whole conversation and the pending confirmation.
    yes_turn = next(r for r in groq.requests if r["messages"][-1]["content"] == "Sim")
    assert (
        "waiting for the customer's confirmation: book Consulta"
        in yes_turn["messages"][1]["content"]
    )
    assert [m["role"] for m in yes_turn["messages"][2:]] == ["user", "assistant"] * 2 + ["user"]

    # The CRM heard about it, signed.
    await agent.parts.webhook.deliver_due()  # type: ignore[union-attr]
    [hook] = received
    assert verify(HOOK_SECRET.encode(), hook.headers["x-wsm-timestamp"], hook.content,
                  hook.headers["x-wsm-signature"])  # fmt: skip
    event = json.loads(hook.content)
    assert event["event"] == "booking.booked" and event["booking"]["id"] == booking_id
    assert event["booking"]["start"] == f"{now.date()}T10:00:00-03:00"
    assert event["customer"]["phone"] == "5511987650001"


async def test_booking_seeing_and_cancelling_on_the_menu_end_to_end(
    harness, groq, waha, aredis, key_prefix, now
) -> None:
    menu = harness(groq_api_key=None)
    day = f"{now:%d/%m}"
    token = f"default|{ANA}"
    keys = CalendarKeys(key_prefix)

    await menu.say(ANA, "oi")
    assert waha.to(ANA)[-1] == "Olá! 👋 Bem-vindo(a) à Clínica Sorriso. Como posso te chamar?"
    await menu.say(ANA, "Ana")
    options = waha.to(ANA)[-1].splitlines()
    assert options[1:] == [
        "1. Conhecer nossos serviços", "2. Horário de atendimento", "3. Agendar um horário",
        "4. Ver meus agendamentos", "5. Cancelar um agendamento", "6. Falar com um atendente",
    ]  # fmt: skip
    await menu.say(ANA, "3")
    assert waha.to(ANA)[-1].startswith("Qual serviço você quer agendar?\n1. Consulta\n2. Limpeza")
    await menu.say(ANA, "1")
    offer = waha.to(ANA)[-1].splitlines()
    assert offer[:3] == ["Horários livres para *Consulta*:", f"1. seg {day} às 10:00",
                         f"2. seg {day} às 10:30"]  # fmt: skip
    await menu.say(ANA, "2")
    assert waha.to(ANA)[-1] == f"Confirma *Consulta* em *seg {day} às 10:30*?\n1. Sim\n2. Não"
    assert await aredis.zcard(keys.customer(token)) == 0  # asked, not booked
    # A yes word inside a question or another time is no answer: asked again, nothing booked.
    for not_an_answer in ("Pode ser mais tarde?", "quero às 15h"):
        await menu.say(ANA, not_an_answer)
        assert waha.to(ANA)[-1].endswith(f"*seg {day} às 10:30*?\n1. Sim\n2. Não")
        assert await aredis.zcard(keys.customer(token)) == 0
    await menu.say(ANA, "1")
    assert (
        waha.to(ANA)[-2] == f"Pronto! ✅ Horário de *Consulta* marcado para *seg {day} às 10:30*."
    )
    assert waha.to(ANA)[-1].startswith("Como posso ajudar, Ana?")
    assert await aredis.zcard(keys.customer(token)) == 1

    await menu.say(ANA, "4")
    assert waha.to(ANA)[-2] == f"Seus agendamentos:\n• Consulta: seg {day} às 10:30"
    await menu.say(ANA, "2")
    assert waha.to(ANA)[-2].startswith(
        "Nosso horário de atendimento:\nsegunda: 08:00-12:00, 13:00-18:00"
    )
    await menu.say(ANA, "5")
    assert waha.to(ANA)[-1] == (
        f"Qual agendamento você quer cancelar?\n1. Consulta: seg {day} às 10:30\n"
        "Responda com o número."
    )
    await menu.say(ANA, "1")
    assert (
        waha.to(ANA)[-1]
        == f"Confirma o cancelamento de *Consulta* em *seg {day} às 10:30*?\n1. Sim\n2. Não"
    )
    await menu.say(ANA, "sim")
    assert (
        waha.to(ANA)[-2] == f"Pronto: o horário de *Consulta* em seg {day} às 10:30 foi cancelado."
    )
    assert await aredis.zcard(keys.customer(token)) == 0
    assert await aredis.hgetall(keys.day(str(now.date()))) == {}
    assert groq.requests == []

    # The last option still reaches a person: the engine puts the customer in line.
    await menu.say(ANA, "6")
    assert waha.to(ANA)[-1].startswith("Você é o 1º da fila")


async def test_a_fallback_mid_conversation_is_seamless(
    harness, groq, waha, aredis, key_prefix, now
) -> None:
    agent = harness()
    groq.policy = receptionist
    await agent.say(ANA, "Quero marcar o primeiro horário de consulta")
    assert waha.to(ANA)[-1].startswith("Confirma Consulta")
    # Groq goes away (503 Service Unavailable) just as the customer says yes.
    groq.policy = lambda request: httpx.Response(
        503, json={"error": {"message": "Service Unavailable", "type": "service_unavailable"}}
    )
    await agent.say(ANA, "sim")
    assert (
        waha.to(ANA)[-2]
        == f"Pronto! ✅ Horário de *Consulta* marcado para *seg {now:%d/%m} às 10:00*."
    )
    assert await aredis.zcard(CalendarKeys(key_prefix).customer(f"default|{ANA}")) == 1
