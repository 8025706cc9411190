"""The outgoing booking webhook: signed with HMAC-SHA256, delivered at least once, retried on
failures, dead-lettered on a final refusal."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY

from engine.agent.booking_webhook import verify
from engine.agent.bookings import Customer
from shared.keys import CalendarKeys
from tests.support.polling import async_wait_until

HOOKS = "https://crm.test/hooks/bookings"
SECRET = "crm-secret-0123456789abcdef01234567"
ANA = Customer("default|5511987650001@c.us", "Ana", "5511987650001")


def delivered_count(result: str) -> float:
    return (
        REGISTRY.get_sample_value("wsm_booking_webhook_deliveries_total", {"result": result}) or 0.0
    )


@pytest.fixture
def agent(make_agent):
    return make_agent(
        booking_webhook_url=HOOKS,
        booking_webhook_secret=SECRET,
        booking_webhook_retry_base_ms=1,
        booking_webhook_retry_max_ms=5,
        booking_webhook_max_attempts=3,
    )


async def book(agent, now, hhmm: str = "10:00", booking_id: str = "bk01") -> None:
    consulta = agent.agenda.service("consulta")
    slot = agent.agenda.calendar.slot(consulta, f"{now.date()}T{hhmm}", now)
    await agent.store.book(ANA, slot, booking_id=booking_id)


async def test_signed_and_retried_until_the_receiver_accepts(
    agent, router, aredis, key_prefix, now
) -> None:
    received: list[httpx.Request] = []
    answers = [httpx.Response(503, text="maintenance"), httpx.ConnectError("refused"),
               httpx.Response(200, json={"ok": True})]  # fmt: skip

    def receiver(request: httpx.Request) -> httpx.Response:
        received.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    router.post(HOOKS).mock(side_effect=receiver)
    retries, delivered = delivered_count("retry"), delivered_count("delivered")
    await book(agent, now)
    webhook = agent.webhook

    async def done() -> bool:
        await webhook.deliver_due()
        return await aredis.zcard(CalendarKeys(key_prefix).hooks_due) == 0

    await async_wait_until(done, timeout=10, what="the webhook delivered")
    assert len(received) == 3
    ids = {r.headers["x-wsm-delivery"] for r in received}
    assert len(ids) == 1  # the same event each time: receivers dedupe on it
    for request in received:
        body, stamp = request.content, request.headers["x-wsm-timestamp"]
        signature = request.headers["x-wsm-signature"]
        expected = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
        assert signature == "sha256=" + expected.hexdigest()
        assert verify(SECRET.encode(), stamp, body, signature)
        assert request.headers["x-wsm-event"] == "booking.booked"
        assert abs(int(stamp) - time.time()) < 60
    event = json.loads(received[-1].content)
    assert event["id"] == ids.pop() and event["booking"]["id"] == "bk01"
    assert event["booking"]["service"] == {"id": "consulta", "name": "Consulta"}
    keys = CalendarKeys(key_prefix)
    assert not await aredis.exists(keys.hooks_body, keys.hooks_attempts, keys.hooks_dead)
    assert delivered_count("retry") - retries == 2
    assert delivered_count("delivered") - delivered == 1


def test_verify_refuses_tampering_another_key_and_old_timestamps() -> None:
    body = b'{"event":"booking.booked"}'
    stamp = int(time.time())
    signature = "sha256=" + hmac.new(b"k", f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert verify(b"k", str(stamp), body, signature)
    assert not verify(b"k", str(stamp), body.replace(b"booked", b"cancel"), signature)
    assert not verify(b"other", str(stamp), body, signature)
    assert not verify(b"k", str(stamp + 1), body, signature)
    assert not verify(b"k", str(stamp - 3600), body, signature, now=stamp)
    assert not verify(b"k", "yesterday", body, signature)


async def test_a_final_refusal_or_too_many_attempts_dead_letter_the_event(
    agent, router, aredis, key_prefix, now
) -> None:
    keys = CalendarKeys(key_prefix)
    router.post(HOOKS).mock(return_value=httpx.Response(410, text="endpoint removed"))
    await book(agent, now, "10:00", "bk01")
    await agent.webhook.deliver_due()
    [dead] = [orjson.loads(x) for x in await aredis.lrange(keys.hooks_dead, 0, -1)]
    assert dead["error"] == "HTTP 410: endpoint removed" and dead["attempts"] == 1
    assert dead["body"]["booking"]["id"] == "bk01"

    router.post(HOOKS).mock(return_value=httpx.Response(500, text="boom"))
    await book(agent, now, "11:00", "bk02")

    async def dead_lettered() -> bool:
        await agent.webhook.deliver_due()
        return await aredis.llen(keys.hooks_dead) == 2

    await async_wait_until(dead_lettered, timeout=10, what="dead letter after 3 attempts")
    last = orjson.loads(await aredis.lindex(keys.hooks_dead, 1))
    assert last["attempts"] == 3 and last["error"] == "HTTP 500: boom"
    assert await aredis.zcard(keys.hooks_due) == 0


async def test_an_event_erased_while_in_flight_is_not_dead_lettered(
    agent, router, aredis, sync_redis, key_prefix, now
) -> None:
    """The customer is erased (LGPD) while the event's POST is in flight, and the receiver
    refuses it: the dead letter would bring the customer's name and phone back after the
    erase (found by an audit). Nothing of it is kept."""
    keys = CalendarKeys(key_prefix)

    def erased_meanwhile(request: httpx.Request) -> httpx.Response:
        # What the erase does to the customer's pending webhook bodies (bookings.py).
        sync_redis.hdel(keys.hooks_body, request.headers["x-wsm-delivery"])
        return httpx.Response(400, text="unknown customer")

    router.post(HOOKS).mock(side_effect=erased_meanwhile)
    dead = delivered_count("dead")
    await book(agent, now)
    await agent.webhook.deliver_due()
    assert await aredis.llen(keys.hooks_dead) == 0
    assert not await aredis.exists(keys.hooks_body, keys.hooks_attempts)
    assert await aredis.zcard(keys.hooks_due) == 0
    assert delivered_count("dead") == dead


async def test_the_deliverer_sends_right_after_a_booking(agent, router, now) -> None:
    received: list[httpx.Request] = []
    router.post(HOOKS).mock(side_effect=lambda r: received.append(r) or httpx.Response(200))
    stop = asyncio.Event()
    # A long interval: only the kick from the booking can make it deliver this soon.
    task = asyncio.create_task(agent.webhook.run(stop, interval_seconds=60))
    try:
        await book(agent, now)

        async def arrived() -> bool:
            return len(received) == 1

        await async_wait_until(arrived, timeout=5, what="the kicked delivery")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_given_up_events_keep_the_dead_letter_limits(
    make_agent, router, aredis, key_prefix, now
) -> None:
    """A business webhook that stays down: its given-up events are kept as the queue's and the
    outbox's dead letters are (WSM_DEAD_LETTERS_MAX, WSM_DEAD_LETTER_DAYS), newest kept, not
    without bound until Redis refuses writes."""
    agent = make_agent(
        booking_webhook_url=HOOKS, booking_webhook_secret=SECRET, dead_letters_max=2,
        dead_letter_days=1,
    )  # fmt: skip
    keys = CalendarKeys(key_prefix)
    # One given up two days ago: past the age.
    old = {"id": "evt-old", "body": {}, "attempts": 1, "error": "x", "at": 1}
    await aredis.rpush(keys.hooks_dead, orjson.dumps(old))
    router.post(HOOKS).mock(return_value=httpx.Response(410, text="endpoint removed"))

    async def kept() -> list[str]:
        letters = [orjson.loads(x) for x in await aredis.lrange(keys.hooks_dead, 0, -1)]
        return [letter["body"].get("booking", {}).get("id", letter["id"]) for letter in letters]

    await book(agent, now, "10:00", "bk01")
    await agent.webhook.deliver_due()
    assert await kept() == ["bk01"]  # within the cap: the old one went by its age
    for hhmm, booking_id in (("11:00", "bk02"), ("14:00", "bk03")):
        await book(agent, now, hhmm, booking_id)
        await agent.webhook.deliver_due()
    assert await kept() == ["bk02", "bk03"]  # the cap: the newest two
