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
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis

from engine.history import HistoryEntry, HistoryKeys, recent
from engine.state import State, load_state
from shared.keys import engine_keys_for
from tests.engine.harness import FakeWaha
from tests.gateway.conftest import drain_engine, queued_events, signed, waiting_count
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


async def queued_once(
    documents: list[dict[str, Any]],
    session_chat: tuple[str, str],
    app_client: httpx.AsyncClient,
    sync_redis: redis.Redis,
    key_prefix: str,
) -> str:
    """Posts the twins in this order: the first is queued, the second is a duplicate, and the
    chat holds the first's body, untouched, and nothing else. The event it was queued under."""
    assert [await post(app_client, d) for d in documents] == ["queued", "duplicate"]
    [queued] = queued_events(sync_redis, key_prefix, *session_chat)
    assert queued.body == compact(documents[0])
    assert waiting_count(sync_redis, key_prefix) == 1
    return str(queued.event)


@pytest.mark.parametrize("twin_first", [False, True], ids=["original-first", "twin-first"])
async def test_a_customers_message_any_twin_is_dropped_at_the_door(
    twin_first: bool, app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    documents = pair("message-text.json", "message.any", twin_first)
    # Queued once, as the customer's message, whichever twin came first.
    assert await queued_once(documents, TEXT_CHAT, app_client, sync_redis, key_prefix) == "message"


@pytest.mark.parametrize("twin_first", [False, True], ids=["any-first", "message-first"])
async def test_a_from_me_message_reaches_the_queue_once_as_message_any(
    twin_first: bool, app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    # Our own send's echo (or the business's phone): `message.any` with fromMe, and the
    # `message` twin some engines send for it too.
    documents = pair("message-any-fromme.json", "message", twin_first)
    event = await queued_once(documents, FROMME_CHAT, app_client, sync_redis, key_prefix)
    assert event == "message.any"  # the step that settles the outbox / records it


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


@pytest.fixture
def through_the_engine(
    app_client: httpx.AsyncClient, aredis: Any, redis_url: str, key_prefix: str
) -> Callable[[list[dict[str, Any]]], Awaitable[FakeWaha]]:
    """The twins posted to the gateway in this order, then the engine run over what it queued;
    WAHA as the engine found it."""

    async def run(documents: list[dict[str, Any]]) -> FakeWaha:
        for document in documents:
            await post(app_client, document)
        return await drain_engine(aredis, redis_url, key_prefix)

    return run


async def history(
    aredis: Any, session_chat: tuple[str, str], key_prefix: str
) -> list[HistoryEntry]:
    keys = engine_keys_for(*session_chat, 1, key_prefix)
    return await recent(aredis, HistoryKeys(keys.history, keys.history_meta), 50)


@pytest.mark.parametrize("twin_first", [False, True], ids=["original-first", "twin-first"])
async def test_the_engine_answers_a_twinned_customer_message_once(
    twin_first: bool, through_the_engine: Any, aredis: Any, key_prefix: str
) -> None:
    waha = await through_the_engine(pair("message-text.json", "message.any", twin_first))

    _, chat = TEXT_CHAT
    assert len(waha.to(chat)) == 1  # answered, once
    inbound = [e for e in await history(aredis, TEXT_CHAT, key_prefix) if e.direction == "in"]
    assert [e.text for e in inbound] == ["Oi"]


@pytest.mark.parametrize("twin_first", [False, True], ids=["any-first", "message-first"])
async def test_the_engine_records_a_reply_typed_on_the_business_phone_once(
    twin_first: bool, through_the_engine: Any, aredis: Any, key_prefix: str
) -> None:
    waha = await through_the_engine(pair("message-any-fromme.json", "message", twin_first))

    entries = await history(aredis, FROMME_CHAT, key_prefix)
    assert [(e.author, e.text) for e in entries] == [("business", "Hi there!")]
    # A person answered from the phone: the bot keeps quiet in that chat.
    state_key = engine_keys_for(*FROMME_CHAT, 1, key_prefix).state
    assert (await load_state(aredis, state_key)).state is State.PAUSED
    assert waha.sent == []
