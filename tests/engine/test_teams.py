"""Teams (issue 16): the business file's `teams`; with more than one, asking for a person asks
which one as a numbered choice; each team has its own line with its own positions; an agent
takes the longest-waiting customer of their teams' lines only. End to end on the real queue
protocol and Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import commands
from engine.state import State, load_state
from engine.texts import DEFAULTS
from shared.keys import engine_keys_for
from tests.engine.harness import Harness
from tests.engine.line_support import TWO_TEAMS, business_file
from tests.support.waha import from_me, text_message

__all__ = ["business_file"]  # the two-team business file fixture

ANA = "5511900000301@c.us"  # Financeiro
BIA = "5511900000302@c.us"  # Recepção
CAIO = "5511900000303@c.us"  # Financeiro
PT = DEFAULTS["pt-BR"]


async def say(harness: Harness, chat: str, *texts: str) -> None:
    for text in texts:
        await harness.webhook(text_message(chat, text))
    await harness.drain()
    await harness.service.coordinator.maintain()
    await harness.drain()


async def state_of(aredis: Any, prefix: str, chat: str) -> Any:
    return await load_state(aredis, engine_keys_for("default", chat, 1, prefix).state)


QUESTION = PT["team_question"].format(teams="1. Recepção\n2. Financeiro", leave_word="sair")


async def test_which_team_is_a_numbered_choice_and_each_line_counts_its_own(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any, business_file: Path
) -> None:
    harness = make_harness(calendar_file=business_file)
    await say(harness, ANA, "oi", "Ana", "3")
    assert waha.to(ANA)[-1] == QUESTION
    assert (await state_of(aredis, key_prefix, ANA)).state is State.BOT
    # Not one of the options: asked again, nothing entered.
    await say(harness, ANA, "9")
    assert waha.to(ANA)[-2:] == [PT["invalid_option"], QUESTION]
    line = harness.service.coordinator.line
    assert await line.length("default") == 0

    await say(harness, ANA, "2")
    await say(harness, BIA, "oi", "Bia", "3", "recepção")  # a name works too
    await say(harness, CAIO, "oi", "Caio", "3", "2")
    # Each line's positions are its own: Bia is 1st of Recepção, Caio 2nd of Financeiro.
    assert waha.to(ANA)[-1].startswith("Você é o 1º da fila.")
    assert waha.to(BIA)[-1].startswith("Você é o 1º da fila.")
    assert waha.to(CAIO)[-1].startswith("Você é o 2º da fila.")
    assert [(w.token, w.position) for w in await line.members("default", "financeiro")] == [
        (f"default|{ANA}", 1), (f"default|{CAIO}", 2),
    ]  # fmt: skip
    assert [(w.token, w.position) for w in await line.members("default", "recepcao")] == [
        (f"default|{BIA}", 1)
    ]
    assert await line.members("default", "") == []
    # The choice is gone once made; the brain's step is back.
    ana = await state_of(aredis, key_prefix, ANA)
    assert ana.state is State.WAITING and ana.step != "line_team"


async def test_an_agent_takes_only_from_their_teams_lines(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any, business_file: Path
) -> None:
    harness = make_harness(calendar_file=business_file, conversations_per_agent=2)
    coordinator = harness.service.coordinator
    line = coordinator.line
    await say(harness, ANA, "oi", "Ana", "3", "2")  # Financeiro, first of all
    await say(harness, BIA, "oi", "Bia", "3", "1")  # Recepção

    # Rita is in Recepção only: she gets Bia, never Ana, though Ana waits longer.
    await line.set_online("rita", "Rita", 1, teams=["recepcao"])
    await coordinator.maintain()
    await harness.drain()
    assert (await state_of(aredis, key_prefix, BIA)).agent_id == "rita"
    assert (await state_of(aredis, key_prefix, ANA)).state is State.WAITING
    assert await coordinator.take_next("rita") is None  # room left, nobody of hers waits
    # Nor does an agent of no team take a team's customer.
    await line.set_online("zeca", "Zeca", 2)
    assert await coordinator.take_next("zeca") is None
    assert (await state_of(aredis, key_prefix, ANA)).state is State.WAITING

    # Fábio is in Financeiro: Ana is his.
    await line.set_online("fabio", "Fábio", 3, teams=["financeiro"])
    await coordinator.maintain()
    await harness.drain()
    ana = await state_of(aredis, key_prefix, ANA)
    assert ana.state is State.AGENT and ana.agent_id == "fabio"
    assert waha.to(ANA)[-1] == PT["line_taken"].format(agent="Fábio")
    agents = {a.id: a for a in await line.agents()}
    assert agents["fabio"].teams == ("financeiro",) and agents["fabio"].conversations == 1
    assert agents["zeca"].conversations == 0


async def test_the_longest_waiting_among_an_agents_teams(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any, business_file: Path
) -> None:
    harness = make_harness(calendar_file=business_file, conversations_per_agent=1)
    coordinator = harness.service.coordinator
    await say(harness, BIA, "oi", "Bia", "3", "1")  # Recepção, first
    await say(harness, ANA, "oi", "Ana", "3", "2")  # Financeiro, second
    await coordinator.line.set_online("lia", "Lia", 1, teams=["financeiro", "recepcao"])
    taken = await coordinator.take_next("lia")
    assert taken is not None and taken.token == f"default|{BIA}"
    await harness.drain()
    # Capacity is per agent: Lia is full.
    assert (await state_of(aredis, key_prefix, ANA)).state is State.WAITING


async def test_one_team_or_none_asks_nothing(waha: Any, make_harness: Any, tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    one.write_text(TWO_TEAMS[: TWO_TEAMS.index("  - id: financeiro")], "utf-8")
    harness = make_harness(calendar_file=one)
    await say(harness, ANA, "oi", "Ana", "3")
    assert waha.to(ANA)[-1].startswith("Você é o 1º da fila.")
    assert [w.team for w in await harness.service.coordinator.line.members("default")] == [""]


async def test_the_team_question_says_how_to_go_back_and_menu_does(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any, business_file: Path
) -> None:
    """Found by an audit: the question never said how to give up, and "menu" or "voltar"
    only asked it again. Giving up there is not "você saiu da fila" (a second audit): they
    were never in a line."""
    harness = make_harness(calendar_file=business_file)
    await say(harness, ANA, "oi", "Ana", "3")
    assert waha.to(ANA)[-1] == QUESTION and QUESTION.endswith("Para voltar, escreva *sair*.")
    await say(harness, ANA, "Menu")
    assert (
        waha.to(ANA)[-1]
        == PT["team_left"]
        == ("Tudo bem, você não entrou na fila. Se precisar, é só escrever de novo.")
    )
    state = await state_of(aredis, key_prefix, ANA)
    assert state.state is State.BOT and state.step != "line_team"
    assert await harness.service.coordinator.line.members("default", "") == []


@pytest.mark.parametrize(("text", "leaves"), [
    ("Sair!", True), ("quero sair", True), ("sair.", True), ("quero sair da fila", True),
    ("não quero sair", False), ("vou sair pra almoçar mas me chama depois", False),
])  # fmt: skip
async def test_leaving_the_line_in_a_few_words(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any, text: str, leaves: bool
) -> None:
    """Found by an audit: only the exact word left the line."""
    harness = make_harness()
    await say(harness, ANA, "oi", "Ana", "quero falar com um atendente", text)
    waiting = await harness.service.coordinator.line.members("default", "")
    assert (waiting == []) is leaves
    assert (waha.to(ANA)[-1] == PT["line_left"]) is leaves


async def test_asking_for_a_person_instead_of_a_name(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any
) -> None:
    """Found by an audit: "quero falar com um atendente" at the name question became the
    customer's name. A surname that is also a word for a person stays a name."""
    harness = make_harness()
    await say(harness, ANA, "oi", "quero falar com um atendente")
    assert waha.to(ANA)[-1].startswith("Você é o 1º da fila")
    assert "name" not in (await state_of(aredis, key_prefix, ANA)).collected
    await say(harness, BIA, "oi", "Fernando Pessoa")
    assert (await state_of(aredis, key_prefix, BIA)).collected["name"] == "Fernando Pessoa"


async def test_a_handback_after_the_phone_answered_during_the_team_question_asks_nothing(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any, business_file: Path
) -> None:
    """Ana asked for a person and was asked which team; someone answered her from the
    business's phone (paused), then handed her back to the bot. Her next message is not read
    as the team's answer (found by an audit: "obrigada" got the team question again): the
    bot's menu answers it, from the step it had before the question."""
    harness = make_harness(calendar_file=business_file)
    await say(harness, ANA, "oi", "Ana", "3")
    assert waha.to(ANA)[-1] == QUESTION
    await harness.webhook(from_me(ANA, "Oi Ana, aqui é a Clínica. Já te ajudo.", "3EB0PHONE01"))
    await harness.drain()
    assert (await state_of(aredis, key_prefix, ANA)).state is State.PAUSED
    await harness.service.coordinator.queue.send(
        "default", ANA, commands.HANDBACK, {}, event_id="handback-1"
    )
    await harness.drain()
    state = await state_of(aredis, key_prefix, ANA)
    assert state.state is State.BOT and state.step != "line_team"
    sent = len(waha.to(ANA))
    await say(harness, ANA, "obrigada")
    answers = waha.to(ANA)[sent:]
    assert QUESTION not in answers
    assert answers[-1].startswith("Como posso ajudar, Ana?")


def financeiro_to_vendas(path: Path) -> None:
    """The business file with Vendas where Financeiro was."""
    text = TWO_TEAMS.replace("id: financeiro\n    name: Financeiro", "id: vendas\n    name: Vendas")
    path.write_text(text, "utf-8")


async def test_a_team_gone_from_the_business_file_leaves_nobody_behind(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any, business_file: Path
) -> None:
    """Financeiro is taken out of the business file (and Vendas put in) while Ana and Caio
    wait in its line. After the restart they join the plain line, in the order they came,
    where every agent takes from: found by an audit, they were in no line the code looked at
    (no reply, not taken, not listed, and *sair* left them behind)."""
    harness = make_harness(calendar_file=business_file)
    await say(harness, ANA, "oi", "Ana", "3", "2")  # Financeiro
    await say(harness, BIA, "oi", "Bia", "3", "1")  # Recepção
    await say(harness, CAIO, "oi", "Caio", "3", "2")  # Financeiro
    financeiro_to_vendas(business_file)
    restarted = make_harness(calendar_file=business_file)
    coordinator = restarted.service.coordinator
    line = coordinator.line
    await coordinator.maintain()
    assert [(w.token, w.position, w.team) for w in await line.members("default")] == [
        (f"default|{ANA}", 1, ""), (f"default|{CAIO}", 2, ""), (f"default|{BIA}", 1, "recepcao"),
    ]  # fmt: skip
    assert await aredis.exists(line.line_key("default", "financeiro")) == 0

    await say(restarted, ANA, "ainda na fila?")
    assert waha.to(ANA)[-1].startswith("Você continua na fila: é o 1º")
    await say(restarted, CAIO, "sair")
    assert waha.to(CAIO)[-1] == PT["line_left"]
    assert [w.token for w in await line.members("default", "")] == [f"default|{ANA}"]
    # Zeca is in no team: the plain line is his too.
    await line.set_online("zeca", "Zeca", 1)
    await say(restarted, ANA)
    assert (await state_of(aredis, key_prefix, ANA)).agent_id == "zeca"
    assert waha.to(ANA)[-1] == PT["line_taken"].format(agent="Zeca")
    assert [w.token for w in await line.members("default", "recepcao")] == [f"default|{BIA}"]
