"""The state machine's less-travelled rows, as a customer and the business live them: someone
answering from the business's phone while an attendant, the waiting line or a closed
conversation has the customer; an attendant taking over from the phone; and a paused
conversation going quiet. Each drives the engine through the real queue protocol, and each
fails if its row of engine/state.py's table is changed (the mutation run found that only the
docs-table test looked at them)."""

from __future__ import annotations

from typing import Any

from engine import commands
from engine.state import ConversationState, State, load_state
from shared.keys import engine_keys_for
from tests.engine.harness import Harness
from tests.engine.line_support import ask_for_a_person
from tests.support.polling import async_wait_until
from tests.support.waha import from_me

ANA = "5511987650001@c.us"
ANA_TOKEN = f"default|{ANA}"


async def state_of(harness: Harness, chat: str = ANA) -> ConversationState:
    keys = engine_keys_for("default", chat, 1, harness.settings.key_prefix)
    return await load_state(harness.redis, keys.state)


async def phone_says(harness: Harness, text: str, message_id: str) -> None:
    """A person of the business answers Ana from the business's own WhatsApp."""
    await harness.webhook(from_me(ANA, text, message_id))
    await harness.drain()


async def attendant_writes(harness: Harness, text: str, event_id: str) -> None:
    await harness.service.coordinator.queue.send(
        "default", ANA, commands.AGENT_MESSAGE,
        {"text": text, "agent_id": "maria", "agent_name": "Maria"}, event_id=event_id,
    )  # fmt: skip
    await harness.drain()


async def bot_is_quiet(harness: Harness, waha: Any, text: str) -> bool:
    """Ana writes `text`: True when nothing is sent to her (a person has her, not the bot)."""
    sent = len(waha.sent)
    await harness.say(ANA, text)
    return len(waha.sent) == sent


async def test_the_phone_answering_an_attendants_customer_leaves_her_with_the_attendant(
    waha: Any, make_harness: Any
) -> None:
    """Maria took Ana from the line; a colleague then answers Ana from the phone. Ana stays
    Maria's (`agent`, Maria's count unchanged): the phone is not a second owner, and pausing
    would hide Ana from Maria's console. The bot stays quiet on Ana's next message."""
    harness = make_harness(conversations_per_agent=1)
    line = harness.service.coordinator.line
    await line.set_online("maria", "Maria", 1)
    await ask_for_a_person(harness, ANA, "Ana")
    assert waha.to(ANA)[-1] == "Maria vai te atender agora. 🙋"

    await phone_says(harness, "Oi Ana, a Maria já vem!", "PHONE1")
    state = await state_of(harness)
    assert (state.state, state.agent_id) == (State.AGENT, "maria")
    assert await line.assignments(["maria"]) == {"maria": {ANA_TOKEN}}
    assert await bot_is_quiet(harness, waha, "obrigada")


async def test_the_phone_answering_a_customer_in_line_takes_her_out_of_it(
    waha: Any, make_harness: Any
) -> None:
    """Ana waits in line (nobody online); the business answers her from the phone. She leaves
    the line (nobody would take her twice) and the conversation is `paused`: the person on
    the phone has her, and the bot does not answer her next message."""
    harness = make_harness()
    line = harness.service.coordinator.line
    await ask_for_a_person(harness, ANA, "Ana")
    assert (await state_of(harness)).state is State.WAITING
    assert await line.length("default") == 1

    await phone_says(harness, "Oi Ana, pode falar comigo", "PHONE2")
    assert (await state_of(harness)).state is State.PAUSED
    assert await line.length("default") == 0
    assert await bot_is_quiet(harness, waha, "oi")


async def test_the_phone_writing_to_a_closed_conversation_keeps_the_bot_out_of_it(
    waha: Any, make_harness: Any
) -> None:
    """An attendant closed Ana's conversation; later the business writes to her from the
    phone. Her answer goes to that person, not to the bot's greeting: the conversation is
    `paused`, not reopened to the bot."""
    harness = make_harness()
    await harness.say(ANA, "oi")
    await harness.service.coordinator.queue.send(
        "default", ANA, commands.CLOSE, {"by": "maria"}, event_id="close:ana"
    )
    await harness.drain()
    assert (await state_of(harness)).state is State.CLOSED

    await phone_says(harness, "Ana, seu exame ficou pronto", "PHONE3")
    assert (await state_of(harness)).state is State.PAUSED
    assert await bot_is_quiet(harness, waha, "que bom, obrigada")


async def test_an_attendant_writing_to_a_paused_conversation_takes_it(
    waha: Any, make_harness: Any
) -> None:
    """The business answered Ana from the phone (`paused`); then Maria writes to her from the
    console. The conversation becomes Maria's (`agent`, counted for her), so it shows among
    her conversations and closes through her."""
    harness = make_harness(conversations_per_agent=2)
    line = harness.service.coordinator.line
    await line.set_online("maria", "Maria", 2)
    await harness.say(ANA, "oi")
    await phone_says(harness, "Oi Ana!", "PHONE4")
    assert (await state_of(harness)).state is State.PAUSED

    await attendant_writes(harness, "Oi Ana, sou a Maria", "agent:ana:paused")
    state = await state_of(harness)
    assert (state.state, state.agent_id) == (State.AGENT, "maria")
    assert waha.to(ANA)[-1] == "Oi Ana, sou a Maria"
    assert await line.assignments(["maria"]) == {"maria": {ANA_TOKEN}}


async def test_a_paused_conversation_left_quiet_closes_without_the_bots_goodbye(
    waha: Any, make_harness: Any
) -> None:
    """A conversation paused by the phone and then left quiet closes like any other, so the
    customer's next message gets the bot again; the bot says no goodbye over the person who
    was talking to her."""
    harness = make_harness(inactivity_close_seconds=1)
    await harness.say(ANA, "oi")
    await phone_says(harness, "Oi Ana!", "PHONE5")
    sent = len(waha.sent)

    async def closed() -> bool:
        await harness.service.timers_once()
        await harness.drain()
        return (await state_of(harness)).state is State.CLOSED

    await async_wait_until(closed, timeout=10, interval=0.2, what="inactivity close")
    assert len(waha.sent) == sent
    await harness.say(ANA, "oi de novo")
    assert len(waha.sent) > sent
    assert (await state_of(harness)).state is State.BOT
