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
- Redis away for one call (a claim, a failure's record, a hand-back, the hand-back at
  shutdown): the slot gives up when the lease would have run out, leaves the rest to the
  reaper and goes on, and still stops when told.
- What the slot reports: the dead letter's and the dropped work's log lines, the handled
  count, and the busy flag the process's heartbeat sums; and the owner name its claims
  carry, by which a retried claim knows its own lease.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import orjson
import pytest
import redis.asyncio
from prometheus_client import REGISTRY

from shared.dead_letters import list_dead_letters
from shared.embedded_redis import free_port
from shared.envelope import QueuedEvent
from shared.keys import ConversationKeys, ShardKeys, all_shards, conversation_token, shard_of
from shared.queue_consumer import FailResult, Lease, QueueConsumer
from shared.queue_errors import LeaseLost
from shared.queue_reaper import QueueReaper
from tests.support.polling import async_wait_until
from tests.worker.support.fleet import SESSION, chat_id, conversation, enqueue_texts
from tests.worker.support.slots import (
    commit_after_the_lease_ran_out,
    new_slot,
    run_slot,
    start_slot,
    stop_slot,
)
from worker.consumer_slot import ConsumerSlot
from worker.handler import HandlerContext
from worker.handlers.recording import record

SLOT_LOG = "wsm.worker.consumer_slot"
T = TypeVar("T")
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
    aredis: Any, key_prefix: str, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """The slot learns that its message is not the head from the commit (ack_message.lua) or,
    when the handler failed, from fail_message.lua. Either way it releases the conversation to
    the FRONT of the line at once (not at lease end), and charges nothing: the new head is
    handled next, then the message, and only then the other conversation waiting behind.
    Kills, in _after_error (commit) and _fail (failure): the release's `keeper` dropped or
    None (no release: the conversation waits out its lease), `to_front=True` -> `False`,
    `None` or dropped (it goes to the back, behind the other conversation); the `_count` after
    that release broken (an exception out of the turn: the slot reports a failure of its own
    and backs off) or given the wrong error."""
    caplog.set_level(logging.INFO, logger=SLOT_LOG)
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
            raise RuntimeError("boom")
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
    [dropped] = work_dropped(caplog)
    why = f"{a1} is not the head of {keys.token}" if how == "commit" else "RuntimeError: boom"
    assert (getattr(dropped, "message_id", None), getattr(dropped, "error", None)) == (a1, why)


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


def work_dropped(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The slot's "work dropped" reports (warnings, outcome "lost"), after checking that it
    never reported a failure of its own."""
    records = _slot_records(caplog)
    assert not [r for r in records if r.getMessage() == "consumer slot failed; continuing"]
    dropped = [r for r in records if r.getMessage() == "lease lost; work dropped"]
    assert {(r.levelno, getattr(r, "outcome", None)) for r in dropped} <= {
        (logging.WARNING, "lost")
    }
    # No attempts count: this worker counted none, and a 0 read as "no attempt yet" while
    # Redis had counted them (found by an audit).
    assert not [r for r in dropped if hasattr(r, "attempts")]
    return dropped


@pytest.mark.parametrize("found_by", ["commit", "extension", "extension-then-return"])
async def test_a_lease_lost_mid_message_drops_the_work_and_the_slot_goes_on(
    aredis: Any, key_prefix: str, caplog: pytest.LogCaptureFixture, found_by: str
) -> None:
    """The handler's lease is taken back while it works. Found by its commit (LeaseLost), or
    by an extension after which the handler gives up with an error of its own, or returns
    without committing: the work is dropped, counted as lost (never as a failed attempt:
    fail_message is not asked, the conversation is someone else's; never as handled), and the
    slot carries on with the redelivery.
    Kills, on the LeaseLost path of _after_error, the `keeper.lost` path of _fail and
    _handle's "lease lost before commit": the outcome, the lease or the message passed wrongly
    to _count, or an argument dropped (each an exception out of the turn: the slot logs
    "consumer slot failed" and backs off); the error's text not reported (`str(exc)` -> None,
    `str(None)`, the literal); _handle's `ack_later = True` at the start or `and not
    keeper.lost` -> `or` (the dropped work counted as handled)."""
    caplog.set_level(logging.INFO, logger=SLOT_LOG)
    chat = chat_id(23)
    sent = await enqueue_texts(aredis, key_prefix, {chat: ["a1"]})
    deliveries: list[int] = []

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        deliveries.append(ctx.attempt)
        if len(deliveries) == 1:
            await _take_the_lease_away(aredis, key_prefix, ctx)
            if found_by != "commit":
                try:
                    await ctx.extend_lease()
                except LeaseLost:
                    if found_by == "extension":
                        raise RuntimeError("gave up") from None
                    return
        await ctx.commit([("RPUSH", ctx.conversation.handled, ctx.message_id)])

    keys = conversation(chat, key_prefix)

    async def handled() -> bool:
        return await aredis.llen(keys.handled) == 1

    await run_slot(aredis, key_prefix, handler, handled)
    assert await aredis.lrange(keys.handled, 0, -1) == [sent[chat][0].encode()]
    assert len(deliveries) == 2
    [lost] = work_dropped(caplog)
    assert getattr(lost, "message_id", None) == sent[chat][0]
    assert getattr(lost, "conversation", None) == keys.token
    why = {
        "commit": f"lease on {keys.token} was taken over",
        "extension": "RuntimeError: gave up",
        "extension-then-return": "lease lost before commit",
    }[found_by]
    assert getattr(lost, "error", None) == why
    assert await list_dead_letters(aredis, 1, key_prefix) == []


# --- the loop ---------------------------------------------------------------------------------


class WatchedConsumer(QueueConsumer):
    """The real consumer, counting how its blocking waits for a conversation ended (with one
    shard, the slot's only way to take one). Redis can be made to fail some of its calls
    ("claim", "release", "fail"): those in `refused` never reach it, the next of those in
    `answer_lost` reaches it but its answer does not come back, those in `hung` never
    answer (a frozen Redis)."""

    def __init__(self, client: Any, *, lease_ms: int = 10_000) -> None:
        super().__init__(
            client, lease_ms=lease_ms, batch=10, max_attempts=3, backoff_ms=60_000,
            backoff_max_ms=60_000,
        )  # fmt: skip
        self.empty_waits = 0
        self.failed_waits = 0
        self.refused: set[str] = set()
        self.answer_lost: set[str] = set()
        self.hung: set[str] = set()
        self.calls: collections.Counter[str] = collections.Counter()

    async def _through(self, what: str, call: Coroutine[Any, Any, T]) -> T:
        self.calls[what] += 1
        if what in self.refused:
            call.close()
            raise redis.exceptions.ConnectionError(f"{what}: connection refused")
        if what in self.hung:
            call.close()
            await asyncio.Event().wait()
        answer = await call
        if what in self.answer_lost:
            self.answer_lost.discard(what)
            raise redis.exceptions.ConnectionError(f"{what}: connection reset")
        return answer

    async def claim(self, shard: ShardKeys, token: str, owner: str) -> Lease | None:
        return await self._through("claim", super().claim(shard, token, owner))

    async def release(self, lease: Lease, *, to_front: bool = False) -> bool:
        return await self._through("release", super().release(lease, to_front=to_front))

    async def release_and_take(self, lease: Lease) -> tuple[bool, str | None]:
        self.calls["release_and_take"] += 1
        return await self._through("release", super().release_and_take(lease))

    async def fail(self, lease: Lease, message_id: str, error: str, **how: bool) -> FailResult:
        return await self._through("fail", super().fail(lease, message_id, error, **how))

    async def wait_ready(self, shard: ShardKeys, block_seconds: float) -> str | None:
        self.calls["wait"] += 1
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


async def a_message_comes_and_is_handled(
    client: Any, prefix: str, task: asyncio.Task[None], n: int
) -> ConversationKeys:
    """Queue one message for chat `n` while the slot runs: the slot handles it and is still
    running. The message's conversation."""
    keys = conversation(chat_id(n), prefix)
    await enqueue_texts(client, prefix, {chat_id(n): ["later"]})

    async def handled() -> bool:
        return await client.llen(keys.handled) == 1 or task.done()

    await async_wait_until(handled, timeout=30, what="the message to be handled")
    assert not task.done()
    assert await client.llen(keys.handled) == 1
    return keys


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
        keys = await a_message_comes_and_is_handled(aredis, key_prefix, task, 24)
        assert await aredis.llen(keys.messages) == 0
    finally:
        await stop_slot(task, stopping)
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
        await stop_slot(task, stopping)
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
        await a_message_comes_and_is_handled(aredis, key_prefix, task, 25)
    finally:
        await stop_slot(task, stopping)


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
        await stop_slot(task, stopping)
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
    try:
        await until(task.done, "the slot to stop after the message in hand")
    finally:
        await stop_slot(task, stopping)

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
            # As in test_consumer_slot.py's test of the same story.
            await commit_after_the_lease_ran_out(
                consumer, aredis, ctx, [("RPUSH", keys.handled, "a1")]
            )
            return
        await ctx.commit([("RPUSH", ctx.conversation.handled, ctx.message_id)])

    async def all_three() -> bool:
        return len(order) == 3

    await run_slot(aredis, key_prefix, handler, all_three)
    assert order == [sent[first][0], sent[first][1], sent[behind][0]]
    assert await aredis.hlen(keys.attempts) == 0


async def cancelled_mid_message(consumer: QueueConsumer, prefix: str) -> asyncio.Task[None]:
    """A slot whose handler works until cancelled, its task cancelled once the handler runs
    (shutdown past its grace period); the task, ended."""
    started = asyncio.Event()

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        started.set()
        await asyncio.Event().wait()

    task, stopping = start_slot(consumer, prefix, handler)
    try:
        await until(started.is_set, "the handler to start")
        task.cancel()
        await until(task.done, "the slot to end")
    finally:
        await stop_slot(task, stopping)
    return task


async def test_a_handler_cancelled_by_shutdown_hands_its_conversation_back_first_in_line(
    aredis: Any, key_prefix: str
) -> None:
    """Shutdown past its grace period cancels a handler mid-message: nothing was committed, and
    the conversation goes back to the FRONT of the line at once, its message still queued and
    charged nothing. Kills, in run_turn's CancelledError branch: `if not keeper.lost` negated,
    the release (or its lease) replaced by None or dropped, `to_front=True` -> `False`/`None`
    or dropped."""
    first, behind, sent = await two_chats_waiting(aredis, key_prefix, ["a1"], 34)
    task = await cancelled_mid_message(WatchedConsumer(aredis), key_prefix)
    assert task.cancelled()
    keys = conversation(first, key_prefix)
    assert await aredis.lrange(keys.messages, 0, -1) == [sent[first][0].encode()]
    assert await ready_line(aredis, key_prefix) == [
        keys.token,
        conversation(behind, key_prefix).token,
    ]
    assert await aredis.zcard(keys.shard_keys.leases) == 0
    assert await aredis.hlen(keys.attempts) == 0
    assert await aredis.llen(keys.handled) == 0


@pytest.mark.parametrize("redis_is", ["refusing", "frozen"])
async def test_a_handler_cancelled_while_redis_cannot_take_the_hand_back_still_ends(
    aredis: Any, key_prefix: str, redis_is: str
) -> None:
    """Shutdown cancels a handler mid-message while Redis refuses the hand-back or never
    answers it: the slot gives up on it (within HAND_BACK_SECONDS when frozen) and ends as
    cancelled, leaving the conversation to the reaper. Kills, in run_turn's CancelledError
    branch: the hand-back without its deadline (`wait_for(…, None)`: a frozen Redis holds the
    shutdown for ever), TimeoutError or the Redis errors left out of its `suppress` (or
    `suppress(None, …)`): the slot ends in that error instead of its cancellation."""
    first, behind, sent = await two_chats_waiting(aredis, key_prefix, ["a1"], 48)
    consumer = WatchedConsumer(aredis)
    (consumer.refused if redis_is == "refusing" else consumer.hung).add("release")
    task = await cancelled_mid_message(consumer, key_prefix)
    assert task.cancelled()
    keys = conversation(first, key_prefix)
    assert await aredis.lrange(keys.messages, 0, -1) == [sent[first][0].encode()]
    assert await ready_line(aredis, key_prefix) == [conversation(behind, key_prefix).token]
    assert await aredis.hlen(keys.attempts) == 0


async def test_a_turn_counts_each_message_it_handled_once(aredis: Any, key_prefix: str) -> None:
    """The turn adds its handled messages to wsm_worker_messages_total{outcome="ok"} when it
    ends (once per turn, not per message: docs/benchmarks.md), and takes itself out of
    wsm_worker_inflight. Kills, in run_turn: the count started at 1, set instead of added to,
    or stepped by 2."""

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    chat = chat_id(50)
    await enqueue_texts(aredis, key_prefix, {chat: ["m1", "m2", "m3"]})
    keys = conversation(chat, key_prefix)
    ok_before = sample("wsm_worker_messages_total", {"outcome": "ok"})
    inflight_before = sample("wsm_worker_inflight")

    async def all_three() -> bool:
        return await aredis.llen(keys.handled) == 3

    await run_slot(aredis, key_prefix, record, all_three)
    assert sample("wsm_worker_messages_total", {"outcome": "ok"}) - ok_before == 3
    assert sample("wsm_worker_inflight") == inflight_before


async def test_a_message_whose_record_is_missing_is_dead_lettered_at_once(
    aredis: Any, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A queued id whose record is gone (a hand-edited Redis) can never be handled: it goes to
    the dead letters at once, saying so, and the conversation goes on. Kills, in _handle: the
    `_fail` of a missing record given None or too few arguments (the conversation stuck on
    it), `terminal=True` -> `False`/`None` or dropped (retried with backoff instead), and its
    error text; in _count and _fail, the dead letter's report: an error, not a warning, with
    its attempts, error and fence (the level chosen wrongly, a field dropped or renamed)."""
    caplog.set_level(logging.INFO, logger=SLOT_LOG)
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
    [report] = [r for r in _slot_records(caplog) if r.levelno >= logging.WARNING]
    assert (report.levelno, report.getMessage()) == (
        logging.ERROR,
        "message sent to the dead letters",
    )
    fields = {k: getattr(report, k, None) for k in ("message_id", "outcome", "attempts", "error")}
    assert fields == {
        "message_id": sent[chat][0],
        "outcome": "dead",
        "attempts": 1,
        "error": "queued record is missing",
    }
    assert getattr(report, "fence", 0) >= 1


# --- Redis away for one call ----------------------------------------------------------------


async def serve_until_handled(client: Any, slot: ConsumerSlot, keys: ConversationKeys) -> None:
    """Run the slot until the conversation of `keys` has a message handled; the slot is still
    running then."""
    task = asyncio.create_task(slot.run())

    async def handled() -> bool:
        return await client.llen(keys.handled) == 1 or task.done()

    try:
        await async_wait_until(handled, timeout=30, what="the message to be handled")
        assert not task.done()
    finally:
        await stop_slot(task, slot.stopping)


async def test_a_claim_whose_answer_was_lost_is_asked_again_and_finds_its_lease(
    aredis: Any, key_prefix: str
) -> None:
    """The claim reaches Redis (the conversation is leased to the slot) but its answer is lost:
    the slot asks again, as the same owner, gets the lease it already has and handles the
    message now, not after the lease ran out and a reaper took it back (none runs here).
    Kills, in _claim: the retry's deadline in the past (`+` -> `-`: no retry, the slot gives
    up on a conversation it holds)."""
    chat = chat_id(40)
    await enqueue_texts(aredis, key_prefix, {chat: ["m"]})
    keys = conversation(chat, key_prefix)
    consumer = WatchedConsumer(aredis)
    consumer.answer_lost.add("claim")
    await serve_until_handled(aredis, new_slot(consumer, key_prefix), keys)
    assert consumer.calls["claim"] == 2


async def test_a_slot_claims_under_its_own_name(aredis: Any, key_prefix: str) -> None:
    """The lease's owner (kept in the conversation's meta) is the slot's name and its claim
    count: a retried claim recognises its own lease by it (claim_conversation.lua), so a name
    shared between slots would give one slot another's lease, two handlers on one conversation
    with the same fence. Kills, in __init__: `owner = None` (every slot of every process
    claiming as "None:<n>")."""
    chat = chat_id(41)
    await enqueue_texts(aredis, key_prefix, {chat: ["m"]})
    keys = conversation(chat, key_prefix)
    owners: list[bytes] = []
    slot = new_slot(WatchedConsumer(aredis), key_prefix)

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        owners.append(await aredis.hget(keys.meta, "owner"))
        await record(event, ctx)

    slot.handler = handler
    await serve_until_handled(aredis, slot, keys)
    # new_slot names its slot "test".
    assert [owner.decode().rpartition(":")[0] for owner in owners] == ["test"]


async def test_a_slot_whose_claims_cannot_reach_redis_still_stops_when_told(
    aredis: Any, key_prefix: str
) -> None:
    """Redis refuses the claim of a conversation the slot took off the line: the slot retries
    until the lease would have run out (the reaper hands the conversation back then), gives
    up and goes round its loop, where it sees that it is told to stop. Kills, in _claim: the
    retry without a deadline (None, or `* 1000`: the slot retries for as long as Redis is
    away, deaf to shutdown)."""
    await enqueue_texts(aredis, key_prefix, {chat_id(41): ["m"]})
    consumer = WatchedConsumer(aredis, lease_ms=600)
    consumer.refused.add("claim")
    task, stopping = start_slot(consumer, key_prefix)
    try:
        await until(lambda: consumer.calls["claim"] >= 1, "a claim")
        stopping.set()
        await until(task.done, "the slot to stop")
    finally:
        await stop_slot(task, stopping)


async def test_a_failure_redis_cannot_record_is_left_to_the_reaper_and_the_slot_goes_on(
    aredis: Any, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler fails and Redis refuses the slot's fail_message until the lease would have
    run out: the slot gives up (the reaper counts the attempt when the lease lapses), reports
    the work dropped, and serves the conversation waiting behind. Kills, in _fail: the retry
    without a deadline (None: the slot retries for as long as Redis is away, serving nothing
    and deaf to shutdown) and the `_count` on that path broken (an exception out of the turn:
    the slot reports a failure of its own)."""
    caplog.set_level(logging.INFO, logger=SLOT_LOG)
    first, behind, sent = await two_chats_waiting(aredis, key_prefix, ["a1"], 42)
    consumer = WatchedConsumer(aredis, lease_ms=600)
    consumer.refused.add("fail")

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        if ctx.message_id == sent[first][0]:
            raise RuntimeError("boom")
        await record(event, ctx)

    slot = new_slot(consumer, key_prefix, handler)
    await serve_until_handled(aredis, slot, conversation(behind, key_prefix))
    keys = conversation(first, key_prefix)
    assert await aredis.lrange(keys.messages, 0, -1) == [sent[first][0].encode()]
    assert await aredis.hlen(keys.attempts) == 0
    [dropped] = work_dropped(caplog)
    assert getattr(dropped, "message_id", None) == sent[first][0]
    assert getattr(dropped, "error", None) == "RuntimeError: boom"


async def test_a_hand_back_redis_cannot_take_is_left_to_the_reaper_and_the_slot_goes_on(
    aredis: Any, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis refuses every release: after each turn the slot retries until the lease would
    have run out, gives up quietly (the reaper hands the conversation back when the lease
    lapses) and serves the next conversation. Kills, in _release: the retry without a
    deadline (None: the slot is stuck on its first hand-back for as long as Redis is away),
    the Redis errors no longer suppressed (each turn ends in an exception: the slot reports
    Redis unreachable and pauses)."""
    caplog.set_level(logging.INFO, logger=SLOT_LOG)
    first, behind, _ = await two_chats_waiting(aredis, key_prefix, ["a1"], 44)
    consumer = WatchedConsumer(aredis, lease_ms=600)
    consumer.refused.add("release")
    slot = new_slot(consumer, key_prefix)
    await serve_until_handled(aredis, slot, conversation(behind, key_prefix))
    assert await aredis.llen(conversation(first, key_prefix).handled) == 1
    assert not [r for r in _slot_records(caplog) if r.levelno >= logging.WARNING]


# --- the next conversation, taken in the release's round trip --------------------------------


async def test_a_turn_that_ends_with_a_backlog_takes_the_next_conversation_in_its_release(
    aredis: Any, key_prefix: str
) -> None:
    """Another conversation waits when a turn ends: the release takes it in the same round
    trip (release_and_take.lua), and the slot claims it without a BLMOVE of its own. Kills, in
    run_turn: `take_next` False; in _release: the taken token dropped (the conversation would
    sit in `claimed` until the reaper: the test times out)."""
    first, behind, _ = await two_chats_waiting(aredis, key_prefix, ["a1"], 50)
    consumer = WatchedConsumer(aredis)
    waits_before: dict[str, int] = {}

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        waits_before[str(event.document()["payload"]["from"])] = consumer.calls["wait"]
        await record(event, ctx)

    slot = new_slot(consumer, key_prefix, handler)
    await serve_until_handled(aredis, slot, conversation(behind, key_prefix))
    # The first came by the slot's BLMOVE, the one behind it with the first's release.
    assert waits_before == {first: 1, behind: 1}
    assert await aredis.llen(ShardKeys(0, key_prefix).claimed) == 0


async def test_a_release_and_take_whose_answer_was_lost_is_retried_without_taking_again(
    aredis: Any, key_prefix: str
) -> None:
    """The release that takes the next conversation reaches Redis but its answer is lost: the
    retry only releases, so the conversation it took waits in `claimed` for the reaper (as
    after a BLMOVE whose answer was lost) and no second one is taken and stranded with it.
    Kills, in _release: the retry taking again (`next(attempts) == 0` always true)."""
    first, second, _ = await two_chats_waiting(aredis, key_prefix, ["a1"], 52)
    third = chat_id(54)
    await enqueue_texts(aredis, key_prefix, {third: ["c1"]})
    consumer = WatchedConsumer(aredis)
    consumer.answer_lost.add("release")
    calls_before: dict[str, collections.Counter[str]] = {}

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        calls_before[str(event.document()["payload"]["from"])] = consumer.calls.copy()
        await record(event, ctx)

    slot = new_slot(consumer, key_prefix, handler)
    await serve_until_handled(aredis, slot, conversation(third, key_prefix))
    # The retry was a plain release; the third came by a BLMOVE of the slot's own.
    assert calls_before[third]["release_and_take"] == 1
    assert calls_before[third]["release"] == 2
    assert calls_before[third]["wait"] == 2
    shard = ShardKeys(0, key_prefix)
    assert await aredis.lrange(shard.claimed, 0, -1) == [
        conversation(second, key_prefix).token.encode()
    ]
    assert await aredis.llen(conversation(second, key_prefix).handled) == 0
    assert await aredis.llen(conversation(first, key_prefix).messages) == 0


async def test_a_conversation_taken_as_shutdown_begins_is_handed_back_first_in_line(
    aredis: Any, key_prefix: str
) -> None:
    """Shutdown begins just after a release took the next conversation: the slot still claims
    it, starts none of its messages and hands it back to the front of the line at once, not
    after the reaper finds it in `claimed`. Kills, in run: the loop ending while a taken
    conversation is in hand."""
    first, behind, sent = await two_chats_waiting(aredis, key_prefix, ["a1"], 56)

    class StopsAfterTaking(WatchedConsumer):
        stopping: asyncio.Event

        async def release_and_take(self, lease: Lease) -> tuple[bool, str | None]:
            answer = await super().release_and_take(lease)
            self.stopping.set()
            return answer

    consumer = StopsAfterTaking(aredis)
    task, stopping = start_slot(consumer, key_prefix)
    consumer.stopping = stopping
    try:
        await until(task.done, "the slot to stop")
    finally:
        await stop_slot(task, stopping)
    keys = conversation(behind, key_prefix)
    assert await ready_line(aredis, key_prefix) == [keys.token]
    assert await aredis.hget(keys.meta, "state") == b"ready"
    assert await aredis.lrange(keys.messages, 0, -1) == [sent[behind][0].encode()]
    assert await aredis.llen(ShardKeys(0, key_prefix).claimed) == 0
    assert await aredis.llen(conversation(first, key_prefix).handled) == 1


# --- the heartbeat's count -------------------------------------------------------------------


async def test_a_slot_counts_as_busy_exactly_while_its_handler_runs(
    aredis: Any, key_prefix: str
) -> None:
    """A worker process reports `sum(slot.handling for slot in slots)` as its messages in
    flight (worker/process.py, the heartbeat): each slot's flag is False while it waits, True
    while a handler runs, and False again after it, whether the handler failed or not. Kills,
    in __init__: `handling = None` (the sum fails: no heartbeat) or `True`; in _handle: the
    flag not raised before the handler, or not lowered (None, True) after it."""
    first, behind, sent = await two_chats_waiting(aredis, key_prefix, ["a1"], 46)
    seen: list[object] = []
    slot = new_slot(WatchedConsumer(aredis), key_prefix)
    assert slot.handling is False

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None:
        seen.append(slot.handling)
        if ctx.message_id == sent[first][0]:
            raise RuntimeError("boom")
        await record(event, ctx)

    slot.handler = handler
    await serve_until_handled(aredis, slot, conversation(behind, key_prefix))
    assert seen == [True, True]
    assert slot.handling is False
