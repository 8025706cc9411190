"""What the conversation page shows of the bot's collected data: the customer's facts, labelled
in the console's language, and none of the bot's own bookkeeping (offers, a booking waiting for
its confirmation, a reminder's booking: JSON for the engine) nor the fields it has cleared."""

from __future__ import annotations

import html
import re
from typing import Any

import orjson
import pytest

from api.app import create_app
from api.console.i18n import TEXTS
from engine.agent.confirmation import PENDING_KEY
from engine.agent.limits import AGENT_LIMIT, TURN_LIMIT
from engine.agent.menu import OFFER_KEY
from engine.agent.reminders import REMINDER_KEY
from engine.state import ConversationState, State, state_writes
from shared.keys import engine_keys_for
from tests.console.support import app_login
from tests.engine.harness import settings_for
from tests.support.asgi import served

TOKEN = "console-test-token-" + "x" * 32
CHAT = "5511901200077@c.us"
OFFER = orjson.dumps({"slots": ["2026-12-03T09:00"], "service": "consulta"}).decode()
PENDING = orjson.dumps({"kind": "book", "slot": "2026-12-03T09:00"}).decode()
FACTS = re.compile(r'<dl data-testid="facts">(.*?)</dl>', re.S)
PAIR = re.compile(r"<dt>(.*?)</dt><dd>(.*?)</dd>", re.S)


async def page_of(
    aredis: Any, redis_url: str, key_prefix: str, collected: dict[str, str], language: str
) -> str:
    """The conversation page an admin sees for a conversation whose state holds `collected`
    (written with the engine's own encoding of the state)."""
    settings = settings_for(key_prefix, redis_url, api_token=TOKEN, language=language)
    state = ConversationState(state=State.BOT, collected=collected)
    key = engine_keys_for("default", CHAT, settings.queue_shards, key_prefix).state
    for write in state_writes(key, state, 3600):
        await aredis.execute_command(*write)
    app = create_app(settings, aredis)
    await app.state.console.accounts.add("chefe", "Chefe", "admin", "a long password")
    async with served(app, "http://console.test") as client:
        logged = await app_login(client, "chefe", "a long password")
        assert logged.status_code == 303
        answer = await client.get(f"/c/default/{CHAT}")
    assert answer.status_code == 200
    return answer.text


def facts(page: str) -> list[tuple[str, str]]:
    found = FACTS.search(page)
    assert found, "the page has no facts list"
    return [(html.unescape(k), html.unescape(v)) for k, v in PAIR.findall(found[1])]


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        (
            "pt-BR",
            [
                ("Nome", "Carla Souza"),
                ("Serviço", "Consulta"),
                ("Assistente pausado", "muitas mensagens por minuto; responde pelo menu"),
            ],
        ),
        (
            "en",
            [
                ("Name", "Carla Souza"),
                ("Service", "Consulta"),
                ("Assistant paused", "too many messages a minute; answering with the menu"),
            ],
        ),
    ],
)
async def test_the_page_shows_the_customers_facts_and_not_the_bots_bookkeeping(
    aredis: Any, redis_url: str, key_prefix: str, language: str, expected: list[tuple[str, str]]
) -> None:
    collected = {
        OFFER_KEY: OFFER,
        "service": "Consulta",
        PENDING_KEY: PENDING,
        "name": "Carla Souza",
        REMINDER_KEY: "",
        AGENT_LIMIT: TURN_LIMIT,
    }
    page = await page_of(aredis, redis_url, key_prefix, collected, language)
    assert facts(page) == expected
    for hidden in (OFFER_KEY, PENDING_KEY, REMINDER_KEY, html.escape(OFFER), html.escape(PENDING)):
        assert hidden not in page


async def test_a_conversation_with_only_bookkeeping_says_nothing_was_collected(
    aredis: Any, redis_url: str, key_prefix: str
) -> None:
    collected = {OFFER_KEY: OFFER, "name": "", PENDING_KEY: ""}
    page = await page_of(aredis, redis_url, key_prefix, collected, "pt-BR")
    assert facts(page) == []
    assert "Nada coletado ainda." in FACTS.search(page)[1]  # type: ignore[index]


def test_every_console_text_is_in_both_languages() -> None:
    """A key in one table only would show the key itself to the other language's attendants."""
    [first, *others] = TEXTS.values()
    for table in others:
        assert set(table) == set(first)
