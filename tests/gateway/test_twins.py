"""`message` and its `message.any` twin: one WhatsApp message, queued once, whichever arrives
first and whatever WAHA is subscribed to; the engine handles it once, as what it is.

WAHA subscribed to both events delivers every message twice, under two envelope ids with the
same WhatsApp id. The gateway keys the pair's dedupe marker by the WhatsApp id alone and queues
the one that arrives first under the event that says what the message is (`message` for the
customer's, `message.any` for `fromMe`): the body stays WAHA's, byte for byte. Acks stay keyed
with their level (a READ ack after a DEVICE ack is news, not a repeat).

Real WAHA bodies (tests/fixtures/waha/), the in-process gateway, a real Redis; the engine part
drives the engine over what the gateway queued (tests/engine/harness.py) with WAHA stood in.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis
import respx

from engine.history import HistoryKeys, recent
from engine.state import State, load_state
from shared.keys import engine_keys_for
from tests.engine.harness import FakeWaha, Harness, settings_for
from tests.gateway.conftest import queued_events, signed, waiting_count
from tests.support.waha import compact, load_fixture

TEXT_CHAT = ("mysession_waha", "5511987650052@c.us")  # message-text.json
FROMME_CHAT = ("default", "11111111111@c.us")  # message-any-fromme.json


def fresh(name: str) -> dict[str, Any]:
    """A fixture as a delivery of now (the captured ones are outside the replay window)."""
    document = load_fixture(name)
    document["timestamp"] = int(time.time() * 1000)
    return document


def twin(document: dict[str, Any], event: str) -> dict[str, Any]:
    """The same WhatsApp message told under the other event: WAHA's own envelope id for it."""
    return dict(document, event=event, id=document["id"] + "_twin")


async def post(client: httpx.AsyncClient, document: dict[str, Any]) -> str:
    body = compact(document)
    response = await client.post("/webhook", content=body, headers=signed(body))
    assert response.status_code == 200
    return str(response.json()["status"])


def pair(name: str, twin_event: str, twin_first: bool) -> list[dict[str, Any]]:
    original = fresh(name)
    documents = [original, twin(original, twin_event)]
    return documents[::-1] if twin_first else documents


@pytest.mark.parametrize("twin_first", [False, True], ids=["original-first", "twin-first"])
async def test_a_customers_message_any_twin_is_dropped_at_the_door(
    twin_first: bool, app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    documents = pair("message-text.json", "message.any", twin_first)
    assert [await post(app_client, d) for d in documents] == ["queued", "duplicate"]

    [queued] = queued_events(sync_redis, key_prefix, *TEXT_CHAT)
    # Queued once, as the customer's message, whichever twin came first; its body untouched.
    assert queued.event == "message"
    assert queued.body == compact(documents[0])
    assert waiting_count(sync_redis, key_prefix) == 1


@pytest.mark.parametrize("twin_first", [False, True], ids=["any-first", "message-first"])
async def test_a_from_me_message_reaches_the_queue_once_as_message_any(
    twin_first: bool, app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    # Our own send's echo (or the business's phone): `message.any` with fromMe, and the
    # `message` twin some engines send for it too.
    documents = pair("message-any-fromme.json", "message", twin_first)
    assert [await post(app_client, d) for d in documents] == ["queued", "duplicate"]

    [queued] = queued_events(sync_redis, key_prefix, *FROMME_CHAT)
    assert queued.event == "message.any"  # the step that settles the outbox / records it
    assert queued.body == compact(documents[0])
    assert waiting_count(sync_redis, key_prefix) == 1


async def test_acks_stay_keyed_with_their_level(
    app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    read = fresh("message-ack.json")  # a READ ack (3)
    device = dict(read, id=read["id"] + "_device", payload=dict(read["payload"], ack=2))
    read_again = dict(read, id=read["id"] + "_again")
    statuses = [await post(app_client, d) for d in (device, read, read_again)]
    assert statuses == ["queued", "queued", "duplicate"]
    chat = FROMME_CHAT  # message-ack.json is an ack in the same 1:1 chat
    queued = queued_events(sync_redis, key_prefix, *chat)
    assert [(q.event, q.document()["payload"]["ack"]) for q in queued] == [
        ("message.ack", 2),
        ("message.ack", 3),
    ]


# --- the engine behind the door -------------------------------------------------------------


async def drain_engine(aredis: Any, redis_url: str, key_prefix: str) -> FakeWaha:
    with respx.mock(assert_all_called=False) as router:
        waha = FakeWaha(router)
        harness = Harness(aredis, settings_for(key_prefix, redis_url))
        try:
            await harness.drain()
        finally:
            await harness.aclose()
    return waha


@pytest.mark.parametrize("twin_first", [False, True], ids=["original-first", "twin-first"])
async def test_the_engine_answers_a_twinned_customer_message_once(
    twin_first: bool, app_client: httpx.AsyncClient, aredis: Any, redis_url: str, key_prefix: str
) -> None:
    for document in pair("message-text.json", "message.any", twin_first):
        await post(app_client, document)
    waha = await drain_engine(aredis, redis_url, key_prefix)

    session, chat = TEXT_CHAT
    assert len(waha.to(chat)) == 1  # answered, once
    keys = engine_keys_for(session, chat, 1, key_prefix)
    inbound = [
        e
        for e in await recent(aredis, HistoryKeys(keys.history, keys.history_meta), 50)
        if e.direction == "in"
    ]
    assert [e.text for e in inbound] == ["Oi"]


@pytest.mark.parametrize("twin_first", [False, True], ids=["any-first", "message-first"])
async def test_the_engine_records_a_reply_typed_on_the_business_phone_once(
    twin_first: bool, app_client: httpx.AsyncClient, aredis: Any, redis_url: str, key_prefix: str
) -> None:
    for document in pair("message-any-fromme.json", "message", twin_first):
        await post(app_client, document)
    waha = await drain_engine(aredis, redis_url, key_prefix)

    session, chat = FROMME_CHAT
    keys = engine_keys_for(session, chat, 1, key_prefix)
    entries = await recent(aredis, HistoryKeys(keys.history, keys.history_meta), 50)
    assert [(e.author, e.text) for e in entries] == [("business", "Hi there!")]
    # A person answered from the phone: the bot keeps quiet in that chat.
    assert (await load_state(aredis, keys.state)).state is State.PAUSED
    assert waha.sent == []
