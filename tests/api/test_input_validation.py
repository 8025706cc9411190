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


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n", "\u3000"])
async def test_a_blank_message_is_refused_and_nothing_is_queued(
    harness: Harness, api_client, sync_redis, key_prefix, waha, text: str
) -> None:
    """Found by an audit: a text of only spaces or line breaks was queued and sent to the
    customer as a blank message (the console refused it; the API did not)."""
    await harness.say(ANA, "oi")
    sent = list(waha.to(ANA))
    before = {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)}
    response = await api_client.post(
        f"/api/conversations/default/{ANA}/messages",
        json={"agent_id": "maria", "text": text},
        headers=API_AUTH,
    )
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "text"]
    assert "other than spaces" in error["msg"]
    await harness.drain()
    assert {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)} == before
    assert waha.to(ANA) == sent


async def test_a_message_is_sent_trimmed(harness: Harness, api_client, waha) -> None:
    await harness.say(ANA, "oi")
    response = await api_client.post(
        f"/api/conversations/default/{ANA}/messages",
        json={"agent_id": "maria", "text": "  Oi Ana!\n"},
        headers=API_AUTH,
    )
    assert response.status_code == 202
    await harness.drain()
    assert waha.to(ANA)[-1] == "Oi Ana!"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (f"/api/conversations/default/{ANA}/messages",
         {"agent_id": "maria", "text": "Oi", "agentName": "Maria"}, "agentName"),
        ("/api/agents/maria/online", {"name": "Maria", "team": ["financeiro"]}, "team"),
    ],
)  # fmt: skip
async def test_a_field_the_api_does_not_take_is_refused_and_nothing_is_stored(
    harness: Harness, api_client, sync_redis, key_prefix, waha, path: str, body: Any, field: str
) -> None:
    """Found by an audit: an unknown field (a typo) was dropped unseen, so the agent went online
    without the team asked for, or wrote under no name."""
    await harness.say(ANA, "oi")
    sent = list(waha.to(ANA))
    before = {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)}
    response = await api_client.post(path, json=body, headers=API_AUTH)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", field] and error["type"] == "extra_forbidden"
    await harness.drain()
    assert {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)} == before
    assert waha.to(ANA) == sent


@pytest.mark.parametrize(
    "before",
    [
        "99999999999999999999999-0",  # past a 64-bit id
        "1-18446744073709551616",
        "18446744073709551615-18446744073709551615",
        "0-0",  # nothing is older
        "\u0661-0",  # a digit, but not 0-9
    ],
)
async def test_a_history_cursor_redis_cannot_take_is_400(
    harness: Harness, api_client, sync_redis, key_prefix, before: str
) -> None:
    """Found by an audit: these reached Redis, whose error was answered 500."""
    await harness.say(ANA, "oi")
    stored = {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)}
    response = await api_client.get(
        f"/api/conversations/default/{ANA}/messages", params={"before": before}, headers=API_AUTH
    )
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("not a history cursor")
    assert {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)} == stored


async def test_an_agent_never_online_cannot_be_put_offline(
    api_client, sync_redis, key_prefix
) -> None:
    """Found by an audit: a typo'd id was stored as a new (offline) agent, listed ever after."""
    before = keys_with_prefix(sync_redis, key_prefix)
    response = await api_client.post("/api/agents/mraia/offline", headers=API_AUTH)
    assert response.status_code == 404
    assert response.json() == {"detail": "no such agent: it was never put online"}
    assert keys_with_prefix(sync_redis, key_prefix) == before
    assert (await api_client.get("/api/agents", headers=API_AUTH)).json() == []
    await api_client.post("/api/agents/maria/online", headers=API_AUTH)
    assert (await api_client.post("/api/agents/maria/offline", headers=API_AUTH)).json() == {
        "id": "maria",
        "name": "maria",
        "online": False,
    }


async def test_a_blank_agent_name_is_no_name(
    harness: Harness, api_client, aredis, key_prefix
) -> None:
    """A name of spaces would be what customers are told ("    vai te atender"): it counts as
    no name, so the agent id (or the name the agent had) stands in."""
    online = await api_client.post(
        "/api/agents/maria/online", json={"name": " \t "}, headers=API_AUTH
    )
    assert online.status_code == 200 and online.json()["name"] == "maria"
    await harness.say(ANA, "oi")
    response = await api_client.post(
        f"/api/conversations/default/{ANA}/messages",
        json={"agent_id": "joana", "agent_name": "   ", "text": "Oi"},
        headers=API_AUTH,
    )
    assert response.status_code == 202
    await harness.drain()
    state = await load_state(aredis, engine_keys_for("default", ANA, 1, key_prefix).state)
    assert state.agent_id == "joana" and state.agent_name == "joana"


async def test_an_agent_who_cannot_take_a_customer_is_told_why_in_stable_words(
    harness: Harness, api_client, sync_redis, key_prefix, waha
) -> None:
    """Found by an audit: the 409 of `queue/next` named the engine's exception class
    ("agent cannot take a customer now: AgentAtCapacity"). It says why in the API's own words,
    with a stable code, and takes no one."""
    await api_client.post("/api/agents/maria/online", json={"name": "Maria"}, headers=API_AUTH)
    for chat in (ANA, "5511987650002@c.us"):  # Maria takes the first; the second waits
        for text in ("oi", "Fulano", "3"):
            await harness.say(chat, text)
    await harness.drain()
    before = {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)}
    full = await api_client.post("/api/queue/next?agent_id=maria", headers=API_AUTH)
    offline = await api_client.post("/api/queue/next?agent_id=joana", headers=API_AUTH)
    assert (full.status_code, offline.status_code) == (409, 409)
    assert full.json() == {
        "error": "agent_at_capacity",
        "detail": "the agent already has as many conversations as one agent takes "
        "(WSM_CONVERSATIONS_PER_AGENT)",
    }
    assert offline.json() == {
        "error": "agent_offline",
        "detail": "the agent is offline: put them online first",
    }
    await harness.drain()
    assert {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)} == before
    line = (await api_client.get("/api/queue", headers=API_AUTH)).json()
    assert [w["chat_id"] for w in line] == ["5511987650002@c.us"]


async def test_an_offline_agent_is_told_so_even_when_nobody_waits(
    harness: Harness, api_client, sync_redis, key_prefix
) -> None:
    """Found by an audit: with nobody in any line, `queue/next` answered an offline (or never
    online) agent 204 "nobody waits", as if they could take the next one who comes."""
    before = {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)}
    offline = await api_client.post("/api/queue/next?agent_id=joana", headers=API_AUTH)
    assert offline.status_code == 409 and offline.json()["error"] == "agent_offline"
    assert {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)} == before
    # Control: online, with nobody waiting, it is 204.
    await api_client.post("/api/agents/maria/online", headers=API_AUTH)
    online = await api_client.post("/api/queue/next?agent_id=maria", headers=API_AUTH)
    assert online.status_code == 204


NOT_TAKEN = [
    pytest.param({"json": {"reason": "spam"}}, "extra_forbidden", ["body", "reason"],
                 id="unknown field"),
    # A field another route takes is not taken here either (the close is not the agent's).
    pytest.param({"json": {"agent_id": "maria"}}, "extra_forbidden", ["body", "agent_id"],
                 id="another route's field"),
    pytest.param({"json": []}, "model_attributes_type", ["body"], id="a list"),
    pytest.param({"json": "close"}, "model_attributes_type", ["body"], id="a string"),
    pytest.param({"content": b"reason=spam", "headers": {"content-type": "text/plain"}},
                 "model_attributes_type", ["body"], id="not JSON"),
]  # fmt: skip


@pytest.mark.parametrize("action", ["close", "handback"])
@pytest.mark.parametrize(("request_kwargs", "kind", "loc"), NOT_TAKEN)
async def test_a_close_or_handback_with_a_body_it_does_not_take_is_refused(
    harness: Harness, api_client, sync_redis, key_prefix, waha, action: str,
    request_kwargs: dict[str, Any], kind: str, loc: list[Any],
) -> None:  # fmt: skip
    """Found by an audit: these routes ignored their body, so a client's misspelled or
    misplaced field was dropped unseen and the command queued anyway. Refused 422 as an
    unknown field is on every other route; the conversation is left exactly as it was."""
    for text in ("oi", "Fulano", "3"):  # waiting: both a close and a handback would change it
        await harness.say(ANA, text)
    sent = list(waha.to(ANA))
    before = {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)}
    kwargs = dict(request_kwargs)
    headers = API_AUTH | kwargs.pop("headers", {})
    response = await api_client.post(
        f"/api/conversations/default/{ANA}/{action}", headers=headers, **kwargs
    )
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert (error["type"], error["loc"]) == (kind, loc)
    await harness.drain()
    assert {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)} == before
    assert waha.to(ANA) == sent


@pytest.mark.parametrize(
    ("action", "request_kwargs", "state"),
    [
        ("close", {}, State.CLOSED),
        ("close", {"json": {}}, State.CLOSED),
        ("handback", {"content": b"", "headers": {"content-type": "application/json"}},
         State.BOT),
        ("handback", {"json": {}}, State.BOT),
    ],
)  # fmt: skip
async def test_a_close_or_handback_without_a_body_works_as_always(
    harness: Harness, api_client, aredis, key_prefix, action: str,
    request_kwargs: dict[str, Any], state: State,
) -> None:  # fmt: skip
    """What clients send (no body; `{}`) keeps closing and handing back."""
    for text in ("oi", "Fulano", "3"):
        await harness.say(ANA, text)
    kwargs = dict(request_kwargs)
    headers = API_AUTH | kwargs.pop("headers", {})
    response = await api_client.post(
        f"/api/conversations/default/{ANA}/{action}", headers=headers, **kwargs
    )
    assert response.status_code == 202, response.text
    assert response.json()["queued"] is True
    await harness.drain()
    found = await load_state(aredis, engine_keys_for("default", ANA, 1, key_prefix).state)
    assert found.state is state


@pytest.mark.parametrize(("request_kwargs", "kind", "loc"), NOT_TAKEN)
async def test_offline_with_a_body_it_does_not_take_is_refused(
    api_client, sync_redis, key_prefix, request_kwargs: dict[str, Any], kind: str,
    loc: list[Any],
) -> None:  # fmt: skip
    """As close and handback: the route takes no body, and one it does not take is refused
    (the agent stays online); no body or `{}` puts the agent offline as always."""
    await api_client.post("/api/agents/maria/online", headers=API_AUTH)
    before = {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)}
    kwargs = dict(request_kwargs)
    headers = API_AUTH | kwargs.pop("headers", {})
    response = await api_client.post("/api/agents/maria/offline", headers=headers, **kwargs)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert (error["type"], error["loc"]) == (kind, loc)
    assert {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)} == before
    done = await api_client.post("/api/agents/maria/offline", headers=API_AUTH, json={})
    assert done.status_code == 200 and done.json()["online"] is False
