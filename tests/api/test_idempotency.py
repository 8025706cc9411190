"""A client that retries a command (a timed-out POST) with the same Idempotency-Key gets the
command done once: one sendText to the customer, and the same answer both times. A key belongs
to one conversation: the same key on another conversation is another command."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.conftest import API_AUTH
from tests.conftest import keys_with_prefix
from tests.engine.harness import FakeWaha, Harness
from tests.support.waha import text_message

ANA = "5511987650001@c.us"
BIA = "5511987650002@c.us"


def message_url(chat: str, session: str = "default") -> str:
    return f"/api/conversations/{session}/{chat}/messages"


def agent_text(text: str) -> dict[str, Any]:
    return {"agent_id": "joao", "agent_name": "João", "text": text}


async def test_a_retried_agent_message_is_sent_once_with_the_same_answer(
    harness: Harness, api_client: httpx.AsyncClient, waha: FakeWaha
) -> None:
    await harness.say(ANA, "oi")
    before = len(waha.to(ANA))
    headers = {**API_AUTH, "Idempotency-Key": "retry-1"}
    first = await api_client.post(message_url(ANA), json=agent_text("Olá!"), headers=headers)
    second = await api_client.post(message_url(ANA), json=agent_text("Olá!"), headers=headers)
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    assert first.json() == second.json()
    assert first.json()["queued"] is True
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    await harness.drain()
    assert waha.to(ANA)[before:] == ["Olá!"]
    # A third retry after the command was handled is still the same command.
    third = await api_client.post(message_url(ANA), json=agent_text("Olá!"), headers=headers)
    assert third.json() == first.json()
    await harness.drain()
    assert waha.to(ANA)[before:] == ["Olá!"]
    # Without a key, each POST is a command of its own.
    for _ in range(2):
        plain = await api_client.post(message_url(ANA), json=agent_text("Tudo bem?"),
                                      headers=API_AUTH)  # fmt: skip
        assert plain.status_code == 202
    await harness.drain()
    assert waha.to(ANA)[before:] == ["Olá!", "Tudo bem?", "Tudo bem?"]


async def test_the_same_key_on_another_conversation_is_another_command(
    harness: Harness, api_client: httpx.AsyncClient, waha: FakeWaha
) -> None:
    for chat in (ANA, BIA):
        await harness.webhook(text_message(chat, "oi"))
    await harness.webhook(text_message(ANA, "oi", session="loja2"))
    await harness.drain()
    sent_before = len(waha.sent)
    headers = {**API_AUTH, "Idempotency-Key": "shared-key"}
    answers = [
        await api_client.post(message_url(chat, session), json=agent_text(text), headers=headers)
        for chat, session, text in (
            (ANA, "default", "Para Ana"),
            (BIA, "default", "Para Bia"),  # same session, another chat
            (ANA, "loja2", "Ana na loja 2"),  # same chat id, another session
        )
    ]
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert len({a.json()["command_id"] for a in answers}) == 3
    assert not [a for a in answers if "idempotent-replayed" in a.headers]
    await harness.drain()
    assert sorted(waha.sent[sent_before:]) == sorted(
        [(ANA, "Para Ana"), (BIA, "Para Bia"), (ANA, "Ana na loja 2")]
    )


async def test_the_same_key_on_close_and_handback_is_kept_apart(
    harness: Harness, api_client: httpx.AsyncClient, waha: FakeWaha
) -> None:
    await harness.say(ANA, "oi")
    headers = {**API_AUTH, "Idempotency-Key": "k"}
    wrote = await api_client.post(message_url(ANA), json=agent_text("Olá!"), headers=headers)
    closed = await api_client.post(f"/api/conversations/default/{ANA}/close", headers=headers)
    again = await api_client.post(f"/api/conversations/default/{ANA}/close", headers=headers)
    assert wrote.json()["command_id"] != closed.json()["command_id"]
    assert again.json() == closed.json() and again.headers["idempotent-replayed"] == "true"
    await harness.drain()
    state = await api_client.get(f"/api/conversations/default/{ANA}", headers=API_AUTH)
    assert state.json()["state"] == "closed"
    assert waha.to(ANA).count("Olá!") == 1


async def test_a_key_in_the_query_string_is_not_a_key(
    harness: Harness, api_client: httpx.AsyncClient, waha: FakeWaha
) -> None:
    # The key is a header; `?idempotency_key=` once made the route answer 500. It is now an
    # unknown query parameter, ignored like any other: each POST is its own command.
    await harness.say(ANA, "oi")
    before = len(waha.to(ANA))
    url = message_url(ANA) + "?idempotency_key=q1"
    answers = [
        await api_client.post(url, json=agent_text("Oi de novo"), headers=API_AUTH)
        for _ in range(2)
    ]
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].json()["command_id"] != answers[1].json()["command_id"]
    await harness.drain()
    assert waha.to(ANA)[before:] == ["Oi de novo", "Oi de novo"]


async def test_a_too_long_key_is_refused_and_nothing_is_queued(
    harness: Harness,
    sync_redis: Any,
    key_prefix: str,
    api_client: httpx.AsyncClient,
    waha: FakeWaha,
) -> None:
    await harness.say(ANA, "oi")  # the conversation exists
    before = {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)}
    headers = {**API_AUTH, "Idempotency-Key": "k" * 101}
    response = await api_client.post(message_url(ANA), json=agent_text("x"), headers=headers)
    assert response.status_code == 422
    after = {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)}
    assert after == before


async def test_a_key_reused_for_another_text_is_refused_and_nothing_is_queued(
    harness: Harness,
    sync_redis: Any,
    key_prefix: str,
    api_client: httpx.AsyncClient,
    waha: FakeWaha,
) -> None:
    """Found by an audit: the second text was answered 202 "queued" as a retry of the first,
    and never sent. A key names one request: another one under it is refused, with nothing
    queued; the first one's retries still answer as before."""
    await harness.say(ANA, "oi")
    before = len(waha.to(ANA))
    headers = {**API_AUTH, "Idempotency-Key": "k-1"}
    first = await api_client.post(message_url(ANA), json=agent_text("Olá!"), headers=headers)
    assert first.status_code == 202
    stored = {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)}
    for body in (agent_text("Outro texto"), {**agent_text("Olá!"), "agent_name": "Outro"}):
        refused = await api_client.post(message_url(ANA), json=body, headers=headers)
        assert refused.status_code == 422, refused.text
        assert "Idempotency-Key was used for another request" in refused.json()["detail"]
        assert {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)} == stored
    again = await api_client.post(message_url(ANA), json=agent_text("Olá!"), headers=headers)
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    await harness.drain()
    assert waha.to(ANA)[before:] == ["Olá!"]
