"""The agent's turn deadline (WSM_LLM_TURN_DEADLINE_SECONDS) bounds the whole turn, its tools
included (engine/agent/groq_brain.py): a booking held up by a slow Redis is cut at the
deadline and the menu answers the message, as on any failure of the model; the change the
customer said yes to is made once and told once, and the breaker is not blamed for Redis. A
handoff the model asked for in the round the deadline cut still puts the customer in line.

Redis is the test's private redis-server, made slow for real: CLIENT PAUSE WRITE stops it
taking writes (the booking's script waits; reads go on) until CLIENT UNPAUSE. Groq is stood in
for by respx (the receptionist of receptionist.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from engine.agent.breaker import BreakerState
from engine.agent.confirmation import PENDING_KEY
from engine.agent.texts import load_agent_texts
from engine.agent.tools import ToolSession
from tests.engine.agent.chat import Chat
from tests.engine.agent.fake_groq import completion, tool_call
from tests.engine.agent.receptionist import receptionist
from tests.engine.agent.support import ANA, ana_with_a_booking
from tests.support.metrics import Counted
from tests.support.polling import async_wait_until

MENU_BOOK = "3. Agendar um horário"
DEADLINE = 0.3
# Longer than the test ever runs: the test itself ends the pause (CLIENT UNPAUSE).
PAUSE_MS = 30_000


async def test_a_booking_stalled_by_redis_is_cut_at_the_deadline_and_made_once(
    make_agent, groq, aredis, key_prefix, now
) -> None:
    # Token counting off: its write, between the model's answer and the tool, would wait too.
    parts = make_agent(
        llm_turn_deadline_seconds=DEADLINE, agent_tokens_per_day=0, llm_breaker_failures=1
    )
    groq.policy = receptionist
    chat = Chat(ANA).named("Ana")
    await chat.say(parts.brain, "quero marcar o primeiro horário de consulta")
    assert chat.replies[-1].startswith("Confirma Consulta")
    asked = len(groq.requests)

    async def redis_stalls(request: dict[str, Any]) -> dict[str, Any]:
        # From the model's answer on, Redis takes no writes: the booking's script waits.
        await aredis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        return receptionist(request)

    groq.policy = redis_stalls
    fallbacks = Counted("wsm_llm_fallbacks_total", reason="timeout")
    started = time.monotonic()
    turn = asyncio.create_task(chat.say(parts.brain, "sim"))
    try:

        async def menu_took_over() -> bool:
            return fallbacks.delta == 1

        await async_wait_until(menu_took_over, timeout=3, what="the menu at the turn's deadline")
        cut = time.monotonic() - started
        assert not turn.done()  # the menu's booking waits for Redis as well
    finally:
        await aredis.execute_command("CLIENT", "UNPAUSE")
    decision = await turn
    assert DEADLINE <= cut < DEADLINE + 0.7, cut
    # One answer, the menu's: the booking the customer said yes to, made and told once.
    assert decision.replies[0] == (
        f"Pronto! ✅ Horário de *Consulta* marcado para *seg {now:%d/%m} às 10:00*."
    )
    assert len(decision.replies) == 2 and MENU_BOOK in decision.replies[1]
    assert await chat.booked(aredis, key_prefix) == 1
    assert chat.state.collected[PENDING_KEY] == ""
    assert len(groq.requests) == asked + 1  # the model was not asked again after the cut
    # A slow Redis says nothing about the model: one failure would have opened the breaker.
    assert parts.breaker.state is BreakerState.CLOSED


async def test_a_model_still_answering_at_the_deadline_is_blamed(make_agent, groq) -> None:
    """The other side: a deadline that strikes while the model answers is the model's
    timeout, counted by the breaker as before."""
    parts = make_agent(llm_turn_deadline_seconds=DEADLINE, llm_breaker_failures=1)
    release = asyncio.Event()

    async def slow(request: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return completion("tarde demais")

    groq.policy = slow
    fallbacks = Counted("wsm_llm_fallbacks_total", reason="timeout")
    decision = await Chat(ANA).named("Ana").say(parts.brain, "oi")
    release.set()
    assert MENU_BOOK in decision.replies[-1] and fallbacks.delta == 1
    assert parts.breaker.state is BreakerState.OPEN


HANDING_OFF = "Vou te passar para uma pessoa da equipe."
UNCONFIRMED = load_agent_texts("pt-BR").render("change_unconfirmed")


def confirms_and_hands_off(booking_id: str) -> dict[str, Any]:
    """The model's round: a tool that writes (its write waits for a paused Redis) and, after it
    in the model's order, the handoff."""
    return completion(
        HANDING_OFF,
        [
            tool_call("confirm_appointment", {"booking_id": booking_id}),
            tool_call("handoff_to_human", {"reason": "quer falar com uma pessoa"}),
        ],
    )


async def test_a_handoff_beside_a_tool_cut_at_the_deadline_still_hands_off(
    make_agent, groq, aredis, now
) -> None:
    parts = make_agent(
        llm_turn_deadline_seconds=DEADLINE, agent_tokens_per_day=0, llm_breaker_failures=1
    )
    ana, booking_id = await ana_with_a_booking(parts.brain, groq, now)

    async def redis_stalls(request: dict[str, Any]) -> dict[str, Any]:
        await aredis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        return confirms_and_hands_off(booking_id)

    groq.policy = redis_stalls
    fallbacks = Counted("wsm_llm_fallbacks_total", reason="timeout")
    started = time.monotonic()
    try:
        # A bound of the test's own: the turn must end at its deadline, Redis still paused.
        decision = await asyncio.wait_for(
            ana.say(parts.brain, "confirmo, mas quero falar com um atendente"), 3
        )
        took = time.monotonic() - started
    finally:
        await aredis.execute_command("CLIENT", "UNPAUSE")
    assert DEADLINE <= took < DEADLINE + 0.7, took
    # The customer asked for a person: in line, not shown the menu. The confirmation was cut:
    # whether it was made is not known, so they are told that, not the model's words of the
    # round (written before its tools ran, they could say it was done).
    assert decision.hands_off and decision.requests[0].reason == "quer falar com uma pessoa"
    assert decision.replies == [UNCONFIRMED]
    assert decision.step == "agent"
    assert fallbacks.delta == 0 and len(groq.requests) == 1
    assert parts.breaker.state is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("tool", "arguments", "told"),
    [
        ("list_my_appointments", {}, HANDING_OFF),  # a read: nothing to be unsure of
        ("cancel_appointment", {"booking_id": "bk1"}, UNCONFIRMED),
    ],
)
async def test_a_handoff_cut_before_its_tools_says_the_change_is_unconfirmed_only_for_a_change(
    make_agent, groq, aredis, tool: str, arguments: dict[str, Any], told: str
) -> None:
    """The deadline in the token count, before the round's other tools ran: the customer is
    handed off either way, and told a change is unconfirmed only when a change was asked."""
    parts = make_agent(llm_turn_deadline_seconds=DEADLINE, llm_breaker_failures=1)

    async def redis_stalls(request: dict[str, Any]) -> dict[str, Any]:
        await aredis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        return completion(
            HANDING_OFF,
            [tool_call(tool, arguments), tool_call("handoff_to_human", {"reason": "pediu"})],
        )

    groq.policy = redis_stalls
    try:
        decision = await asyncio.wait_for(
            Chat(ANA).named("Ana").say(parts.brain, "e quero falar com um atendente"), 3
        )
    finally:
        await aredis.execute_command("CLIENT", "UNPAUSE")
    assert decision.hands_off and decision.replies == [told]


async def test_a_change_that_finished_before_the_cut_keeps_the_models_words(
    make_agent, groq, now, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only what the deadline cut counts: the cancellation's proposal finished before a slower
    tool after it was cut, so the model's question stands."""
    parts = make_agent(
        llm_turn_deadline_seconds=DEADLINE, agent_tokens_per_day=0, llm_breaker_failures=1
    )
    ana, booking_id = await ana_with_a_booking(parts.brain, groq, now)

    async def slow(self: ToolSession, args: Any) -> dict[str, Any]:
        await asyncio.sleep(60)  # cut by the deadline
        return {"ok": True}

    monkeypatch.setattr(ToolSession, "_list_my_appointments", slow)
    asking = "Confirma o cancelamento? Também vou te passar para uma pessoa."
    groq.then(
        completion(
            asking,
            [
                tool_call("cancel_appointment", {"booking_id": booking_id}),
                tool_call("list_my_appointments", {}),
                tool_call("handoff_to_human", {"reason": "pediu"}),
            ],
        )
    )
    decision = await asyncio.wait_for(ana.say(parts.brain, "quero cancelar e falar com alguém"), 3)
    assert decision.hands_off and decision.replies == [asking]


async def test_a_handoff_survives_a_deadline_in_the_token_count(make_agent, groq, aredis) -> None:
    """The model's tokens are counted (a Redis write) between its answer and the tools: a
    deadline there must not drop the handoff either."""
    parts = make_agent(llm_turn_deadline_seconds=DEADLINE, llm_breaker_failures=1)

    async def redis_stalls(request: dict[str, Any]) -> dict[str, Any]:
        await aredis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        return completion(HANDING_OFF, [tool_call("handoff_to_human", {"reason": "pediu"})])

    groq.policy = redis_stalls
    try:
        decision = await asyncio.wait_for(
            Chat(ANA).named("Ana").say(parts.brain, "quero falar com um atendente"), 3
        )
    finally:
        await aredis.execute_command("CLIENT", "UNPAUSE")
    assert decision.hands_off and decision.replies == [HANDING_OFF]
