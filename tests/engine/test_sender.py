"""The sender against a WAHA stood in for by respx (WAHA's status codes and answer shapes)."""

from __future__ import annotations

import httpx
import orjson
import respx

from engine.history import HistoryKeys, read_page
from engine.sender import typing_pause_ms
from shared.backoff import backoff_ms
from shared.keys import WahaSessionKeys, engine_keys_for
from tests.engine.harness import WAHA, mock_courtesy, texts_sent
from tests.engine.support import CHAT, commit_replies, make_sender, sent_answer


@respx.mock
async def test_replies_go_out_in_order_with_seen_typing_and_ids_kept(aredis, key_prefix) -> None:
    mock_courtesy()
    send = respx.post(f"{WAHA}/api/sendText").mock(side_effect=[sent_answer(n) for n in range(3)])
    await commit_replies(aredis, key_prefix, "primeira", "segunda", "terceira")
    sender, waha = make_sender(aredis, key_prefix, typing_delay_max_ms=5)
    await sender.deliver(f"default|{CHAT}")
    assert texts_sent(send) == ["primeira", "segunda", "terceira"]
    # WAHA's advice: seen once, then typing around each reply.
    calls = [c.request.url.path for c in respx.calls]
    assert calls[:4] == ["/api/sendSeen", "/api/startTyping", "/api/stopTyping", "/api/sendText"]
    assert calls.count("/api/sendSeen") == 1 and calls.count("/api/startTyping") == 3
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    assert await aredis.llen(keys.outbox) == 0
    assert await aredis.zcard(keys.outbox_pending) == 0
    assert await aredis.exists(keys.sending) == 0
    page, _ = await read_page(aredis, HistoryKeys(keys.history, keys.history_meta))
    assert [(e.text, e.status) for e in page] == [
        ("primeira", "sent"), ("segunda", "sent"), ("terceira", "sent"),
    ]  # fmt: skip
    assert page[0].waha_id == f"true_{CHAT}_3EB0{0:016X}"
    # Our own ids are remembered, so their echoes on message.any are recognised as ours.
    assert await aredis.exists(WahaSessionKeys("default", key_prefix).ours(f"3EB0{1:016X}")) == 1
    await waha.aclose()


@respx.mock
async def test_500_twice_then_201_delivers_one_message(aredis, key_prefix) -> None:
    mock_courtesy()
    error = httpx.Response(500, json={"statusCode": 500, "message": "Internal server error"})
    send = respx.post(f"{WAHA}/api/sendText").mock(side_effect=[error, error, sent_answer(1)])
    await commit_replies(aredis, key_prefix, "olá")
    sender, waha = make_sender(aredis, key_prefix)
    token = f"default|{CHAT}"
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    for _ in range(3):  # each failed attempt leaves the reply due again after a backoff
        await sender.deliver(token)
    assert send.call_count == 3
    assert await aredis.llen(keys.outbox) == 0
    page, _ = await read_page(aredis, HistoryKeys(keys.history, keys.history_meta))
    assert [(e.text, e.status) for e in page] == [("olá", "sent")]
    await sender.deliver(token)
    assert send.call_count == 3  # nothing left: nothing sent again
    await waha.aclose()


@respx.mock
async def test_retry_counts_attempts_and_gives_up_into_the_dead_letters(aredis, key_prefix) -> None:
    mock_courtesy()
    respx.post(f"{WAHA}/api/sendText").mock(side_effect=httpx.ConnectError("refused"))
    await commit_replies(aredis, key_prefix, "a")
    sender, waha = make_sender(aredis, key_prefix, max_attempts=2)
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    await sender.deliver(f"default|{CHAT}")
    [raw] = await aredis.lrange(keys.outbox, 0, -1)
    assert orjson.loads(raw)["attempts"] == 1 and "ConnectError" in orjson.loads(raw)["last_error"]
    assert await aredis.zscore(keys.outbox_pending, f"default|{CHAT}") > 1
    await sender.deliver(f"default|{CHAT}")
    assert await aredis.llen(keys.outbox) == 0
    assert await aredis.llen(keys.outbox_dlq) == 1
    await waha.aclose()


@respx.mock
async def test_other_4xx_goes_to_the_dead_letters_with_wahas_answer(aredis, key_prefix) -> None:
    mock_courtesy()
    bad = httpx.Response(400, json={"statusCode": 400, "message": "chatId is invalid"})
    send = respx.post(f"{WAHA}/api/sendText").mock(side_effect=[bad, sent_answer(2)])
    await commit_replies(aredis, key_prefix, "ruim", "boa")
    sender, waha = make_sender(aredis, key_prefix)
    await sender.deliver(f"default|{CHAT}")
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    [dead] = [orjson.loads(x) for x in await aredis.lrange(keys.outbox_dlq, 0, -1)]
    assert dead["entry"]["text"] == "ruim"
    assert dead["reason"]["status"] == 400 and "chatId is invalid" in dead["reason"]["answer"]
    assert texts_sent(send) == ["ruim", "boa"]  # the next reply still goes out
    page, _ = await read_page(aredis, HistoryKeys(keys.history, keys.history_meta))
    assert [(e.text, e.status) for e in page] == [("ruim", "failed"), ("boa", "sent")]
    await waha.aclose()


@respx.mock
async def test_422_parks_the_session_until_it_works_again(aredis, key_prefix) -> None:
    mock_courtesy()
    down = httpx.Response(
        422, json={"statusCode": 422, "message": "Session status is not as expected: STARTING"}
    )
    send = respx.post(f"{WAHA}/api/sendText").mock(
        side_effect=[down, sent_answer(3), sent_answer(4)]
    )
    other = "5511900000009@c.us"
    await commit_replies(aredis, key_prefix, "para o primeiro")
    await commit_replies(aredis, key_prefix, "para o segundo", chat=other)
    sender, waha = make_sender(aredis, key_prefix)
    await sender.deliver(f"default|{CHAT}")
    parked = WahaSessionKeys("default", key_prefix).parked
    assert await aredis.exists(parked) == 1
    # Parked: the other conversation of the session is not sent either.
    await sender.deliver(f"default|{other}")
    assert send.call_count == 1
    await sender.wake_session("default")
    await sender.drain()
    assert await aredis.exists(parked) == 0
    assert send.call_count == 3
    assert texts_sent(send)[0] == "para o primeiro"
    assert sorted(texts_sent(send)[1:]) == ["para o primeiro", "para o segundo"]
    await waha.aclose()


async def test_delivery_lock_keeps_a_second_sender_out(aredis, key_prefix) -> None:
    await commit_replies(aredis, key_prefix, "x")
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    await aredis.set(keys.sending, "someone-else", px=10_000)
    sender, waha = make_sender(aredis, key_prefix)
    with respx.mock:
        send = respx.post(f"{WAHA}/api/sendText").mock(return_value=sent_answer(1))
        await sender.deliver(f"default|{CHAT}")
        assert send.call_count == 0
    assert await aredis.get(keys.sending) == b"someone-else"
    await waha.aclose()


async def test_send_rate_take_script_limits_a_session(aredis, key_prefix) -> None:
    from engine.sender import SEND_RATE_TAKE

    key = WahaSessionKeys("default", key_prefix).rate
    grants = [await SEND_RATE_TAKE(aredis, [key], [1, 3]) for _ in range(4)]
    assert grants[:3] == [0, 0, 0]
    assert 0 < grants[3] <= 1000
    assert 0 < await aredis.pttl(key) <= 4000


async def test_an_idle_bucket_holds_no_more_than_its_burst(aredis, key_prefix) -> None:
    """A session quiet for a minute (its bucket last touched 60 s ago, by the Redis clock)
    may send its burst at once, not a minute's worth of sends: WAHA's own limits and
    WhatsApp's ban heuristics see the burst. Kills: the `math.min(burst, ...)` cap dropped
    from send_rate_take.lua (60 sends granted at once)."""
    from engine.sender import SEND_RATE_TAKE

    key = WahaSessionKeys("default", key_prefix).rate
    seconds, micros = await aredis.time()
    a_minute_ago = int(seconds * 1000 + micros // 1000) - 60_000
    await aredis.hset(key, mapping={"tokens": "3", "at": str(a_minute_ago)})
    grants = [await SEND_RATE_TAKE(aredis, [key], [1, 3]) for _ in range(4)]
    assert grants[:3] == [0, 0, 0]
    assert 0 < grants[3] <= 1000


def test_typing_pause_and_backoff() -> None:
    assert typing_pause_ms("oi", 35, 0) == 0
    assert typing_pause_ms("oi", 35, 3000) == 370
    assert typing_pause_ms("x" * 1000, 35, 3000) == 3000
    for attempt in range(1, 10):
        delay = backoff_ms(attempt, 500, 60_000)
        ceiling = min(60_000, 500 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert backoff_ms(1, 500, 60_000, retry_after=7) == 7000
