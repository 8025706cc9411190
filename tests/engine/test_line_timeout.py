"""The waiting line's timeout (WSM_WAITING_TIMEOUT_SECONDS), end to end on the real queue
protocol: a customer waiting too long leaves the line and is told, the conversation closes, and
everyone behind moves up. The engine's clock is driven (no sleeping): the timers and the
handler read the time through the `now_ms` of their modules."""

from __future__ import annotations

from typing import Any

import pytest

from engine import service as engine_service
from engine.state import State, load_state
from engine.texts import DEFAULTS
from engine.turn import frame as engine_handler
from shared.keys import engine_keys_for
from tests.engine.harness import Harness
from tests.engine.line_support import ask_for_a_person

FIRST = "5511900000101@c.us"
SECOND = "5511900000102@c.us"
TIMEOUT_S = 600
LINE_TIMEOUT_TEXT = DEFAULTS["pt-BR"]["line_timeout"]


class Clock:
    """The real time plus an offset the test moves forward."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset_ms = 0
        real = engine_handler.now_ms
        for module in (engine_handler, engine_service):
            monkeypatch.setattr(module, "now_ms", lambda: real() + self.offset_ms)

    def advance(self, seconds: float) -> None:
        self.offset_ms += int(seconds * 1000)


async def state_of(aredis: Any, prefix: str, chat: str) -> State:
    return (await load_state(aredis, engine_keys_for("default", chat, 1, prefix).state)).state


async def fire_timers(harness: Harness) -> None:
    await harness.service.timers_once()
    await harness.drain()


async def line_tokens(harness: Harness) -> list[str]:
    return [w.token for w in await harness.service.coordinator.line.members("default")]


async def test_a_customer_waiting_too_long_leaves_the_line_and_the_next_moves_up(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    # Nobody online: whoever asks for a person waits.
    harness = make_harness(
        waiting_timeout_seconds=TIMEOUT_S, inactivity_close_seconds=10 * TIMEOUT_S
    )
    await ask_for_a_person(harness, FIRST, "Primeira")
    assert waha.to(FIRST)[-1].startswith("Você é o 1º da fila")
    clock.advance(TIMEOUT_S / 2)
    await ask_for_a_person(harness, SECOND, "Segunda")
    assert waha.to(SECOND)[-1].startswith("Você é o 2º da fila")

    # Not due yet for anyone: nothing happens.
    await fire_timers(harness)
    assert await line_tokens(harness) == [f"default|{FIRST}", f"default|{SECOND}"]

    # Past the first customer's timeout, not the second's.
    clock.advance(TIMEOUT_S / 2 + 1)
    await fire_timers(harness)
    assert waha.to(FIRST)[-1] == LINE_TIMEOUT_TEXT
    assert await state_of(aredis, key_prefix, FIRST) is State.CLOSED
    assert await line_tokens(harness) == [f"default|{SECOND}"]
    assert waha.to(SECOND)[-1].startswith("Você é o próximo da fila!")
    assert await state_of(aredis, key_prefix, SECOND) is State.WAITING

    # Then the second's.
    clock.advance(TIMEOUT_S / 2)
    await fire_timers(harness)
    assert waha.to(SECOND)[-1] == LINE_TIMEOUT_TEXT
    assert await state_of(aredis, key_prefix, SECOND) is State.CLOSED
    assert await line_tokens(harness) == []

    # Closed, not lost: writing again reopens the conversation with the bot.
    await harness.say(FIRST, "oi de novo")
    assert await state_of(aredis, key_prefix, FIRST) is State.BOT


async def test_an_inactivity_close_counts_the_handling_up_to_the_last_message(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an audit: a two-minute conversation closed for inactivity half an hour later
    was counted as 32 minutes of handling, and every estimate grew by as much."""
    clock = Clock(monkeypatch)
    harness = make_harness(inactivity_close_seconds=1800)
    line = harness.service.coordinator.line
    await line.set_online("maria", "Maria", 1)
    await ask_for_a_person(harness, FIRST, "Primeira")
    assert await state_of(aredis, key_prefix, FIRST) is State.AGENT
    clock.advance(120)  # two minutes of conversation
    await harness.say(FIRST, "obrigada, era só isso")
    clock.advance(1800 + 5)  # then silence, until the inactivity close
    await fire_timers(harness)
    assert await state_of(aredis, key_prefix, FIRST) is State.CLOSED
    samples = [float(s) for s in await aredis.lrange(line.keys.handling_times("default"), 0, -1)]
    assert len(samples) == 1 and 119 <= samples[0] <= 125, samples
