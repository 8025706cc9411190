"""Receipts at the door: a `message.ack` for a message already in the history is recorded on
it by the gateway's own enqueue script, and queues nothing; so is the echo of our own reply
(nothing to record). One for a message not recorded yet is queued, and the engine handles it
in the conversation's order.

Each message the business sends brings two or three receipts (DEVICE, READ, sometimes PLAYED),
each a worker turn when queued (issue 19). A status only moves forward, so when a receipt is
applied does not change where the status ends. What needs the order is a receipt for a message
the history does not know yet: the business phone's own message still queued ahead of it.

Real WAHA bodies, the in-process gateway, a real Redis; the engine runs over what the gateway
queued (tests/engine/harness.py) with WAHA's send side stood in.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis
from prometheus_client import REGISTRY

from tests.gateway.conftest import drain_engine, queued_events, waiting_count
from tests.gateway.test_twins import FROMME_CHAT, TEXT_CHAT, fresh, history, post


def ack(session_chat: tuple[str, str], message_id: str, level: int, name: str) -> dict[str, Any]:
    """WAHA's `message.ack` (message-ack.json's shape) for `message_id`, at `level`."""
    document = fresh("message-ack.json")
    session, chat = session_chat
    document.update(id=f"evt_ack_{message_id[-6:]}_{name}", session=session)
    document["payload"] = dict(
        document["payload"], id=message_id, **{"from": chat}, ack=level, ackName=name.upper()
    )
    return document


def settled_count() -> float:
    """wsm_webhook_receipts_settled_total of this process (the in-process gateway's)."""
    return REGISTRY.get_sample_value("wsm_webhook_receipts_settled_total") or 0.0


async def status_of_reply(aredis: Any, key_prefix: str) -> str:
    [reply] = [e for e in await history(aredis, TEXT_CHAT, key_prefix) if e.direction == "out"]
    return reply.status


@pytest.fixture
async def sent_reply(
    app_client: httpx.AsyncClient, aredis: Any, redis_url: str, key_prefix: str
) -> tuple[str, str]:
    """A customer's message through the gateway and the engine: the bot answered once, and
    the sender recorded WhatsApp's id for the reply. (Its WhatsApp id, its text.)"""
    assert await post(app_client, fresh("message-text.json")) == "queued"
    waha = await drain_engine(aredis, redis_url, key_prefix)
    [reply_id] = waha.ids
    [(_, text)] = waha.sent
    assert await status_of_reply(aredis, key_prefix) == "sent"
    return reply_id, text


async def test_receipts_for_a_sent_reply_are_recorded_at_the_door(
    sent_reply: tuple[str, str],
    app_client: httpx.AsyncClient,
    sync_redis: redis.Redis,
    aredis: Any,
    key_prefix: str,
) -> None:
    reply_id, _ = sent_reply

    # WAHA keeps no order between receipts: READ may come before DEVICE.
    settled_before = settled_count()
    answers = [
        await post(app_client, ack(TEXT_CHAT, reply_id, level, name))
        for level, name in ((3, "read"), (2, "device"))
    ]
    assert answers == ["queued", "queued"]  # durable, as for any event
    # Recorded at once, never moved back, and nothing for a worker to do.
    assert await status_of_reply(aredis, key_prefix) == "read"
    assert queued_events(sync_redis, key_prefix, *TEXT_CHAT) == []
    assert waiting_count(sync_redis, key_prefix) == 0

    # A repeat is a duplicate; the PLAYED that follows is news.
    assert await post(app_client, ack(TEXT_CHAT, reply_id, 3, "read")) == "duplicate"
    assert await post(app_client, ack(TEXT_CHAT, reply_id, 4, "played")) == "queued"
    assert await status_of_reply(aredis, key_prefix) == "played"
    # Operators see them apart from the queued ones: three settled, the duplicate not.
    assert settled_count() - settled_before == 3
    assert queued_events(sync_redis, key_prefix, *TEXT_CHAT) == []


async def test_the_echo_of_a_sent_reply_is_settled_at_the_door(
    sent_reply: tuple[str, str],
    app_client: httpx.AsyncClient,
    sync_redis: redis.Redis,
    aredis: Any,
    key_prefix: str,
) -> None:
    """WAHA tells our reply back (`message.any`, fromMe) after the sender recorded it: the
    history knows it, so nothing is queued and nothing changes; its `message` twin is a
    duplicate."""
    reply_id, text = sent_reply
    before = await history(aredis, TEXT_CHAT, key_prefix)

    echo = fresh("message-any-fromme.json")
    session, chat = TEXT_CHAT
    echo.update(id="evt_echo_of_reply", session=session)
    echo["payload"] = dict(echo["payload"], id=reply_id, body=text, **{"from": chat, "to": chat})
    assert await post(app_client, echo) == "queued"
    assert await post(app_client, dict(echo, id="evt_echo_twin", event="message")) == "duplicate"
    assert queued_events(sync_redis, key_prefix, *TEXT_CHAT) == []
    assert waiting_count(sync_redis, key_prefix) == 0
    assert await history(aredis, TEXT_CHAT, key_prefix) == before


async def test_a_receipt_for_a_phone_message_still_queued_is_applied_in_turn(
    app_client: httpx.AsyncClient,
    sync_redis: redis.Redis,
    aredis: Any,
    redis_url: str,
    key_prefix: str,
) -> None:
    """The business typed on its phone; the customer read it before any worker recorded the
    message. The receipt waits behind it in the queue, and the history ends with it read."""
    typed = fresh("message-any-fromme.json")
    read = ack(FROMME_CHAT, typed["payload"]["id"], 3, "read")
    assert [await post(app_client, d) for d in (typed, read)] == ["queued", "queued"]
    queued = queued_events(sync_redis, key_prefix, *FROMME_CHAT)
    assert [q.event for q in queued] == ["message.any", "message.ack"]

    await drain_engine(aredis, redis_url, key_prefix)
    entries = await history(aredis, FROMME_CHAT, key_prefix)
    assert [(e.author, e.text, e.status) for e in entries] == [("business", "Hi there!", "read")]


async def test_receipts_of_the_business_status_posts_are_not_queued(
    app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    """Each contact who views one of the business's status posts sends a receipt (`from` and
    the id's chat `status@broadcast`, the viewer in `participant`). No conversation keeps
    them: answered `ignored`, nothing stored, nothing for a worker."""
    session = TEXT_CHAT[0]
    status_id = "true_status@broadcast_3EB0STATUSPOST01"
    answers = []
    for n, viewer in enumerate(("5511987650081@c.us", "5511987650082@c.us")):
        document = ack((session, "status@broadcast"), status_id, 3, f"read{n}")
        document["payload"]["participant"] = viewer
        answers.append(await post(app_client, document))
    assert answers == ["ignored", "ignored"]
    assert queued_events(sync_redis, key_prefix, session, "status@broadcast") == []
    assert waiting_count(sync_redis, key_prefix) == 0
    assert sync_redis.keys(f"{key_prefix}*") == []
    # Control: the same receipt in a customer's chat is queued.
    assert await post(
        app_client, ack(TEXT_CHAT, f"true_{TEXT_CHAT[1]}_3EB0NOTRECORDED1", 3, "r")
    ) == ("queued")
