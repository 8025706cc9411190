"""The delivery lock holds for as long as its sender lives, and nothing is sent on a lock or a
head that is no longer ours (issue 11, item 1). WAHA is stood in for by respx; the calls a test
needs to hold open are async side effects that wait for the test."""

from __future__ import annotations

import asyncio
import contextlib
from typing import NamedTuple

import httpx
import orjson
import respx
from redis.exceptions import ConnectionError as RedisConnectionError

from engine.sender import SEND_BEGIN, InflightSend, LockKeeper, Sender
from engine.waha_client import SentMessage, WahaClient
from shared.keys import WahaSessionKeys, engine_keys_for
from tests.engine.harness import WAHA, mock_courtesy, texts_sent
from tests.engine.support import CHAT, commit_replies, make_sender, sent_answer

TOKEN = f"default|{CHAT}"


def held_typing() -> tuple[asyncio.Event, asyncio.Event]:
    """The first startTyping waits until the test lets it go; the others answer at once.
    Returns (reached, release)."""
    reached, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def typing(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            reached.set()
            await release.wait()
        return httpx.Response(201, json={})

    respx.post(f"{WAHA}/api/startTyping").mock(side_effect=typing)
    for path in ("sendSeen", "stopTyping"):
        respx.post(f"{WAHA}/api/{path}").mock(return_value=httpx.Response(201, json={}))
    return reached, release


class Typing(NamedTuple):
    """A sender delivering TOKEN's outbox, held in its first startTyping: it has the lock and
    its send token, and has not sent yet."""

    sender: Sender
    waha: WahaClient
    task: asyncio.Task[None]
    release: asyncio.Event

    async def finish(self) -> None:
        """Let the typing answer, and the delivery run to its end."""
        self.release.set()
        await self.task


async def typing_sender(aredis, prefix: str, **options: object) -> Typing:
    reached, release = held_typing()
    sender, waha = make_sender(aredis, prefix, typing_delay_max_ms=1, **options)
    task = asyncio.create_task(sender.deliver(TOKEN))
    await reached.wait()
    return Typing(sender, waha, task, release)


async def empty_bucket(aredis, prefix: str, tokens: float) -> None:
    """The session's send bucket as the rate script leaves it, `tokens` short of one (the
    Redis clock), so the next send token is a while away."""
    seconds, micros = await aredis.time()
    await aredis.hset(
        WahaSessionKeys("default", prefix).rate,
        mapping={"tokens": str(tokens), "at": seconds * 1000 + micros // 1000},
    )


@respx.mock
async def test_a_sender_waiting_for_a_send_token_keeps_its_lock(aredis, key_prefix) -> None:
    # The reproduction: a 300 ms lock, 5 sends/s, a sender that waits about a second
    # for its token and then types. Without renewal a second sender took the expired lock and
    # both sent: ['olá', 'olá'].
    reached, release = held_typing()
    send = respx.post(f"{WAHA}/api/sendText").mock(side_effect=[sent_answer(1), sent_answer(2)])
    await commit_replies(aredis, key_prefix, "olá")
    await empty_bucket(aredis, key_prefix, -4)  # (1 - -4) / 5 per s: a second to wait
    options: dict[str, object] = {
        "lock_ms": 300, "sends_per_second": 5, "burst": 1, "typing_delay_max_ms": 1,
    }  # fmt: skip
    first, waha_a = make_sender(aredis, key_prefix, **options)
    second, waha_b = make_sender(aredis, key_prefix, **options)
    task = asyncio.create_task(first.deliver(TOKEN))
    await reached.wait()  # the first sender got its token (three lock lifetimes later)
    await second.deliver(TOKEN)  # while the first is typing the reply
    release.set()
    await task
    assert texts_sent(send) == ["olá"]
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    assert await aredis.llen(keys.outbox) == 0
    assert await aredis.exists(keys.sending) == 0
    await waha_a.aclose()
    await waha_b.aclose()


@respx.mock
async def test_a_sender_that_lost_its_lock_sends_nothing_and_extends_nothing(
    aredis, key_prefix
) -> None:
    send = respx.post(f"{WAHA}/api/sendText").mock(return_value=sent_answer(1))
    await commit_replies(aredis, key_prefix, "olá")
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    held = await typing_sender(aredis, key_prefix, lock_ms=60_000)
    # Someone else holds the conversation now (its lock expired under a stalled process).
    await aredis.set(keys.sending, "someone-else", px=5000)
    await held.finish()
    assert send.call_count == 0
    assert await aredis.llen(keys.outbox) == 1
    assert await aredis.get(keys.sending) == b"someone-else"
    assert 0 < await aredis.pttl(keys.sending) <= 5000  # not extended by the stalled sender
    await held.waha.aclose()


@respx.mock
async def test_a_reply_recorded_meanwhile_is_not_sent_and_the_next_one_is(
    aredis, key_prefix
) -> None:
    send = respx.post(f"{WAHA}/api/sendText").mock(side_effect=[sent_answer(1), sent_answer(2)])
    await commit_replies(aredis, key_prefix, "primeira", "segunda")
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    held = await typing_sender(aredis, key_prefix)
    # The head is taken off while this sender types (an echo recorded an earlier send of it).
    await aredis.lpop(keys.outbox)
    await held.finish()
    assert texts_sent(send) == ["segunda"]
    assert await aredis.llen(keys.outbox) == 0
    await held.waha.aclose()


@respx.mock
async def test_a_send_whose_sender_died_waits_for_its_echo_instead_of_going_twice(
    aredis, key_prefix
) -> None:
    for path in ("sendSeen", "startTyping", "stopTyping"):
        respx.post(f"{WAHA}/api/{path}").mock(return_value=httpx.Response(201, json={}))
    accepted = asyncio.Event()
    texts: list[str] = []  # respx records a call only once it is answered

    async def send_text(request: httpx.Request) -> httpx.Response:
        texts.append(orjson.loads(request.content)["text"])
        if not accepted.is_set():
            accepted.set()  # WAHA has the message; its answer never reaches the sender
            await asyncio.Event().wait()
        return sent_answer(len(texts))

    respx.post(f"{WAHA}/api/sendText").mock(side_effect=send_text)
    await commit_replies(aredis, key_prefix, "primeira", "segunda")
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    session_keys = WahaSessionKeys("default", key_prefix)
    first, waha_a = make_sender(aredis, key_prefix, lock_ms=300)
    task = asyncio.create_task(first.deliver(TOKEN))
    await accepted.wait()
    task.cancel()  # the sender dies mid-send
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await aredis.delete(keys.sending)  # and its lock is gone (expired)
    second, waha_b = make_sender(aredis, key_prefix, lock_ms=300)
    await second.deliver(TOKEN)
    # Whether "primeira" went out is unknown: it is not sent again while its echo may come.
    assert texts == ["primeira"]
    assert await aredis.llen(keys.outbox) == 2
    assert await aredis.zscore(keys.outbox_pending, TOKEN) > await _redis_ms(aredis) + 1000
    # Its echo (message.any, fromMe) comes and records it.
    marker = InflightSend.decode(await aredis.get(session_keys.inflight(CHAT)))
    echo = SentMessage(f"true_{CHAT}_3EB0{1:016X}")
    assert await second.settle_echo(TOKEN, marker, echo, marker.at_ms)
    assert await aredis.zscore(keys.outbox_pending, TOKEN) <= await _redis_ms(aredis)
    await second.deliver(TOKEN)
    assert texts == ["primeira", "segunda"]
    assert await aredis.llen(keys.outbox) == 0
    meta = await aredis.hgetall(keys.history_meta)
    assert meta[f"w:3EB0{1:016X}".encode()] == marker.mid.encode()
    await waha_a.aclose()
    await waha_b.aclose()


async def _redis_ms(aredis) -> int:
    seconds, micros = await aredis.time()
    return int(seconds * 1000 + micros // 1000)


async def test_a_stopped_lock_keeper_renews_no_more_even_if_a_renewal_eats_the_cancel(
    aredis, key_prefix
) -> None:
    """A sender that is done stops its keeper; the lock must then lapse. A renewal under way
    that turns a cancellation into a timeout (as a client library may, CPython gh-86296) once
    kept the keeper renewing, for ever, the lock of a sender that was gone: its conversation's
    replies were never sent again."""
    keeper = LockKeeper(aredis, f"{key_prefix}:lock", "mine", lock_ms=30)  # renews every 10 ms
    renewals = 0
    renewing = asyncio.Event()

    async def renew() -> bool:
        nonlocal renewals
        renewals += 1
        if renewals >= 3:
            renewing.set()
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            raise TimeoutError("timed out") from None
        return True

    keeper.renew = renew  # type: ignore[method-assign]
    keeper.start()
    await asyncio.wait_for(renewing.wait(), 10)
    stopping = asyncio.create_task(keeper.stop())
    # Not a timing: the old keeper never stopped at all; 10 s only keeps the test from hanging.
    done, _ = await asyncio.wait({stopping}, timeout=10)
    assert stopping in done, "the keeper is still renewing after stop()"
    stopped_at = renewals
    await asyncio.sleep(0.2)
    assert renewals == stopped_at


@respx.mock
async def test_an_attempt_that_never_reached_waha_does_not_hold_the_reply_back(
    aredis, key_prefix, monkeypatch
) -> None:
    # Redis goes away as send_begin.lua (which marked the head with the attempt) and the
    # in-flight marker land, before their answer and before sendText: nothing was sent. The
    # mark is cleared once Redis answers again, so the next sender sends at once instead of
    # waiting the echo wait (60 s) for an echo that cannot come: a Redis freeze in the chaos
    # run held a dozen replies so.
    mock_courtesy()
    send = respx.post(f"{WAHA}/api/sendText").mock(side_effect=[sent_answer(1)])
    await commit_replies(aredis, key_prefix, "olá")
    real_pipeline = aredis.pipeline
    failed = []

    def pipeline_once_away(*args, **kwargs):
        pipe = real_pipeline(*args, **kwargs)
        execute = pipe.execute

        async def landed_then_away(*a, **k):
            begins = [args for args, _ in pipe.command_stack if SEND_BEGIN.sha in args]
            answers = await execute(*a, **k)
            if begins and not failed:
                failed.append(answers)
                raise RedisConnectionError("Connection lost")
            return answers

        pipe.execute = landed_then_away
        return pipe

    monkeypatch.setattr(aredis, "pipeline", pipeline_once_away)
    first, _ = make_sender(aredis, key_prefix)
    with contextlib.suppress(RedisConnectionError):
        await first.deliver(TOKEN)
    assert failed and failed[0] == [0, 1]  # begun (the head carries its mark), and marked
    assert texts_sent(send) == []
    await first.drain()  # its clean-up task: the mark cleared
    second, _ = make_sender(aredis, key_prefix)
    await second.deliver(TOKEN)
    assert texts_sent(send) == ["olá"]
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    assert await aredis.llen(keys.outbox) == 0
