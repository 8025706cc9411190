"""The waiting line end to end: positions, assignments, leaving, notices, and a parked session."""

from __future__ import annotations

import httpx

from engine import commands
from engine.state import State, load_state
from shared.keys import engine_keys_for
from tests.engine.harness import Harness, session_status
from tests.engine.line_support import ask_for_a_person
from tests.support.waha import text_message

ZECA = "5511900000000@c.us"
CUSTOMERS = [f"551190000000{n}@c.us" for n in range(1, 6)]


async def close(harness: Harness, chat: str) -> None:
    await harness.service.coordinator.queue.send(
        "default", chat, commands.CLOSE, {"by": "maria"}, event_id=f"close:{chat}"
    )
    await harness.drain()
    await harness.service.coordinator.maintain()
    await harness.drain()


def line_notices(texts: list[str]) -> list[str]:
    return [t for t in texts if "da fila" in t or "vai te atender" in t]


async def test_five_customers_one_agent(aredis, key_prefix, waha, make_harness) -> None:
    """One agent online (one conversation at a time), already with Zeca. Five customers ask for
    a person: told places 1 to 5. The agent closes Zeca's conversation: the first is taken, the
    others are told their new places. The agent closes the first's: the second is told who took
    them. The third writes "sair": the fourth and fifth move up."""
    harness = make_harness(conversations_per_agent=1)
    await harness.service.coordinator.line.set_online("maria", "Maria", 1)
    await ask_for_a_person(harness, ZECA, "Zeca")
    assert waha.to(ZECA)[-1] == "Maria vai te atender agora. 🙋"
    for n, chat in enumerate(CUSTOMERS, start=1):
        await ask_for_a_person(harness, chat, f"Cliente {n}")
        assert waha.to(chat)[-1].startswith(f"Você é o {n}º da fila, cerca de ")
    await close(harness, ZECA)
    assert waha.to(ZECA)[-1].startswith("Vamos encerrar por aqui")
    assert waha.to(CUSTOMERS[0])[-1] == "Maria vai te atender agora. 🙋"
    assert waha.to(CUSTOMERS[1])[-1].startswith("Você é o próximo da fila!")
    for n, chat in enumerate(CUSTOMERS[2:], start=2):
        assert waha.to(chat)[-1].startswith(f"Agora você é o {n}º da fila")
    await close(harness, CUSTOMERS[0])
    assert waha.to(CUSTOMERS[1])[-1] == "Maria vai te atender agora. 🙋"
    assert waha.to(CUSTOMERS[2])[-1].startswith("Você é o próximo da fila!")
    await harness.webhook(text_message(CUSTOMERS[2], "sair"))
    await harness.drain()
    assert waha.to(CUSTOMERS[2])[-1].startswith("Você saiu da fila.")
    assert waha.to(CUSTOMERS[3])[-1].startswith("Você é o próximo da fila!")
    assert waha.to(CUSTOMERS[4])[-1].startswith("Agora você é o 2º da fila")
    line = harness.service.coordinator.line
    assert [w.token for w in await line.members("default")] == [
        f"default|{CUSTOMERS[3]}", f"default|{CUSTOMERS[4]}",
    ]  # fmt: skip
    for chat, expected in zip(
        CUSTOMERS, ("closed", "agent", "bot", "waiting", "waiting"), strict=True
    ):
        state = await load_state(aredis, engine_keys_for("default", chat, 1, key_prefix).state)
        assert state.state.value == expected, chat
    # Each position was told once: nobody heard the same place twice.
    for chat in CUSTOMERS:
        notices = line_notices(waha.to(chat))
        assert len(notices) == len(set(notices)), (chat, notices)


async def test_position_notices_respect_the_interval_but_the_front_is_always_told(
    aredis, key_prefix, waha, make_harness
) -> None:
    harness = make_harness(conversations_per_agent=1, position_notice_interval_seconds=3600)
    await harness.service.coordinator.line.set_online("maria", "Maria", 1)
    await ask_for_a_person(harness, ZECA, "Zeca")
    for n, chat in enumerate(CUSTOMERS[:3], start=1):
        await ask_for_a_person(harness, chat, f"Cliente {n}")
    await close(harness, ZECA)
    await harness.service.coordinator.maintain()
    await harness.drain()
    assert line_notices(waha.to(CUSTOMERS[1])) == [
        line_notices(waha.to(CUSTOMERS[1]))[0], "Você é o próximo da fila! Um atendente vai "
        "falar com você em instantes.",
    ]  # fmt: skip
    # 3rd -> 2nd within the interval: not told (one notice per interval).
    assert len(line_notices(waha.to(CUSTOMERS[2]))) == 1
    # Writing while waiting does not bypass the interval either.
    await harness.webhook(text_message(CUSTOMERS[2], "e aí?"))
    await harness.drain()
    assert len(line_notices(waha.to(CUSTOMERS[2]))) == 1


async def test_422_parks_then_session_status_working_delivers(
    aredis, key_prefix, waha, make_harness
) -> None:
    harness = make_harness()
    waha.failures.append(
        httpx.Response(422, json={"statusCode": 422, "message": "Session status is not as "
                                  "expected. Try again later or restart the session",
                                  "error": "Unprocessable Entity"})
    )  # fmt: skip
    await harness.webhook(text_message(CUSTOMERS[0], "oi"))
    await harness.drain()
    assert waha.sent == []
    state = await load_state(aredis, engine_keys_for("default", CUSTOMERS[0], 1, key_prefix).state)
    assert state.state is State.BOT
    await harness.webhook(session_status("default", "WORKING"))
    await harness.drain()
    assert len(waha.to(CUSTOMERS[0])) == 1


async def test_an_agent_who_takes_by_hand_is_never_given_a_customer(
    aredis, key_prefix, waha, make_harness
) -> None:
    """The console's agents take customers by hand ("Atender próximo"): online with room,
    they are not given anyone by the line's automatic assignment, which still gives the
    longest-waiting customer to an agent put online by the API."""
    harness = make_harness(conversations_per_agent=1)
    coordinator = harness.service.coordinator
    await coordinator.line.set_online("ana", "Ana", 1, by_hand=True)
    await ask_for_a_person(harness, CUSTOMERS[0], "Cliente 1")
    await ask_for_a_person(harness, CUSTOMERS[1], "Cliente 2")
    await coordinator.maintain()
    await harness.drain()
    assert waha.to(CUSTOMERS[0])[-1].startswith("Você é o 1º da fila, cerca de ")
    assert [a.conversations for a in await coordinator.line.agents()] == [0]

    taken = await coordinator.take_next("ana")  # "Atender próximo": the longest-waiting
    assert taken is not None and taken.token == f"default|{CUSTOMERS[0]}"
    await harness.drain()
    assert waha.to(CUSTOMERS[0])[-1] == "Ana vai te atender agora. 🙋"

    await coordinator.line.set_online("maria", "Maria", 2)  # by the API: given at once
    await coordinator.maintain()
    await harness.drain()
    assert waha.to(CUSTOMERS[1])[-1] == "Maria vai te atender agora. 🙋"


async def test_the_front_of_the_line_with_nobody_online_is_promised_no_one(
    aredis, key_prefix, waha, make_harness
) -> None:
    """Found by an audit: the first in line was told "um atendente vai falar com você em
    instantes" with nobody online."""
    harness = make_harness()
    for n, chat in enumerate(CUSTOMERS[:2], start=1):
        await ask_for_a_person(harness, chat, f"Cliente {n}")
    await harness.webhook(text_message(CUSTOMERS[0], "sair"))
    await harness.drain()
    await harness.service.coordinator.maintain()
    await harness.drain()
    assert waha.to(CUSTOMERS[1])[-1] == (
        "Você é o próximo da fila! Ninguém da equipe está online agora: assim que alguém "
        "entrar, vai falar com você."
    )
