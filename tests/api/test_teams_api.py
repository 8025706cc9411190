"""Teams through the operator API and `wsm agent add --team` (issue 16): an agent online with
`{"teams": [...]}` takes only customers of their teams (`POST /api/queue/next` answers 204 for
a Recepção agent while only a Financeiro customer waits), an agent of Financeiro takes them,
`GET /api/queue` shows each line's own positions; invalid teams are refused with nothing
stored."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from engine.state import State, load_state
from shared.keys import LineKeys, conversation_token, engine_keys_for
from tests.api.conftest import API_AUTH, API_TOKEN
from tests.engine.harness import Harness, settings_for
from tests.engine.line_support import business_file
from tests.support.asgi import served
from tests.support.waha import text_message

__all__ = ["business_file"]  # the two-team business file fixture

ANA = "5511900000401@c.us"
BIA = "5511900000402@c.us"
CAIO = "5511900000403@c.us"


@pytest.fixture
async def parts(
    aredis: Any, redis_url: str, key_prefix: str, business_file: Path, waha: Any
) -> AsyncIterator[tuple[Harness, httpx.AsyncClient]]:
    # Agents take customers only through queue/next here (no automatic assignment).
    settings = settings_for(
        key_prefix, redis_url, api_token=API_TOKEN, calendar_file=business_file,
        auto_assign=False,
    )  # fmt: skip
    harness = Harness(aredis, settings)
    async with served(create_app(settings, aredis)) as client:
        yield harness, client
    await harness.aclose()


async def ask_for(harness: Harness, chat: str, name: str, team_number: str) -> None:
    for text in ("oi", name, "3", team_number):
        await harness.webhook(text_message(chat, text))
    await harness.drain()


async def test_a_financeiro_customer_is_not_taken_by_a_recepcao_agent(
    parts: tuple[Harness, httpx.AsyncClient], aredis: Any, key_prefix: str
) -> None:
    harness, client = parts
    await ask_for(harness, ANA, "Ana", "2")  # Financeiro
    online = await client.post(
        "/api/agents/rita/online", json={"name": "Rita", "teams": ["recepcao"]}, headers=API_AUTH
    )
    assert online.status_code == 200 and online.json()["teams"] == ["recepcao"]
    answer = await client.post("/api/queue/next?agent_id=rita", headers=API_AUTH)
    assert answer.status_code in (204, 409)
    state = await load_state(aredis, engine_keys_for("default", ANA, 1, key_prefix).state)
    assert state.state is State.WAITING

    await ask_for(harness, BIA, "Bia", "1")  # Recepção
    await ask_for(harness, CAIO, "Caio", "2")  # Financeiro
    queue = (await client.get("/api/queue", headers=API_AUTH)).json()
    assert [(q["team"], q["chat_id"], q["position"]) for q in queue] == [
        ("recepcao", BIA, 1), ("financeiro", ANA, 1), ("financeiro", CAIO, 2),
    ]  # fmt: skip

    await client.post(
        "/api/agents/fabio/online", json={"name": "Fábio", "teams": ["financeiro"]},
        headers=API_AUTH,
    )  # fmt: skip
    taken = await client.post("/api/queue/next?agent_id=fabio", headers=API_AUTH)
    assert taken.status_code == 200 and taken.json()["chat_id"] == ANA
    await harness.drain()
    state = await load_state(aredis, engine_keys_for("default", ANA, 1, key_prefix).state)
    assert state.state is State.AGENT and state.agent_id == "fabio"
    # Rita's next is Bia, never Caio.
    taken = await client.post("/api/queue/next?agent_id=rita", headers=API_AUTH)
    assert taken.status_code == 200 and taken.json()["chat_id"] == BIA
    agents = {a["id"]: a for a in (await client.get("/api/agents", headers=API_AUTH)).json()}
    assert agents["rita"]["teams"] == ["recepcao"] and agents["fabio"]["teams"] == ["financeiro"]


@pytest.mark.parametrize("teams", [["Financeiro"], ["a b"], "financeiro", [""]])
async def test_invalid_teams_are_refused_and_nothing_is_stored(
    parts: tuple[Harness, httpx.AsyncClient], sync_redis: Any, key_prefix: str, teams: Any
) -> None:
    _, client = parts
    answer = await client.post("/api/agents/rita/online", json={"teams": teams}, headers=API_AUTH)
    assert answer.status_code == 422
    assert sync_redis.keys(f"{key_prefix}*") == []


async def test_a_team_no_business_declares_is_refused_and_nothing_is_stored(
    parts: tuple[Harness, httpx.AsyncClient], sync_redis: Any, key_prefix: str
) -> None:
    """A well-formed id that no business file declares (a typo: "finaceiro") would leave the
    agent taking from a line nobody ever joins. Refused, naming the teams there are; an agent
    already online keeps the teams they had."""
    _, client = parts
    answer = await client.post(
        "/api/agents/rita/online", json={"teams": ["recepcao", "finaceiro"]}, headers=API_AUTH
    )
    assert answer.status_code == 422
    assert answer.json() == {
        "detail": "unknown team finaceiro: the business files declare financeiro, recepcao"
    }
    assert sync_redis.keys(f"{key_prefix}*") == []

    await client.post("/api/agents/rita/online", json={"teams": ["recepcao"]}, headers=API_AUTH)
    before = {key: sync_redis.dump(key) for key in sync_redis.keys(f"{key_prefix}*")}
    again = await client.post(
        "/api/agents/rita/online", json={"teams": ["cobranca"]}, headers=API_AUTH
    )
    assert again.status_code == 422
    assert {key: sync_redis.dump(key) for key in sync_redis.keys(f"{key_prefix}*")} == before


def test_wsm_agent_add_with_teams(
    redis_url: str, key_prefix: str, sync_redis: Any, business_file: Path
) -> None:
    """The real command, in its own process: --team is repeatable; the agent's line record
    holds the teams, and the console's going online keeps them. A team no business file
    declares is refused before the password is asked, with no account made."""
    env = {
        **os.environ, "REDIS_URL": redis_url, "WSM_KEY_PREFIX": key_prefix,
        "WSM_CALENDAR_FILE": str(business_file),
    }  # fmt: skip
    command = [sys.executable, "-m", "api.console.cli", "add", "rita", "--name", "Rita"]
    done = subprocess.run(
        [*command, "--team", "recepcao", "--team", "financeiro"],
        input="a long password\n", env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "teams financeiro, recepcao" in done.stdout
    stored = sync_redis.hget(LineKeys(key_prefix).agent_teams, "rita")
    assert stored == b'["financeiro","recepcao"]'

    refused = subprocess.run(
        [*command[:4], "bia", "--team", "Não Vale"],
        input="a long password\n", env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2 and "not a team id" in refused.stderr
    assert sync_redis.hget(LineKeys(key_prefix).agent_teams, "bia") is None

    before = {key: sync_redis.dump(key) for key in sync_redis.keys(f"{key_prefix}*")}
    unknown = subprocess.run(
        [*command[:4], "caio", "--team", "recepcao", "--team", "cobranca"],
        input="a long password\n", env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unknown.returncode == 2
    assert "unknown team cobranca: the business files declare financeiro, recepcao" in (
        unknown.stderr
    )
    assert {key: sync_redis.dump(key) for key in sync_redis.keys(f"{key_prefix}*")} == before


async def test_the_console_shows_an_agent_their_teams_lines(
    aredis: Any, redis_url: str, key_prefix: str, business_file: Path, waha: Any
) -> None:
    """The console's line, as an agent of Recepção sees it: the Recepção line (and the plain
    ones), never Financeiro's; an admin sees every line. The page a browser gets shows the
    same (one `line-entry` per customer shown)."""
    settings = settings_for(
        key_prefix, redis_url, api_token=API_TOKEN, calendar_file=business_file,
        auto_assign=False,
    )  # fmt: skip
    harness = Harness(aredis, settings)
    app = create_app(settings, aredis)
    console = app.state.console
    try:
        await ask_for(harness, ANA, "Ana", "2")  # Financeiro
        await ask_for(harness, BIA, "Bia", "1")  # Recepção
        rita = await console.accounts.add("rita", "Rita", "agent", "a long password 123")
        boss = await console.accounts.add("chefe", "Chefe", "admin", "a long password 456")
        await console.reads.line.set_teams("rita", ["recepcao"])
        async with served(app) as client:
            shown: dict[str, str] = {}
            opened: dict[str, list[int]] = {}
            for account in (rita, boss):
                session = await console.sessions.create(account)
                client.cookies.set("wsm_console", console.sessions.cookie_value(session))
                page = await client.get("/")
                assert page.status_code == 200, page.text
                shown[account.id] = page.text
                # A waiting customer's page opened by address: the lines the console shows the
                # viewer, no other (found by an audit: any line's were). The live channel and
                # the files ask the same Reads.may_view.
                opened[account.id] = [
                    (await client.get(f"/c/default/{chat}")).status_code for chat in (ANA, BIA)
                ]
        assert shown["rita"].count('data-testid="line-entry"') == 1
        assert "Bia" in shown["rita"] and "Ana" not in shown["rita"]
        assert shown["chefe"].count('data-testid="line-entry"') == 2
        assert opened["rita"] == [403, 200]
        assert opened["chefe"] == [200, 200]
    finally:
        await harness.aclose()


ALL_DAY = ", ".join(
    f'{d}: ["00:00-24:00"]' for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
)
CLINIC = "business: {name: Clínica}\nhours: {%s}\nservices: [{id: consulta, name: Consulta}]\n"
PET_SHOP = """business: {name: Pet Shop}
hours: {%s}
services: [{id: banho, name: Banho}]
teams:
  - {id: banho, name: Banho}
  - {id: tosa, name: Tosa}
"""


async def test_a_team_line_of_a_business_of_its_own_shows_live_in_the_console(
    aredis: Any, redis_url: str, key_prefix: str, waha: Any, tmp_path: Path
) -> None:
    """The console's Watcher merged each session's lines from the default business's teams,
    so a customer in a team line of a business of its own (WSM_BUSINESS_FILES) never showed
    live, nor did what they wrote next (found by an audit)."""
    clinic, pets = tmp_path / "clinica.yaml", tmp_path / "pets.yaml"
    clinic.write_text(CLINIC % ALL_DAY, "utf-8")
    pets.write_text(PET_SHOP % ALL_DAY, "utf-8")
    settings = settings_for(
        key_prefix, redis_url, api_token=API_TOKEN, calendar_file=clinic,
        business_files=f"pets={pets}", auto_assign=False,
    )  # fmt: skip
    harness = Harness(aredis, settings)
    console = create_app(settings, aredis).state.console
    try:
        await console.watcher.tick()  # the first pass
        since = await console.hub.latest_id()
        chat = "5511900000901@c.us"
        for text in ("oi", "Ana", "3", "2"):  # a person, from the team "Tosa"
            await harness.webhook(text_message(chat, text, session="pets"))
        await harness.drain()
        [waiting] = await console.reads.line.members("pets")
        assert waiting.team == "tosa"
        await console.watcher.tick()
        events = await console.hub.since(since)
        assert events is not None
        assert [e.session for e in events if e.kind == "line"] == ["pets"]
        # And the customer is watched: what they write next reaches the pages.
        await harness.webhook(text_message(chat, "é urgente", session="pets"))
        await harness.drain()
        await console.watcher.tick()
        later = await console.hub.since(events[-1].id)
        token = conversation_token("pets", chat)
        assert later and any(e.kind == "msg" and e.token == token for e in later)
    finally:
        await harness.aclose()
