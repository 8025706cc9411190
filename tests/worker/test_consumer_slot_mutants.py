"""A consumer slot's rarer turns, run in this process against a real Redis: tests written to
kill the mutants of worker/consumer_slot.py that survived the mutation run (docs/testing.md,
"Mutation testing", lists each and the mutant it kills).

- A message that is not its conversation's head (only a bug or a hand-edited Redis gets
  there, shared/queue_errors.py): the conversation is handed back at once, still first in
  line, and nothing is charged to the message.
- A lease lost mid-message: the work is dropped and reported as such, and the slot goes on;
  it is not a failure of the slot (which would log "consumer slot failed" and back off).
- The slot's loop outlives an empty wait, an unreachable Redis and a bug of its own: a slot
  that ends is a process serving one conversation fewer, for good.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
import redis.asyncio

from shared.dead_letters import list_dead_letters
from shared.embedded_redis import free_port
from shared.envelope import QueuedEvent
from shared.keys import ShardKeys, all_shards, conversation_token, shard_of
from shared.queue_consumer import Lease, QueueConsumer
from shared.queue_errors import LeaseLost
from shared.queue_reaper import QueueReaper
from tests.support.polling import async_wait_until
from tests.worker.support.fleet import SESSION, chat_id, conversation, enqueue_texts
from tests.worker.support.slots import run_slot, start_slot
from worker.handler import HandlerContext
from worker.handlers.recording import record

SLOT_LOG = "wsm.worker.consumer_slot"
PLANTED = "planted-at-the-head"


async def _plant_a_new_head(client: Any, ctx: HandlerContext) -> None:
    """Put a message in front of the one being handled (a hand-edited Redis): a copy of its
    record under another id, at the head (the right end of the message list)."""
    keys = ctx.conversation
    record = await client.hget(keys.bodies, ctx.message_id)
    await client.hset(keys.bodies, PLANTED, record)
    await client.rpush(keys.messages, PLANTED)
    await client.hincrby(keys.shard_keys.stats, "waiting", 1)


@pytest.mark.parametrize("how", ["commit", "failure"])
async def test_a_message_found_not_to_be_the_head_hands_the_conversation_back_first_in_line(
    aredis: Any, key_prefix: str, how: str
) -> None:
    """The slot learns that its message is not the head from the commit (ack_message.lua) or,
    when the handler failed, from fail_message.lua. Either way it releases the conversation to
    the FRONT of the line at once (not at lease end), and charges nothing: the new head is
    handled next, then the message, and only then the other conversation waiting behind.
    Kills, in _after_error (commit) and _fail (failure): the release's `keeper` dropped or
    None (no release: the conversation waits out its lease), `to_front=True` -> `False`,
    `None` or dropped (it goes to the back, behind the other conversation)."""
    first, other = chat_id(21), chat_id(22)
    sent = await enqueue_texts(aredis, key_prefix, {first: ["a1"]})
    sent |= await enqueue_texts(aredis, key_prefix, {other: ["b1"]})
    order: list[str] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        order.append(ctx.message_id)
        if len(order) == 1:
            await _plant_a_new_head(aredis, ctx)
            if how == "commit":
                await ctx.commit([("RPUSH", ctx.conversation.handled, ctx.message_id)])
            raise RuntimeError("the handler failed")
        await ctx.commit([("RPUSH", ctx.conversation.handled, ctx.message_id)])

    async def all_handled() -> bool:
        return len(order) == 4

    await run_slot(aredis, key_prefix, handler, all_handled)
    a1, b1 = sent[first][0], sent[other][0]
    assert order == [a1, PLANTED, a1, b1]
    keys = conversation(first, key_prefix)
    assert await aredis.lrange(keys.handled, 0, -1) == [PLANTED.encode(), a1.encode()]
    assert await aredis.hlen(keys.attempts) == 0
    assert await list_dead_letters(aredis, 1, key_prefix) == []


async def _take_the_lease_away(client: Any, prefix: str, ctx: HandlerContext) -> None:
    """What a stalled holder suffers: its lease runs out and the reaper takes the conversation
    back (bumping the fence)."""
    keys = ctx.conversation
    await client.hset(keys.meta, "lease_until", 1)
    await client.zadd(keys.shard_keys.leases, {keys.token: 1})
    reaper = QueueReaper(client, max_attempts=3, lock_ms=10)
    for shard in all_shards(1, prefix):
        await reaper.run_pass(shard)


def _slot_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == SLOT_LOG]


@pytest.mark.parametrize("found_by", ["commit", "extension"])
async def test_a_lease_lost_mid_message_drops_the_work_and_the_slot_goes_on(
    aredis: Any, key_prefix: str, caplog: pytest.LogCaptureFixture, found_by: str
) -> None:
    """The handler's lease is taken back while it works. Found by its commit (LeaseLost), or
    by an extension after which the handler gives up with an error of its own: the work is
    dropped, counted as lost (never as a failed attempt: fail_message is not asked, the
    conversation is someone else's), and the slot carries on with the redelivery.
    Kills, on the LeaseLost path of _after_error and the `keeper.lost` path of _fail: the
    outcome, the lease or the message passed wrongly to _count, or an argument dropped (each
    an exception out of the turn: the slot logs "consumer slot failed" and backs off)."""
    caplog.set_level(logging.INFO, logger=SLOT_LOG)
    chat = chat_id(23)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["a1"]})
    deliveries: list[int] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        deliveries.append(ctx.attempt)
        if len(deliveries) == 1:
            await _take_the_lease_away(aredis, key_prefix, ctx)
            if found_by == "extension":
                try:
                    await ctx.extend_lease()
                except LeaseLost:
                    raise RuntimeError("gave up") from None
        await ctx.commit([("RPUSH", ctx.conversation.handled, ctx.message_id)])

    keys = conversation(chat, key_prefix)

    async def handled() -> bool:
        return await aredis.llen(keys.handled) == 1

    await run_slot(aredis, key_prefix, handler, handled)
    assert await aredis.lrange(keys.handled, 0, -1) == [sent[chat][0].encode()]
    assert len(deliveries) == 2
    records = _slot_records(caplog)
    lost = [r for r in records if r.getMessage() == "lease lost; work dropped"]
    assert [(r.levelno, getattr(r, "message_id", None)) for r in lost] == [
        (logging.WARNING, sent[chat][0])
    ]
    assert getattr(lost[0], "outcome", None) == "lost"
    assert getattr(lost[0], "conversation", None) == keys.token
    if found_by == "extension":
        assert getattr(lost[0], "error", None) == "RuntimeError: gave up"
    assert not [r for r in records if r.getMessage() == "consumer slot failed; continuing"]
    assert await list_dead_letters(aredis, 1, key_prefix) == []


# --- the loop ---------------------------------------------------------------------------------


class WatchedConsumer(QueueConsumer):
    """The real consumer, counting how its blocking waits for a conversation ended (with one
    shard, the slot's only way to take one)."""

    def __init__(self, client: Any) -> None:
        super().__init__(
            client, lease_ms=10_000, batch=10, max_attempts=3, backoff_ms=60_000,
            backoff_max_ms=60_000,
        )  # fmt: skip
        self.empty_waits = 0
        self.failed_waits = 0

    async def wait_ready(self, shard: ShardKeys, block_seconds: float) -> str | None:
        try:
            token = await super().wait_ready(shard, block_seconds)
        except Exception:
            self.failed_waits += 1
            raise
        if token is None:
            self.empty_waits += 1
        return token


async def until(condition: Any, what: str) -> None:
    async def check() -> bool:
        return bool(condition())

    await async_wait_until(check, timeout=30, what=what)


async def test_a_slot_with_nothing_to_do_keeps_waiting_and_takes_what_comes(
    aredis: Any, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its wait for a conversation ends empty (BLOCK_SECONDS) while nothing is queued: the
    slot waits again, quietly, and takes the message that comes later. Kills, in run: the
    `continue` after an empty wait -> `break` (the slot would end at its first quiet second);
    in _next_conversation: an empty wait answered as (home, None) (a failed claim of nothing,
    logged as a failure of the slot, every second)."""
    caplog.set_level(logging.INFO, logger=SLOT_LOG)
    consumer = WatchedConsumer(aredis)
    task, stopping = start_slot(consumer, key_prefix)
    try:
        await until(lambda: consumer.empty_waits >= 2 or task.done(), "two empty waits")
        assert not task.done()
        chat = chat_id(24)
        await enqueue_texts(aredis, key_prefix, {chat: ["late"]})
        keys = conversation(chat, key_prefix)

        async def handled() -> bool:
            return await aredis.llen(keys.handled) == 1 or task.done()

        await async_wait_until(handled, timeout=30, what="the late message to be handled")
        assert not task.done()
        assert await aredis.llen(keys.handled) == 1
        assert await aredis.llen(keys.messages) == 0
    finally:
        stopping.set()
        await task
    assert not [r for r in _slot_records(caplog) if r.levelno >= logging.WARNING]


async def test_a_slot_rides_out_an_unreachable_redis(key_prefix: str) -> None:
    """No Redis answers (refused): the slot backs off and tries again, for as long as it
    takes. Kills, in run: the backoff's delay None, `Backoff(first=None)` or `cap=None`, and
    `asyncio.sleep(None)` on that path (each raises out of the loop: the slot ends)."""
    nobody = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    consumer = WatchedConsumer(nobody)
    task, stopping = start_slot(consumer, key_prefix)
    try:
        await until(lambda: consumer.failed_waits >= 3 or task.done(), "three failed waits")
        assert not task.done()
    finally:
        stopping.set()
        await task
        await nobody.aclose()


async def test_a_slot_survives_a_failure_of_its_own_and_goes_on(
    aredis: Any, key_prefix: str
) -> None:
    """Something that is not Redis being away fails in the loop (here the line's key holds a
    string, as a hand-edited Redis would leave it: WRONGTYPE): the slot logs it, backs off and
    goes on, and serves the line once it is sound again. Kills, in run: `asyncio.sleep(None)`
    after a failure of the slot's own (the slot would end)."""
    shard = ShardKeys(0, key_prefix)
    await aredis.set(shard.ready, "not a list")
    consumer = WatchedConsumer(aredis)
    task, stopping = start_slot(consumer, key_prefix)
    try:
        await until(lambda: consumer.failed_waits >= 2 or task.done(), "two failed waits")
        assert not task.done()
        await aredis.delete(shard.ready)
        chat = chat_id(25)
        await enqueue_texts(aredis, key_prefix, {chat: ["after the repair"]})
        keys = conversation(chat, key_prefix)

        async def handled() -> bool:
            return await aredis.llen(keys.handled) == 1 or task.done()

        await async_wait_until(handled, timeout=30, what="the message to be handled")
        assert not task.done()
        assert await aredis.llen(keys.handled) == 1
    finally:
        stopping.set()
        await task


# --- several shards ------------------------------------------------------------------------


def chats_on(shard: int, shards: int, how_many: int, start: int) -> list[str]:
    """Chat ids whose conversations live on `shard` of `shards`."""
    found: list[str] = []
    n = start
    while len(found) < how_many:
        chat = chat_id(n)
        if shard_of(conversation_token(SESSION, chat), shards) == shard:
            found.append(chat)
        n += 1
    return found


async def serve_in_order(aredis: Any, key_prefix: str, chats: list[str], shards: int) -> list[str]:
    """Run one slot, home shard 0 of `shards`, until every chat's one message is handled;
    the chats in the order served."""
    served: list[str] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        served.append(str(event.document()["payload"]["from"]))
        await record(event, ctx)

    consumer = WatchedConsumer(aredis)
    task, stopping = start_slot(consumer, key_prefix, handler, shards=shards)
    try:
        await until(lambda: len(served) == len(chats) or task.done(), "every chat served")
        assert not task.done()
    finally:
        stopping.set()
        await task
    return served


async def test_a_slot_takes_its_home_shard_first_then_sweeps_the_others(
    aredis: Any, key_prefix: str
) -> None:
    """Work on its home shard and on another: the home shard's conversation first, then the
    other shard's (which has no slot of its own here). Kills, in _next_conversation: the
    home's pop skipped, asked of None or its answer negated; the sweep's range, shard, pop or
    answer broken (the other shard never served)."""
    [home_chat] = chats_on(0, 2, 1, start=100)
    [other_chat] = chats_on(1, 2, 1, start=100)
    await enqueue_texts(aredis, key_prefix, {other_chat: ["other"]}, shards=2)
    await enqueue_texts(aredis, key_prefix, {home_chat: ["home"]}, shards=2)

    assert await serve_in_order(aredis, key_prefix, [home_chat, other_chat], 2) == [
        home_chat,
        other_chat,
    ]


async def test_the_sweep_takes_turns_among_the_other_shards(aredis: Any, key_prefix: str) -> None:
    """Two shards besides the slot's home both have work: the sweep starts from the next shard
    each time, so neither waits for the other to run dry. Kills, in _next_conversation:
    `_sweep_start += 1` -> `= 1` or `+= 2` (the same shard first every time)."""
    one = chats_on(1, 3, 2, start=200)
    two = chats_on(2, 3, 2, start=200)
    await enqueue_texts(aredis, key_prefix, {chat: ["m"] for chat in one + two}, shards=3)

    served = await serve_in_order(aredis, key_prefix, one + two, 3)

    shard = {chat: 1 for chat in one} | {chat: 2 for chat in two}
    assert [shard[chat] for chat in served] in ([1, 2, 1, 2], [2, 1, 2, 1])


# --- handing a conversation back -------------------------------------------------------------


async def ready_line(client: Any, prefix: str) -> list[str]:
    """The shard's line of conversations, front first (the front is the right end)."""
    return [t.decode() for t in reversed(await client.lrange(ShardKeys(0, prefix).ready, 0, -1))]


async def two_chats_waiting(client: Any, prefix: str, first_texts: list[str], n: int) -> tuple:
    """A conversation with `first_texts`, and another queued behind it with one message."""
    first, behind = chat_id(n), chat_id(n + 1)
    sent = await enqueue_texts(client, prefix, {first: first_texts})
    sent |= await enqueue_texts(client, prefix, {behind: ["b1"]})
    return first, behind, sent


async def test_a_slot_told_to_stop_mid_turn_hands_the_rest_back_first_in_line(
    aredis: Any, key_prefix: str
) -> None:
    """Shutdown begins while a turn is under way: the message in hand is finished, the next
    one is not started, and the conversation goes back to the FRONT of the line at once (not
    when its lease runs out), charged nothing. Kills, in run_turn: that release's `keeper`
    dropped or None, `to_front=True` -> `False`, `None` or dropped."""
    first, behind, sent = await two_chats_waiting(aredis, key_prefix, ["a1", "a2"], 30)
    consumer = WatchedConsumer(aredis)
    stop: list[asyncio.Event] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        await record(event, ctx)
        stop[0].set()  # shutdown starts while this message is handled

    task, stopping = start_slot(consumer, key_prefix, handler)
    stop.append(stopping)
    await task

    keys = conversation(first, key_prefix)
    assert [orjson_id(e) for e in await aredis.lrange(keys.handled, 0, -1)] == [sent[first][0]]
    assert await aredis.lrange(keys.messages, 0, -1) == [sent[first][1].encode()]
    assert await ready_line(aredis, key_prefix) == [
        keys.token,
        conversation(behind, key_prefix).token,
    ]
    assert await aredis.hget(keys.meta, "state") == b"ready"
    assert await aredis.hlen(keys.attempts) == 0


def orjson_id(entry: bytes) -> str:
    return str(orjson.loads(entry)["id"])


async def test_a_turn_whose_lease_ran_out_during_a_commit_hands_the_rest_back_first_in_line(
    aredis: Any, key_prefix: str
) -> None:
    """A commit retried after the lease ran out went through: the next message is not started
    on a lease that is over; the conversation goes back to the FRONT of the line at once, so
    its next message comes before the conversation waiting behind it (no reaper here). Kills,
    in run_turn: that release's `keeper` dropped or None, `to_front=True` -> `False`, `None`
    or dropped."""
    first, behind, sent = await two_chats_waiting(aredis, key_prefix, ["a1", "a2"], 32)
    keys = conversation(first, key_prefix)
    consumer = WatchedConsumer(aredis)
    order: list[str] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        order.append(ctx.message_id)
        if ctx.message_id == sent[first][0]:
            # The commit's first call reaches Redis, its answer is lost, and the retry comes
            # after the lease ran out (as in test_consumer_slot.py's test of the same story).
            lease = Lease(ctx.conversation, ctx.fence, 0, [])
            await consumer.ack(lease, ctx.message_id, [("RPUSH", keys.handled, "a1")])
            await aredis.hset(keys.meta, "lease_until", 1)
            await aredis.zadd(keys.shard_keys.leases, {keys.token: 1})
            await ctx.commit()
            return
        await ctx.commit([("RPUSH", ctx.conversation.handled, ctx.message_id)])

    async def all_three() -> bool:
        return len(order) == 3

    await run_slot(aredis, key_prefix, handler, all_three)
    assert order == [sent[first][0], sent[first][1], sent[behind][0]]
    assert await aredis.hlen(keys.attempts) == 0


async def test_a_handler_cancelled_by_shutdown_hands_its_conversation_back_first_in_line(
    aredis: Any, key_prefix: str
) -> None:
    """Shutdown past its grace period cancels a handler mid-message: nothing was committed, and
    the conversation goes back to the FRONT of the line at once, its message still queued and
    charged nothing. Kills, in run_turn's CancelledError branch: `if not keeper.lost` negated,
    the release (or its lease) replaced by None or dropped, `to_front=True` -> `False`/`None`
    or dropped."""
    first, behind, sent = await two_chats_waiting(aredis, key_prefix, ["a1"], 34)
    started = asyncio.Event()

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        started.set()
        await asyncio.Event().wait()  # works until cancelled

    consumer = WatchedConsumer(aredis)
    task, _ = start_slot(consumer, key_prefix, handler)
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    keys = conversation(first, key_prefix)
    assert await aredis.lrange(keys.messages, 0, -1) == [sent[first][0].encode()]
    assert await ready_line(aredis, key_prefix) == [
        keys.token,
        conversation(behind, key_prefix).token,
    ]
    assert await aredis.zcard(keys.shard_keys.leases) == 0
    assert await aredis.hlen(keys.attempts) == 0
    assert await aredis.llen(keys.handled) == 0


async def test_a_message_whose_record_is_missing_is_dead_lettered_at_once(
    aredis: Any, key_prefix: str
) -> None:
    """A queued id whose record is gone (a hand-edited Redis) can never be handled: it goes to
    the dead letters at once, saying so, and the conversation goes on. Kills, in _handle: the
    `_fail` of a missing record given None or too few arguments (the conversation stuck on
    it), `terminal=True` -> `False`/`None` or dropped (retried with backoff instead), and its
    error text."""
    chat = chat_id(36)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["gone", "fine"]})
    keys = conversation(chat, key_prefix)
    await aredis.hdel(keys.bodies, sent[chat][0])

    async def handled() -> bool:
        return await aredis.llen(keys.handled) == 1

    await run_slot(aredis, key_prefix, record, handled)
    assert [orjson_id(e) for e in await aredis.lrange(keys.handled, 0, -1)] == sent[chat][1:]
    (letter,) = await list_dead_letters(aredis, 1, key_prefix)
    assert (letter.id, letter.attempts) == (sent[chat][0], 1)
    assert letter.error == "queued record is missing"
