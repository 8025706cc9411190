"""The state machine: the table in code is the table in docs/conversations.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.state import (
    TRANSITIONS,
    ConversationState,
    InvalidTransition,
    State,
    Trigger,
    next_state,
    transitions_markdown,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "conversations.md"


def test_docs_show_the_transition_table_of_the_code() -> None:
    assert transitions_markdown() in DOC.read_text("utf-8")


def test_every_state_is_reachable_and_closed_reopens() -> None:
    targets = set(TRANSITIONS.values()) | {State.NEW}
    assert targets == set(State)
    assert next_state(State.CLOSED, Trigger.CUSTOMER_MESSAGE) is State.BOT
    assert next_state(State.BOT, Trigger.BUSINESS_REPLIED) is State.PAUSED
    assert next_state(State.PAUSED, Trigger.HANDBACK) is State.BOT


def test_anything_not_in_the_table_is_refused() -> None:
    with pytest.raises(InvalidTransition):
        next_state(State.CLOSED, Trigger.AGENT_TOOK)
    with pytest.raises(InvalidTransition):
        ConversationState(state=State.BOT).moved(Trigger.LEFT_LINE)


def test_state_round_trips_through_its_hash() -> None:
    state = ConversationState(
        state=State.WAITING, step="menu", collected={"name": "Ana", "service": "Exame"},
        phone="5511", line_entered_at=5, line_position=2, version=7,
    )  # fmt: skip
    raw = {k.encode(): v.encode() for k, v in state.to_hash().items()}
    assert ConversationState.from_hash(raw) == state
    assert ConversationState.from_hash({}) == ConversationState()


async def test_customer_messages_in_paused_keep_the_bot_quiet(
    aredis, key_prefix, waha, make_harness
) -> None:
    """Behaviour, through the real queue protocol: once someone answered from the business's
    phone, the customer's messages stay with that person. The conversation stays `paused`
    through several of them (had the first moved it to `bot`, the second would get a bot
    reply)."""
    from engine.state import load_state
    from shared.keys import engine_keys_for
    from tests.support.waha import from_me, text_message

    ANA = "5511987650001@c.us"

    async def state() -> State:
        keys = engine_keys_for("default", ANA, 1, key_prefix)
        return (await load_state(aredis, keys.state)).state

    harness = make_harness()
    await harness.say(ANA, "oi")
    await harness.webhook(from_me(ANA, "Oi Ana, aqui é a Júlia!", "HUMAN1"))
    await harness.drain()
    assert await state() is State.PAUSED
    sent_before = len(waha.sent)

    for text in ("Ana", "1", "oi?"):
        await harness.webhook(text_message(ANA, text))
        await harness.drain()
        assert await state() is State.PAUSED
    assert len(waha.sent) == sent_before  # the bot never answered over the person
