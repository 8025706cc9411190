"""Operator API input (issue 12, section 3): path (and `session` / `agent_id` query) parameters
must have the forms WAHA and WhatsApp give them, else 422 with nothing stored; and the API
only writes to conversations that exist, so it cannot cold-message arbitrary numbers."""

from __future__ import annotations

from typing import Any

import pytest

from engine.state import State, load_state
from shared.keys import engine_keys_for
from tests.api.conftest import API_AUTH
from tests.conftest import keys_with_prefix
from tests.engine.harness import Harness

ANA = "5511987650001@c.us"

BAD_SESSIONS = ["a b", "de|fault", "sessão", "x" * 65, "de.fault", "default%0A"]
BAD_CHATS = [
    "nobody@c.us",
    "120363000000000002@g.us",
    "status@broadcast",
    "120363000000000001@newsletter",
    "5511987650001",
    "+5511987650001@c.us",
    "5511987650001@c.us.evil",
    "5511987650001@C.US",
    "55119876%7C50001@c.us",
    "1" * 33 + "@c.us",
]


def routes(session: str, chat: str) -> list[tuple[str, str, Any]]:
    base = f"/api/conversations/{session}/{chat}"
    return [
        ("GET", base, None),
        ("GET", f"{base}/messages", None),
        ("POST", f"{base}/messages", {"agent_id": "maria", "text": "oi"}),
        ("POST", f"{base}/close", None),
        ("POST", f"{base}/handback", None),
        ("DELETE", f"/api/contacts/{session}/{chat}", None),
    ]


CASES = [
    *[(m, p, b, "session") for s in BAD_SESSIONS for m, p, b in routes(s, ANA)],
    *[(m, p, b, "chat_id") for c in BAD_CHATS for m, p, b in routes("default", c)],
    ("GET", "/api/queue?session=de|fault", None, "session"),
    ("GET", "/api/conversations?session=a%20b", None, "session"),
    ("POST", "/api/queue/next?agent_id=-maria", None, "agent_id"),
    ("POST", "/api/queue/next?agent_id=maria&session=x|y", None, "session"),
    ("POST", "/api/agents/ma%7Cria/online", {"name": "Maria"}, "agent_id"),
    ("POST", "/api/agents/.maria/offline", None, "agent_id"),
]


@pytest.mark.parametrize(("method", "path", "body", "name"), CASES)
async def test_a_bad_parameter_is_422_and_nothing_is_stored(
    api_client, sync_redis, key_prefix, method: str, path: str, body: Any, name: str
) -> None:
    before = keys_with_prefix(sync_redis, key_prefix)
    response = await api_client.request(method, path, json=body, headers=API_AUTH)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"][-1] == name
    assert error["msg"].startswith("must be a")
    assert keys_with_prefix(sync_redis, key_prefix) == before


async def test_a_bad_parameter_without_a_token_is_still_401(api_client) -> None:
    response = await api_client.get("/api/conversations/a%20b/nobody@c.us")
    assert response.status_code == 401


@pytest.mark.parametrize(
    "chat", ["5511987650001@c.us", "200000000000001@lid", "5511987650001@s.whatsapp.net"]
)
async def test_every_chat_id_form_of_a_person_is_accepted(api_client, chat: str) -> None:
    response = await api_client.get(f"/api/conversations/my_session-2/{chat}", headers=API_AUTH)
    assert response.status_code == 404  # valid, and no such conversation
    assert response.json()["detail"] == "no such conversation"


@pytest.mark.parametrize("action", ["messages", "close", "handback"])
async def test_the_api_cannot_write_to_a_conversation_that_does_not_exist(
    api_client, sync_redis, key_prefix, action: str
) -> None:
    before = keys_with_prefix(sync_redis, key_prefix)
    response = await api_client.post(
        f"/api/conversations/default/5511900001234@c.us/{action}",
        json={"agent_id": "maria", "text": "Olá! Temos uma promoção para você."},
        headers=API_AUTH,
    )
    assert response.status_code == 404
    assert "no such conversation" in response.json()["detail"]
    assert keys_with_prefix(sync_redis, key_prefix) == before


async def test_an_agent_writes_to_a_conversation_that_exists(
    harness: Harness, api_client, aredis, key_prefix, waha
) -> None:
    await harness.say(ANA, "oi")
    response = await api_client.post(
        f"/api/conversations/default/{ANA}/messages",
        json={"agent_id": "maria", "text": "Oi Ana, aqui é a Maria."},
        headers=API_AUTH,
    )
    assert response.status_code == 202
    await harness.drain()
    state = await load_state(aredis, engine_keys_for("default", ANA, 1, key_prefix).state)
    assert state.state is State.AGENT
    assert waha.to(ANA)[-1] == "Oi Ana, aqui é a Maria."


@pytest.mark.parametrize("agent_id", ["-maria", "ma|ria", "maria joana", "", "m" * 65])
async def test_an_agents_message_names_the_agent_by_the_agent_id_rule(
    harness: Harness, api_client, sync_redis, key_prefix, waha, agent_id: str
) -> None:
    """The body's agent_id keeps the rule of every agent id in the API (found by an audit:
    the body alone took any text); refused with 422, nothing queued, nothing sent."""
    await harness.say(ANA, "oi")
    await harness.drain()
    sent = list(waha.to(ANA))
    before = keys_with_prefix(sync_redis, key_prefix)
    response = await api_client.post(
        f"/api/conversations/default/{ANA}/messages",
        json={"agent_id": agent_id, "text": "Oi Ana"},
        headers=API_AUTH,
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][-1] == "agent_id"
    await harness.drain()
    assert keys_with_prefix(sync_redis, key_prefix) == before
    assert waha.to(ANA) == sent
