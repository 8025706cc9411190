"""Tests written to kill mutants that survived the mutation runs (docs/testing.md lists each one
and the mutant it kills): the queue protocol's guards, against a real Redis (single and
cluster, like the other protocol tests), the handler seam (its context's commit, loading and
closing a handler), the recording handler's bounded list and the fleet's queue metrics."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from shared.embedded_redis import free_port
from shared.envelope import QueuedEvent, decode_record
from shared.queue_consumer import FailOutcome
from shared.queue_errors import LeaseLost
from shared.queue_stats import QueueSnapshot, read_queue_snapshot
from shared.redis_client import connect
from shared.settings import Settings
from tests.ops.render import REPO
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.in_process import single_queue
from tests.worker.support.protocol import (
    dead_letter_first_message,
    fence_out,
    hold,
    keys_of,
    lease_chat,
    message_ids,
    queue_chat,
    ready_order,
    reap_script,
    state,
    wait_past,
)
from worker.fleet_metrics import FleetCollector
from worker.handler import (
    AlreadyCommitted,
    Handler,
    HandlerContext,
    HandlerLoadError,
    HandlerSetup,
    close_handler,
    load_handler,
    start_handler,
)
from worker.handlers.recording import RECORD_LIMIT, record
from worker.lease_keeper import LeaseKeeper

# --- shared/scripts/ack_message.lua -------------------------------------------------------


async def test_a_retried_ack_after_an_ack_without_marker_is_reported_as_done(queue: Queue) -> None:
    """An ack committed by a version that wrote no `last_ack` marker: the retry, under the same
    live lease, must learn that its work is committed (and write nothing), not be told the
    message is not the head. Kills, in ack_message.lua's "no marker" fallback: `meta[2] ==
    'leased'` flipped, `not acked` dropped, and the head check `~= message_id` flipped."""
    chat = chat_id(1)
    ids = await queue_chat(queue, chat, ["a", "b"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    keys = keys_of(queue, chat)
    # What the older version's ack left: the head removed with its body, no marker.
    assert await queue.client.rpop(keys.messages) == ids[0].encode()
    await queue.client.hdel(keys.bodies, ids[0])
    assert await queue.client.hget(keys.meta, "last_ack") is None

    await consumer.ack(lease, ids[0], [("RPUSH", keys.handled, "again")])

    assert not lease.ran_out
    assert await message_ids(queue, chat) == [ids[1]]  # the next message is untouched
    assert await queue.client.exists(keys.handled) == 0  # the retry wrote nothing


# --- shared/scripts/claim_conversation.lua ------------------------------------------------


async def test_a_token_in_claimed_for_a_leased_conversation_is_not_leased_twice(
    queue: Queue,
) -> None:
    """Never two leases: should a leased conversation's token ever sit in `claimed` (it must
    not), a claim refuses it rather than trusting the list, and the holder keeps its lease
    and fence. Kills: the `return nil` of claim_conversation.lua's "already leased" guard."""
    chat = chat_id(3)
    await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat, owner="holder")
    keys = keys_of(queue, chat)
    await queue.client.lpush(keys.shard_keys.claimed, keys.token)

    assert await consumer.claim(keys.shard_keys, keys.token, "intruder") is None
    assert int(await queue.client.hget(keys.meta, "fence")) == lease.fence
    assert await queue.client.hget(keys.meta, "owner") == b"holder"
    assert await queue.client.zscore(keys.shard_keys.leases, keys.token) == lease.until_ms


# --- shared/scripts/fail_message.lua ------------------------------------------------------


async def test_a_failure_reported_after_the_lease_ran_out_is_left_to_the_reaper(
    queue: Queue,
) -> None:
    """A holder whose lease ran out (not reaped yet) reports a failure: it is told the lease
    is lost, counts no attempt and leaves the conversation leased in `leases`, where the
    reaper takes it back and counts the attempt itself (once). Kills: the `return {-1}` of
    fail_message.lua's expiry guard dropped (the late holder would count the attempt and
    move the conversation to `delayed` under a lease that is no longer its own)."""
    chat = chat_id(4)
    ids = await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer(lease_ms=50)
    lease = await lease_chat(queue, consumer, chat)
    keys = keys_of(queue, chat)
    await wait_past(lease.until_ms)

    result = await consumer.fail(lease, ids[0], "boom")

    assert result.outcome is FailOutcome.LOST
    assert await queue.client.hget(keys.attempts, ids[0]) is None
    assert await state(queue, chat) == "leased"
    assert await queue.client.zscore(keys.shard_keys.leases, keys.token) == lease.until_ms
    assert await message_ids(queue, chat) == ids


# --- shared/scripts/reap_expired_lease.lua ------------------------------------------------


async def test_a_lease_extended_after_the_reaper_listed_it_is_not_taken(queue: Queue) -> None:
    """The reaper lists expired leases, then reaps each in its own script call; meanwhile the
    holder may extend. The script itself must see the live deadline and leave the lease (and
    its fence) alone, so the holder still commits. Kills: the `return {0}` of
    reap_expired_lease.lua's "not expired" guard dropped."""
    chat = chat_id(5)
    ids = await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer(lease_ms=30_000)
    lease = await lease_chat(queue, consumer, chat)
    keys = keys_of(queue, chat)

    assert await reap_script(queue, keys) == [0]

    assert int(await queue.client.hget(keys.meta, "fence")) == lease.fence
    assert await state(queue, chat) == "leased"
    assert await queue.client.hget(keys.attempts, ids[0]) is None
    await consumer.ack(lease, ids[0])  # the holder's commit still lands
    assert await message_ids(queue, chat) == []


async def test_a_stale_lease_entry_of_a_conversation_no_longer_leased_is_only_dropped(
    queue: Queue,
) -> None:
    """An expired entry in `leases` whose conversation is not leased any more (it was
    released, and is waiting in line): the reaper drops the entry and touches nothing else:
    no fence drawn, no attempt or redelivery counted, not put in line a second time.
    Kills: the `return {0}` of reap_expired_lease.lua's "not leased" guard dropped."""
    chat = chat_id(6)
    ids = await queue_chat(queue, chat, ["a"])
    keys = keys_of(queue, chat)
    shard = keys.shard_keys
    await queue.client.zadd(shard.leases, {keys.token: 1})  # expired long ago
    assert await state(queue, chat) == "ready"

    report = await queue.reaper().run_pass(shard)

    assert report.reaped == 0
    assert await queue.client.zscore(shard.leases, keys.token) is None
    assert await state(queue, chat) == "ready"
    assert await queue.client.hget(keys.meta, "fence") is None
    assert await queue.client.hget(keys.attempts, ids[0]) is None
    assert await queue.client.hget(shard.stats, "redeliveries") is None
    assert await ready_order(queue, chat) == [keys.token]


async def test_a_holder_that_died_between_messages_costs_the_next_one_no_attempt(
    queue: Queue,
) -> None:
    """The reaper counts an attempt on the head only if the dead holder may have been working
    on it: a holder that had just acked a message under its lease (`last_ack` carries its
    fence) died between messages, and the next message is not charged. An ack left by an
    EARLIER lease says nothing about this one: then the attempt is counted.
    Kills: the fence-prefix comparison in reap_expired_lease.lua's `between_messages` flipped."""
    chat = chat_id(7)
    ids = await queue_chat(queue, chat, ["a", "b"])
    # Long enough for the ack to land before the lease runs out on a loaded machine.
    consumer = queue.consumer(lease_ms=1000)
    reaper = queue.reaper(max_attempts=5)
    keys = keys_of(queue, chat)

    first = await lease_chat(queue, consumer, chat, owner="w1")
    await consumer.ack(first, ids[0])  # then the holder dies before touching "b"
    await wait_past(first.until_ms)
    assert (await reaper.run_pass(keys.shard_keys)).reaped == 1
    assert await queue.client.hget(keys.attempts, ids[1]) is None

    second = await lease_chat(queue, consumer, chat, owner="w2")
    assert second.fence > first.fence
    await wait_past(second.until_ms)  # dies while working on "b"
    assert (await reaper.run_pass(keys.shard_keys)).reaped == 1
    assert int(await queue.client.hget(keys.attempts, ids[1])) == 1


# --- shared/scripts/promote_delayed.lua ---------------------------------------------------


async def test_a_stale_retry_time_of_a_leased_conversation_promotes_nothing(
    queue: Queue,
) -> None:
    """A due entry in `delayed` for a conversation that is leased now (the entry outlived its
    backoff): promoting it would put a leased conversation in line, so two workers would
    hold it. The reaper drops the entry and leaves the lease alone.
    Kills: the `return 0` of promote_delayed.lua's "still delayed" guard dropped."""
    chat = chat_id(8)
    await queue_chat(queue, chat, ["a"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    keys = keys_of(queue, chat)
    shard = keys.shard_keys
    await queue.client.zadd(shard.delayed, {keys.token: 1})  # due long ago

    assert (await queue.reaper().run_pass(shard)).promoted == 0

    assert await queue.client.zscore(shard.delayed, keys.token) is None
    assert await state(queue, chat) == "leased"
    assert await ready_order(queue, chat) == []
    assert int(await queue.client.hget(keys.meta, "fence")) == lease.fence


# --- shared/scripts/lib/fence.lua: the shard's fencing counter never goes down -------------


async def _counter(queue: Queue, chat: str) -> int:
    return int(await queue.client.get(keys_of(queue, chat).shard_keys.fence) or 0)


def _in_the_same_shard(queue: Queue, chat: str, start: int) -> str:
    """A chat of the same shard as `chat` (on the cluster, chats spread over six)."""
    shard = keys_of(queue, chat).shard_keys
    n = start
    while keys_of(queue, chat_id(n)).shard_keys != shard:
        n += 1
    return chat_id(n)


async def _handle_all(queue: Queue, chat: str) -> None:
    """Lease `chat`, ack its messages and release it: one ordinary turn, ending idle."""
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)
    for message in lease.messages:
        await consumer.ack(lease, message.id)
    assert await consumer.release(lease)


async def _pop_into_claimed(queue: Queue, chat: str, meta_fence: int, *, queued: bool) -> None:
    """`chat` popped into `claimed` with a meta fence an older version wrote (below or above
    the shard's counter), with or without messages queued."""
    keys = keys_of(queue, chat)
    if queued:
        await queue_chat(queue, chat, ["a"])
        await queue.client.lrem(keys.shard_keys.ready, 1, keys.token)
    await queue.client.hset(keys.meta, mapping={"state": "ready", "fence": meta_fence})
    await queue.client.lpush(keys.shard_keys.claimed, keys.token)


async def test_a_lease_draws_above_the_counter_even_when_its_meta_fence_is_lower(
    queue: Queue,
) -> None:
    """A conversation whose meta carries a fence below the shard's counter (written by a
    version without the counter) is leased with a fence from the counter, and the counter is
    not lowered to the meta's fence. A lowered counter would hand out again fences some
    worker may still hold. Kills: lib/fence.lua's `fence <= previous` flipped."""
    busy = chat_id(9)
    old = _in_the_same_shard(queue, busy, 10)
    for n in range(3):  # move the counter up with ordinary turns
        await queue_chat(queue, busy, [f"m{n}"])
        await _handle_all(queue, busy)
    before = await _counter(queue, busy)
    assert before >= 3
    await _pop_into_claimed(queue, old, 1, queued=True)
    keys = keys_of(queue, old)

    lease = await queue.consumer().claim(keys.shard_keys, keys.token, "w")

    assert lease is not None
    assert lease.fence > before
    assert await _counter(queue, old) >= lease.fence


async def test_going_idle_carries_a_higher_meta_fence_into_the_counter_never_a_lower_one(
    queue: Queue,
) -> None:
    """A conversation found with nothing queued goes idle (its meta is deleted); a meta fence
    above the counter is carried into it first, one below it never lowers it.
    Kills: lib/fence.lua keep_fence's `fence > counter` flipped."""
    low = chat_id(11)
    high = _in_the_same_shard(queue, low, 100)
    await queue_chat(queue, low, ["x"])
    await _handle_all(queue, low)
    counter = await _counter(queue, low)
    assert counter >= 1

    await _pop_into_claimed(queue, low, 0, queued=False)
    keys = keys_of(queue, low)
    assert await queue.consumer().claim(keys.shard_keys, keys.token, "w") is None
    assert await queue.client.exists(keys.meta) == 0
    assert await _counter(queue, low) == counter

    await _pop_into_claimed(queue, high, counter + 50, queued=False)
    keys = keys_of(queue, high)
    assert await queue.consumer().claim(keys.shard_keys, keys.token, "w") is None
    assert await _counter(queue, high) == counter + 50


# --- worker/handler.py: what `--handler module:attr` may name -----------------------------


class Handlers:
    """A namespace, so a handler spec can name `module:Class.attribute`."""

    @staticmethod
    async def handle(event: object, ctx: object) -> None:
        return None

    @staticmethod
    def build(setup: HandlerSetup) -> Awaitable[Handler]:
        """A factory whose result is awaitable (it sets up asynchronously): awaited for the
        handler. (An `async def` itself would be taken for the handler.)"""

        async def made() -> Handler:
            return Handlers.handle

        return made()


async def test_a_handler_spec_may_name_an_attribute_path_and_an_async_factory() -> None:
    """`--handler tests.worker.test_mutants:Handlers.build`: a dotted path after the colon is
    followed attribute by attribute, and an async factory's result is awaited.
    Kills, in load_handler: `attr_path.split(".")` with another separator, and the
    `isawaitable` check or its `await` dropped (the coroutine would be refused)."""
    setup = HandlerSetup(Settings(_env_file=None), redis=object(), process_index=0, fleet_id="f")  # type: ignore[call-arg]
    handler = await load_handler("tests.worker.test_mutants:Handlers.build", setup)
    assert handler is Handlers.handle


# --- worker/handler.py: the context's commit, and closing a handler ------------------------


@contextlib.asynccontextmanager
async def _context(
    redis_url: str, prefix: str, texts: list[str], *, consumer_url: str | None = None
) -> AsyncIterator[tuple[Queue, HandlerContext, LeaseKeeper, QueuedEvent]]:
    """`texts` queued in one chat of a single Redis and its lease taken; the context of its
    first message, as the slot builds it (the keeper not started: no background extension).
    With `consumer_url`, the context's consumer talks to that Redis instead (a closed port:
    Redis away while the lease is held)."""
    async with single_queue(redis_url, prefix) as queue:
        chat = chat_id(20)
        await queue_chat(queue, chat, texts)
        lease = await lease_chat(queue, queue.consumer(), chat)
        consumer = queue.consumer()
        away = None
        if consumer_url is not None:
            away = connect(consumer_url, socket_connect_timeout=1)
            consumer = Queue(away, consumer_url, prefix, 1).consumer()
        keeper = LeaseKeeper(consumer, lease)
        message = lease.messages[0]
        assert message.record is not None
        ctx = HandlerContext(consumer=consumer, keeper=keeper, message=message)
        try:
            yield queue, ctx, keeper, decode_record(message.record)
        finally:
            if away is not None:
                await away.aclose()


async def test_a_second_commit_of_one_message_is_refused(redis_url: str, key_prefix: str) -> None:
    """`ctx.commit` twice for one message is a handler bug: the second call raises
    AlreadyCommitted and writes nothing (the first one's writes stand once). `committed` is a
    bool before and after. Kills, in HandlerContext: `committed = True` after the commit
    mutated to None/False (commit__mutmut_25/26: the second commit would ack again and fail
    NotHead, or re-apply writes), and `committed = False` at start mutated to None
    (__init____mutmut_8)."""
    async with _context(redis_url, key_prefix, ["a", "b"]) as (queue, ctx, _keeper, _event):
        handled = ctx.conversation.handled
        assert ctx.committed is False
        await ctx.commit([("RPUSH", handled, "once")])
        assert ctx.committed is True

        with pytest.raises(AlreadyCommitted):
            await ctx.commit([("RPUSH", handled, "twice")])
        assert await queue.client.lrange(handled, 0, -1) == [b"once"]


async def test_a_commit_refused_for_a_lost_lease_marks_the_keeper_lost(
    redis_url: str, key_prefix: str
) -> None:
    """A commit Redis refuses because the lease was taken away (its fence moved on) marks the
    keeper lost: the slot then neither acks nor releases under it, and every later commit or
    extension is refused without asking Redis. Kills: `self._keeper.lost = True` in commit's
    LeaseLost branch mutated to None/False (commit__mutmut_20/21)."""
    async with _context(redis_url, key_prefix, ["a"]) as (queue, ctx, keeper, _event):
        await fence_out(queue, ctx.conversation)
        with pytest.raises(LeaseLost):
            await ctx.commit()
        assert keeper.lost is True
        assert ctx.committed is False


async def test_a_commit_while_redis_is_away_gives_up_at_the_lease_end_for_good(
    redis_url: str, key_prefix: str
) -> None:
    """Redis unreachable while a commit retries: the commit gives up by the keeper's deadline
    (the lease's end) with LeaseLost, and the lease stays lost: the next commit and extension
    raise LeaseLost at once (without them, a Redis connection error would escape, as a
    failure of the message). Kills: the deadline passed to retry_until dropped
    (commit__mutmut_6: retried for ever, the guard below fails it) and
    `self._keeper.lost = True` in the Redis-away branch mutated to None/False
    (commit__mutmut_22/23)."""
    away = f"redis://127.0.0.1:{free_port()}/0"
    async with _context(redis_url, key_prefix, ["a"], consumer_url=away) as (
        _queue,
        ctx,
        keeper,
        _event,
    ):
        keeper.deadline = time.monotonic() + 0.3  # a short lease: the retries end soon
        with pytest.raises(LeaseLost):
            # A guard against a commit retrying for ever, not a timing assertion.
            await asyncio.wait_for(ctx.commit(), timeout=30)
        assert keeper.lost is True

        with pytest.raises(LeaseLost):
            await ctx.commit()
        with pytest.raises(LeaseLost):
            await ctx.extend_lease()


class _SyncClose:
    """A handler whose `aclose` is a plain function: not a coroutine, so not the lifecycle
    hook, and close_handler leaves it alone."""

    def __init__(self) -> None:
        self.closed = 0

    async def __call__(self, event: object, ctx: object) -> None:
        return None

    def aclose(self) -> None:
        self.closed += 1


async def test_closing_a_handler_without_an_async_aclose_does_nothing() -> None:
    """`aclose` is optional and must be a coroutine: a handler without one closes fine, and a
    plain `aclose` is neither called nor awaited. Kills, in close_handler: getattr's None
    default dropped (close_handler__mutmut_6: AttributeError on a handler without aclose) and
    `and` mutated to `or` (close_handler__mutmut_9: the plain aclose called and its None
    awaited, a TypeError at process stop)."""
    await close_handler(Handlers.handle)

    handler = _SyncClose()
    await close_handler(handler)
    assert handler.closed == 0


async def test_starting_a_handler_without_a_start_does_nothing() -> None:
    """`start` is optional too (a plain async function is a handler): serve() starts it
    before the slots without failing. Kills, in start_handler: getattr's None default
    dropped (start_handler__mutmut_6: AttributeError, the process never serves)."""
    await start_handler(Handlers.handle)


async def test_a_handler_spec_without_a_colon_is_refused_as_a_load_error() -> None:
    """`--handler worker.handlers.recording` (no `:attr`) is a HandlerLoadError (the fleet's
    terminal "fix the setting" error), naming the spec. Kills: load_handler's
    `spec.partition(":")` mutated to rpartition (x_load_handler__mutmut_3: the whole spec
    becomes the attribute path and `import_module("")` raises ValueError, not a load
    error). With one colon, as every valid spec has, the two are the same."""
    setup = HandlerSetup(Settings(_env_file=None), redis=object(), process_index=0, fleet_id="f")  # type: ignore[call-arg]
    with pytest.raises(HandlerLoadError, match=re.escape("'worker.handlers.recording'")):
        await load_handler("worker.handlers.recording", setup)


# --- worker/handlers/recording.py: the handled list keeps the newest RECORD_LIMIT ----------


async def test_the_recording_handler_keeps_the_newest_record_limit_entries(
    redis_url: str, key_prefix: str
) -> None:
    """A full `handled` list (RECORD_LIMIT entries) and one more delivery recorded: the list
    keeps RECORD_LIMIT entries, the oldest dropped and the new one last. Kills: record's
    `LTRIM key -RECORD_LIMIT -1` mutated to `+1` (x_record__mutmut_12: the list would shrink
    to one old entry and lose the new one)."""
    async with _context(redis_url, key_prefix, ["a"]) as (queue, ctx, _keeper, event):
        handled = ctx.conversation.handled
        await queue.client.rpush(handled, *[f"old {n}" for n in range(RECORD_LIMIT)])

        await record(event, ctx)

        entries = await queue.client.lrange(handled, 0, -1)
        assert len(entries) == RECORD_LIMIT
        assert entries[0] == b"old 1"
        assert entries[-2] == f"old {RECORD_LIMIT - 1}".encode()
        assert orjson.loads(entries[-1])["id"] == event.id


# --- worker/fleet_metrics.py: the fleet's queue gauges, as /metrics shows them -------------

# What the fleet collector exports (sample names, a counter's with `_total`).
COLLECTOR_METRICS = {
    "wsm_queue_messages",
    "wsm_queue_chats_ready",
    "wsm_queue_oldest_age_seconds",
    "wsm_queue_redeliveries_total",
    "wsm_dlq_messages",
    "wsm_outbox_dlq_messages",
    "wsm_dlq_dropped_total",
    "wsm_redis_memory_used_bytes",
    "wsm_redis_memory_max_bytes",
    "wsm_worker_processes",
}


def _scrape(snapshot: QueueSnapshot, alive: int) -> list[Sample]:
    """The samples of a /metrics page served with the collector, as the server renders it
    (prometheus text format) and Prometheus parses it."""
    registry = CollectorRegistry()
    registry.register(FleetCollector(lambda: snapshot, lambda: alive))
    text = generate_latest(registry).decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _metric_names_used() -> set[str]:
    """Every wsm_ metric name the Grafana dashboards and the Prometheus rules name."""
    files = [*(REPO / "grafana").rglob("*.json"), *(REPO / "prometheus").rglob("*.yml")]
    return {name for path in files for name in re.findall(r"\bwsm_[a-z_]+\b", path.read_text())}


async def test_the_fleet_metrics_show_the_queue_as_it_is(queue: Queue) -> None:
    """Chats with messages queued, one message dead-lettered and one lease taken back by the
    reaper: each gauge and counter of the fleet's /metrics shows its figure, summed over the
    shards. (The text is rendered as the server does: a family with no help text would fail
    the whole scrape.) Kills, in FleetCollector.collect: each `value=...` mutated to None or
    dropped (the sample would be missing: collect__mutmut_4/7, 15/18, 26/29, 37/40, 48/51,
    88/91) and the help text of wsm_dlq_dropped mutated to None (collect__mutmut_59), like
    every other help text mutated to None (collect__mutmut_3, 14, 25, 36, 47, 87): rendering
    raises AttributeError, so the endpoint serves no metrics at all."""
    # Leases first: each takes the front of its shard's line.
    reaped = await hold(queue, chat_id(33), ["r"], lease_ms=50)
    await dead_letter_first_message(queue, chat_id(32), ["x", "y"])
    await wait_past(reaped.lease.until_ms)
    assert (await queue.reaper().run_pass(reaped.keys.shard_keys)).reaped == 1
    await queue_chat(queue, chat_id(30), ["a", "b", "c"])
    await queue_chat(queue, chat_id(31), ["d", "e"])

    snapshot = await read_queue_snapshot(queue.client, queue.shards, queue.prefix)
    samples = _scrape(snapshot, alive=3)

    unlabelled = {s.name: s.value for s in samples if not s.labels}
    assert unlabelled == {
        "wsm_queue_messages": 7,
        "wsm_queue_chats_ready": 4,
        "wsm_queue_oldest_age_seconds": snapshot.oldest_age_seconds,
        "wsm_queue_redeliveries_total": 1,
        "wsm_dlq_messages": 1,
        "wsm_outbox_dlq_messages": 0,
        "wsm_redis_memory_used_bytes": snapshot.redis_memory_used_bytes,
        "wsm_redis_memory_max_bytes": snapshot.redis_memory_max_bytes,
        "wsm_worker_processes": 3,
    }
    assert snapshot.oldest_age_seconds > 0
    assert snapshot.redis_memory_used_bytes > 0
    dropped = {s.labels["list"]: s.value for s in samples if s.name == "wsm_dlq_dropped_total"}
    assert dropped == {"queue": 0, "outbox": 0}


def test_every_fleet_metric_the_dashboards_and_alerts_use_is_exported() -> None:
    """A renamed metric breaks the dashboards and alerts silently (their expressions then
    match nothing). Every name the collector exports is used there, and is exported under
    that name. Kills, in FleetCollector.collect: each metric name mutated ("XX...XX" or
    upper case: collect__mutmut_8/9, 19/20, 30/31, 41/42, 52/53, 92/93)."""
    assert _metric_names_used() >= COLLECTOR_METRICS
    samples = _scrape(QueueSnapshot(), alive=1)
    assert {s.name for s in samples} == COLLECTOR_METRICS
