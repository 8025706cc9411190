"""Webhook delivery: WAHA's retry policies, subscriptions, and the duplicate / out-of-order /
held-while-down behaviours."""

from __future__ import annotations

import itertools

import pytest

from tests.support.polling import async_wait_until
from tests.wsm.waha_sim.conftest import Receiver, SimFactory
from wsm.waha_sim.retry import RetryPolicy, retry_after_seconds

CHAT = "5511987650052@c.us"


def test_policy_delays_are_wahas() -> None:
    # Retry n waits: constant d; linear n*d; exponential 2^n*d plus 0-20 % jitter.
    assert [RetryPolicy("constant", 2, 15).delay(n) for n in (1, 2, 3)] == [2, 2, 2]
    assert [RetryPolicy("linear", 2, 15).delay(n) for n in (1, 2, 3)] == [2, 4, 6]
    exponential = RetryPolicy("exponential", 2, 15)
    for n, base in ((1, 4), (2, 8), (3, 16)):
        for _ in range(50):
            assert base <= exponential.delay(n) <= base * 1.2
    # Retry-After wins when longer (constant, exponential); delay 0 means no wait.
    assert RetryPolicy("constant", 2, 15).delay(1, retry_after=5) == 5
    assert RetryPolicy("constant", 0, 15).delay(1) == 0
    assert retry_after_seconds("3") == 3
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470) == 10
    assert retry_after_seconds(None) == 0
    with pytest.raises(ValueError):
        RetryPolicy("random", 2, 15)


@pytest.mark.parametrize(
    ("policy", "delay", "min_gaps"),
    [("constant", 0.2, (0.2, 0.2)), ("linear", 0.1, (0.1, 0.2)), ("exponential", 0.05, (0.1, 0.2))],
)
async def test_500_twice_then_200_is_three_attempts_spaced_by_the_policy(
    make_sim: SimFactory,
    receiver: Receiver,
    policy: str,
    delay: float,
    min_gaps: tuple[float, float],
) -> None:
    receiver.script.extend([500, 500, 200])
    config = {"retries_policy": policy, "retries_delay": delay, "retries_attempts": 15}
    async with make_sim(
        webhook_urls=(receiver.url,), events=frozenset({"message"}), **config
    ) as sim:
        result = await sim.inbound(chat=CHAT, text="oi", wait=True)
        attempts = receiver.of("message")
        assert [r.status for r in attempts] == [500, 500, 200]
        (delivery,) = result["deliveries"]
        assert delivery["delivered"] is True
        assert [a["status"] for a in delivery["attempts"]] == [500, 500, 200]
        # A retry repeats the request: same bytes, same request id, same timestamp header.
        assert len({r.body for r in attempts}) == 1
        assert len({r.headers["x-webhook-request-id"] for r in attempts}) == 1
        assert len({r.headers["x-webhook-timestamp"] for r in attempts}) == 1
        gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
        # Lower bounds only: a retry can never come sooner than its policy allows.
        assert all(gap >= want - 0.01 for gap, want in zip(gaps, min_gaps, strict=True)), gaps
        stats = await sim.control("GET", "/webhooks")
        assert (stats["attempts"], stats["retries"], stats["delivered"]) == (3, 2, 1)


async def test_gives_up_after_the_configured_retries_and_retries_4xx_too(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    receiver.default_status = 400
    async with make_sim(
        webhook_urls=(receiver.url,), events=frozenset({"message"}), retries_attempts=2
    ) as sim:
        result = await sim.inbound(chat=CHAT, text="oi", wait=True)
        # WAHA retries every non-2xx answer: one request and two retries.
        assert [r.status for r in receiver.of("message")] == [400, 400, 400]
        assert result["deliveries"][0]["delivered"] is False
        stats = await sim.control("GET", "/webhooks")
        assert (stats["gave_up"], stats["failed_attempts"]) == (1, 3)


async def test_unreachable_receiver_counts_as_failed(make_sim: SimFactory) -> None:
    async with make_sim(
        webhook_urls=("http://127.0.0.1:9/nothing",),
        events=frozenset({"message"}),
        retries_attempts=1,
    ) as sim:
        result = await sim.inbound(chat=CHAT, text="oi", wait=True)
        (delivery,) = result["deliveries"]
        assert delivery["delivered"] is False
        assert [a["status"] for a in delivery["attempts"]] == [None, None]
        assert all(a["error"] for a in delivery["attempts"])


async def test_only_subscribed_events_are_sent(make_sim: SimFactory, receiver: Receiver) -> None:
    async with make_sim(webhook_urls=(receiver.url,), events=frozenset({"message"})) as sim:
        await sim.client.post("/api/sendText", json={"chatId": CHAT, "text": "Menu"})
        await sim.set_status("FAILED")
        await sim.set_status("WORKING")
        await sim.inbound(chat=CHAT, text="1", wait=True)
        assert [r.event for r in receiver.requests] == ["message"]


async def test_inbound_is_sent_as_message_and_message_any(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    async with make_sim(webhook_urls=(receiver.url,)) as sim:
        result = await sim.inbound(chat=CHAT, text="oi", wait=True)
        assert sorted(e["event"] for e in result["events"]) == ["message", "message.any"]
        (message,) = receiver.of("message")
        (any_,) = receiver.of("message.any")
        # Two events: two envelope ids, one message id.
        assert message.json["id"] != any_.json["id"]
        assert message.json["payload"] == any_.json["payload"]


async def test_duplicate_same_envelope(make_sim: SimFactory, receiver: Receiver) -> None:
    async with make_sim(webhook_urls=(receiver.url,), events=frozenset({"message"})) as sim:
        await sim.control(
            "POST", "/faults", json={"duplicate": {"count": 1, "mode": "same_envelope"}}
        )
        await sim.inbound(chat=CHAT, text="oi", wait=True)
        first, second = await receiver.wait_for("message", 2)
        assert first.body == second.body
        assert first.headers["x-webhook-request-id"] != second.headers["x-webhook-request-id"]
        # The fault was for one event only.
        await sim.inbound(chat=CHAT, text="de novo", wait=True)
        assert len(receiver.of("message")) == 3


async def test_duplicate_under_a_new_envelope_id(make_sim: SimFactory, receiver: Receiver) -> None:
    async with make_sim(webhook_urls=(receiver.url,), events=frozenset({"message"})) as sim:
        await sim.control(
            "POST",
            "/faults",
            json={"duplicate": {"count": 1, "mode": "new_envelope", "events": ["message"]}},
        )
        await sim.inbound(chat=CHAT, text="oi")
        first, second = await receiver.wait_for("message", 2)
        assert first.json["id"] != second.json["id"]
        assert first.json["payload"] == second.json["payload"]
        kinds = [d["kind"] for d in await sim.control("GET", "/webhooks/deliveries")]
        assert sorted(kinds) == ["new_envelope", "original"]


async def test_out_of_order_delivery(make_sim: SimFactory, receiver: Receiver) -> None:
    async with make_sim(webhook_urls=(receiver.url,), events=frozenset({"message"})) as sim:
        await sim.control("POST", "/faults", json={"reorder": {"count": 3}})
        for text in ("um", "dois", "três"):
            await sim.inbound(chat=CHAT, text=text)
        requests = await receiver.wait_for("message", 3)
        assert [r.json["payload"]["body"] for r in requests] == ["três", "dois", "um"]
        # Written in order: payload timestamps and the chat's order are the customer's.
        chat = await sim.chat(CHAT)
        assert [m["text"] for m in chat["messages"]] == ["um", "dois", "três"]
        # Afterwards, order is back to normal.
        await sim.inbound(chat=CHAT, text="quatro", wait=True)
        assert receiver.of("message")[-1].json["payload"]["body"] == "quatro"


async def test_a_partial_reorder_batch_is_released(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    async with make_sim(webhook_urls=(receiver.url,), events=frozenset({"message"})) as sim:
        await sim.control("POST", "/faults", json={"reorder": {"count": 5, "hold_ms": 100}})
        await sim.inbound(chat=CHAT, text="um")
        await sim.inbound(chat=CHAT, text="dois")
        requests = await receiver.wait_for("message", 2)
        assert [r.json["payload"]["body"] for r in requests] == ["dois", "um"]


async def test_customer_messages_wait_while_the_session_is_down(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    async with make_sim(
        webhook_urls=(receiver.url,), events=frozenset({"message", "session.status"})
    ) as sim:
        await sim.set_status("STARTING")
        held = await sim.inbound(chat=CHAT, text="alguém aí?")
        assert held["held"] is True
        await receiver.wait_for("session.status", 1)
        assert receiver.of("message") == []
        await sim.set_status("WORKING")
        (message,) = await receiver.wait_for("message")
        assert message.json["payload"]["id"] == held["message_id"]
        # Nothing reached the webhook before WORKING (deliveries after it race, as in WAHA).
        assert receiver.requests[0].event == "session.status"
        assert sorted(r.event for r in receiver.requests) == [
            "message",
            "session.status",
            "session.status",
        ]


async def test_lid_sender_and_replies_to_the_phone_number(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    async with make_sim(webhook_urls=(receiver.url,), events=frozenset({"message"})) as sim:
        sent = await sim.inbound(lid="77001122334455", phone="5511912345678", text="oi")
        (message,) = await receiver.wait_for("message")
        payload = message.json["payload"]
        assert payload["from"] == "77001122334455@lid"
        assert payload["id"].startswith("false_77001122334455@lid_")
        # Known lids are kept as the phone number's chat.
        assert sent["chat_id"] == "5511912345678@c.us"
        lookup = await sim.client.get("/api/default/lids/77001122334455@lid")
        assert lookup.json()["pn"] == "5511912345678@c.us"
        # The product answers the phone number; the customer sees one conversation.
        await sim.client.post("/api/sendText", json={"chatId": "5511912345678@c.us", "text": "Olá"})
        chat = await sim.chat("77001122334455@lid")
        assert [m["text"] for m in chat["messages"]] == ["oi", "Olá"]


async def test_reset_forgets_chats_and_stats(make_sim: SimFactory, receiver: Receiver) -> None:
    async with make_sim(webhook_urls=(receiver.url,)) as sim:
        await sim.inbound(chat=CHAT, text="oi", wait=True)
        await sim.set_status("FAILED")
        await sim.control("POST", "/reset")
        assert await sim.control("GET", "/chats") == []
        assert (await sim.control("GET", "/webhooks"))["events"] == 0
        sessions = await sim.control("GET", "/sessions")
        assert [s["status"] for s in sessions] == ["WORKING"]

        async def delivered_all() -> bool:
            return all(d["finished"] for d in await sim.control("GET", "/webhooks/deliveries"))

        await async_wait_until(delivered_all, what="deliveries to finish")
