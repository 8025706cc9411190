"""The conversation engine's promises, proven on the real fleet with real processes: the
worker is `python -m worker --handler engine.agent.service:create`, WAHA is the simulator (its
webhooks signed and retried as WAHA's, its faults on demand), crashes are real SIGKILLs.

Each test waits for the fleet to be quiet (nothing queued, leased or left to send, no webhook
left to deliver) before it counts what reached the customer, so a second send would be seen."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from tests.fleet.conftest import SEND_LOCK_SECONDS, Fleet
from tests.support.polling import async_wait_until, wait_until
from tests.support.waha import compact, webhook_headers

pytestmark = pytest.mark.slow


async def test_sigkill_after_commit_before_send_sends_once(fleet: Fleet) -> None:
    phone = fleet.new_phone()
    # The reply's first call to WAHA (sendSeen) is slow: the sender is caught after the
    # commit, holding the reply, before sendText.
    await fleet.faults({"latency": {"ms": 3000, "paths": ["/api/sendSeen"]}})
    await fleet.say(phone, "oi")
    wait_until(lambda: fleet.delivery_lock_held(phone), timeout=15, what="the sender to start")
    # Every event of that message has been handled: after the kill nothing at all reaches
    # the fleet, no customer writes again. The restarted process must find the reply on its
    # own once the dead sender's lock expires.
    await fleet.quiet(outbox=False)
    [victim] = fleet.worker_processes()
    os.kill(victim, signal.SIGKILL)
    await fleet.clear_faults()

    replies = await fleet.wait_replies(phone, 1, timeout=SEND_LOCK_SECONDS + 20)
    assert victim not in fleet.worker_processes()
    await fleet.quiet()
    assert len(await fleet.replies(phone)) == 1
    [out] = [e for e in await fleet.history(phone) if e["direction"] == "out"]
    assert out["waha_id"] == replies[0]["id"]
    assert out["status"] in ("sent", "server", "device", "read")


async def test_sigkill_after_waha_accepted_before_recorded_sends_once(fleet: Fleet) -> None:
    """The worst moment: WAHA took the message (201) while Redis was away, so the sender could
    not record it, and the sender is killed before Redis is back. Only WAHA's echo of the
    message (message.any, spooled by the gateway meanwhile) can tell the fleet it went out."""
    phone = fleet.new_phone()
    product = fleet.product
    await fleet.faults({"latency": {"ms": 1500, "paths": ["/api/sendText"]}})
    await fleet.say(phone, "oi")

    async def in_send_text() -> bool:
        chat = await fleet.chat(phone)
        # sendSeen done (the customer's message is read) and the lock still held.
        return bool(chat and chat[0]["read"]) and fleet.delivery_lock_held(phone)

    await async_wait_until(in_send_text, timeout=15, interval=0.01, what="sendText under way")
    product.redis.stop()
    try:
        [reply] = await fleet.wait_replies(phone, 1, timeout=10)  # WAHA answered 201
        [victim] = fleet.worker_processes()
        os.kill(victim, signal.SIGKILL)
    finally:
        product.stack.start(product.redis)
        fleet.redis_restarted = True
    await fleet.clear_faults()

    # Once the dead sender's lock has expired the sweeper would send the reply again if it
    # were still waiting in the outbox: wait past that, then count.
    wait_until(lambda: not fleet.delivery_lock_held(phone), timeout=SEND_LOCK_SECONDS + 10)
    fleet.wait_worker_processes()
    await fleet.quiet()
    assert [m["id"] for m in await fleet.replies(phone)] == [reply["id"]]
    [out] = [e for e in await fleet.history(phone) if e["direction"] == "out"]
    assert out["waha_id"] == reply["id"]
    assert victim not in fleet.worker_processes()


async def test_state_and_collected_data_survive_a_fleet_restart(fleet: Fleet) -> None:
    phone = fleet.new_phone()
    await fleet.say(phone, "oi")
    await fleet.wait_replies(phone, 1)
    await fleet.say(phone, "Ana")
    [_, menu] = await fleet.wait_replies(phone, 2)
    assert "Ana" in menu["text"]
    await fleet.quiet()

    # The whole back end goes: the fleet stops, Redis crashes and comes back from its
    # append-only file, the fleet starts again.
    product = fleet.product
    assert product.worker.stop() == 0
    product.redis.kill()
    product.stack.start(product.redis)
    fleet.redis_restarted = True
    product.stack.start(product.worker)
    fleet.wait_worker_processes()

    described = await fleet.conversation(phone)
    assert described["collected"] == {"name": "Ana"}
    assert described["state"] == "bot"
    # The customer goes on where they stopped: "1" in the menu lists the services (a fresh
    # conversation would have been greeted and asked for a name).
    await fleet.say(phone, "1")
    replies = await fleet.wait_replies(phone, 3)
    assert "Consulta" in replies[2]["text"]
    await fleet.quiet()
    assert len(await fleet.replies(phone)) == 3


async def test_the_same_message_delivered_twice_by_waha_gets_one_reply(fleet: Fleet) -> None:
    phone = fleet.new_phone()
    # The next `message` event goes out three times: its envelope twice (WAHA resending a
    # request it thought timed out) and the same payload under a new envelope id.
    await fleet.faults({"duplicate": {"count": 1, "mode": "both", "events": ["message"]}})
    answer = await fleet.say(phone, "oi", wait=True)
    delivered = [d for d in answer["deliveries"] if d["event"] == "message" and d["delivered"]]
    assert sorted(d["kind"] for d in delivered) == ["duplicate", "new_envelope", "original"]

    await fleet.wait_replies(phone, 1)
    await fleet.quiet()
    assert len(await fleet.replies(phone)) == 1
    incoming = [e for e in await fleet.history(phone) if e["direction"] == "in"]
    assert [e["waha_id"] for e in incoming] == [answer["message_id"]]


async def test_waha_500_twice_then_201_delivers_one_message(fleet: Fleet) -> None:
    phone = fleet.new_phone()
    await fleet.faults({"fail_next": {"count": 2, "status": 500, "paths": ["/api/sendText"]}})
    await fleet.say(phone, "oi")
    [reply] = await fleet.wait_replies(phone, 1)
    await fleet.quiet()
    # Both failures were answered (the fault is used up), and one message came of it.
    assert (await fleet.faults({}))["fail_next"] is None
    assert [m["id"] for m in await fleet.replies(phone)] == [reply["id"]]
    [out] = [e for e in await fleet.history(phone) if e["direction"] == "out"]
    assert out["waha_id"] == reply["id"]


async def test_422_parks_the_reply_until_session_status_working(fleet: Fleet) -> None:
    phone = fleet.new_phone()
    # The session goes down while a reply is on its way: WAHA answers 422.
    await fleet.faults({"latency": {"ms": 1500, "paths": ["/api/sendSeen"]}})
    await fleet.say(phone, "oi")
    wait_until(lambda: fleet.delivery_lock_held(phone), timeout=15, what="the sender to start")
    await fleet.session_status("STOPPED")
    try:
        wait_until(fleet.session_parked, timeout=15, what="the session's outbox to be parked")
        await fleet.clear_faults()
        conversation = await fleet.conversation(phone)
        assert conversation["outbox_pending"] == 1
        assert await fleet.replies(phone) == []
    finally:
        # WAHA's session.status WORKING webhook is what wakes the parked replies.
        await fleet.session_status("WORKING")
    [reply] = await fleet.wait_replies(phone, 1, timeout=15)
    await fleet.quiet()
    assert not fleet.session_parked()
    assert [m["id"] for m in await fleet.replies(phone)] == [reply["id"]]


async def test_the_business_phone_pauses_the_bot_but_our_own_echoes_do_not(
    fleet: Fleet,
) -> None:
    phone = fleet.new_phone()
    chat_id = f"{phone}@c.us"
    await fleet.say(phone, "oi")
    await fleet.wait_replies(phone, 1)
    await fleet.quiet()  # the greeting's echo (message.any, fromMe) has been handled
    await fleet.say(phone, "Ana")
    await fleet.wait_replies(phone, 2)
    await fleet.quiet()
    assert (await fleet.conversation(phone))["state"] == "bot"

    # Someone at the business answers from the phone itself: WAHA sends message.any with
    # fromMe, typed in the app (not through the API), with an id the fleet never sent.
    now = time.time()
    typed = {
        "id": "evt_" + uuid.uuid4().hex[:26],
        "timestamp": int(now * 1000),
        "event": "message.any",
        "session": "default",
        "metadata": {},
        "me": {"id": "5511900000001@c.us", "pushName": "wsm simulator"},
        "payload": {
            "id": f"true_{chat_id}_{uuid.uuid4().hex.upper()[:20]}",
            "timestamp": int(now),
            "from": chat_id,
            "fromMe": True,
            "source": "app",
            "to": chat_id,
            "body": "Oi Ana, aqui é a Carla da recepção.",
            "hasMedia": False,
            "ack": 1,
            "vCards": [],
        },
        "engine": "GOWS",
        "environment": {"version": "2025.11.2", "engine": "GOWS"},
    }
    body = compact(typed)
    response = await fleet.sim.post(
        fleet.product.webhook_url,
        content=body,
        headers=webhook_headers(body, fleet.product.hmac_key),
    )
    assert response.status_code == 200, response.text

    async def paused() -> bool:
        return (await fleet.conversation(phone))["state"] == "paused"

    await async_wait_until(paused, timeout=15, what="the bot to pause")
    answer = await fleet.say(phone, "1")

    async def handled() -> bool:
        return any(e["waha_id"] == answer["message_id"] for e in await fleet.history(phone))

    await async_wait_until(handled, timeout=15, what="the customer's message to be handled")
    await fleet.quiet()
    # The bot kept quiet: still the two replies from before the person took over.
    assert len(await fleet.replies(phone)) == 2
    history = await fleet.history(phone)
    assert [(e["direction"], e["author"]) for e in history] == [
        ("in", "customer"), ("out", "bot"), ("in", "customer"), ("out", "bot"),
        ("out", "business"), ("in", "customer"),
    ]  # fmt: skip
