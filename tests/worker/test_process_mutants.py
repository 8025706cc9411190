"""worker/process.py in-process: serve() wiring the handler, the consumer slots, the claims
pool, the heartbeat and the reaper, and its shutdown; run_process, die_with_parent and
connect_when_ready. Written against mutants that the real-fleet tests (child processes) could
not see (docs/testing.md, "Mutation testing"); serve() runs here as a task of the test's loop,
stopped by a SIGTERM to this process (tests/worker/support/serve.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from shared.clock import now_ms
from shared.dead_letters import list_dead_letters
from shared.embedded_redis import free_port
from shared.envelope import QueuedEvent
from shared.heap import YOUNG_THRESHOLD
from shared.keys import ConversationKeys, FleetKeys, ShardKeys, conversation_token, shard_of
from shared.queue_consumer import QueueConsumer
from shared.settings import Settings
from tests.support.polling import async_wait_until
from tests.worker.conftest import Queue
from tests.worker.support.fleet import SESSION, chat_id, enqueue_texts, handled_ids
from tests.worker.support.in_process import (
    has_deadlines,
    record_clients,
    settings_of,
    single_queue,
)
from tests.worker.support.protocol import (
    keys_of,
    lease_chat,
    plant_old_dead_letter,
    queue_chat,
    wait_past,
)
from tests.worker.support.serve import PROBE, commit, serving
from worker import process as process_module
from worker.handler import HandlerContext
from worker.process import ProcessOptions, connect_when_ready, die_with_parent, run_process

# Short clocks: an idle slot is cancelled out of its BLMOVE after the grace period at stop.
FAST = {
    "WSM_SHUTDOWN_GRACE_SECONDS": "0.2",
    "WSM_HEARTBEAT_INTERVAL": "0.05",
    "WSM_REAPER_INTERVAL": "0.05",
}


@pytest.fixture
async def queue(redis_url: str, key_prefix: str) -> AsyncIterator[Queue]:
    async with single_queue(redis_url, key_prefix) as queue:
        yield queue


def options_for(queue: Queue, index: int, concurrency: int = 1) -> ProcessOptions:
    return ProcessOptions(
        index=index, concurrency=concurrency, handler=PROBE, fleet_id=f"{queue.prefix}-fleet"
    )


async def hang(event: QueuedEvent, ctx: HandlerContext) -> None:
    """A handler that never finishes (until cancelled)."""
    await asyncio.Event().wait()


# --- the handler ----------------------------------------------------------------------------


async def test_the_handler_is_made_with_the_process_setup_started_and_closed(
    queue: Queue,
) -> None:
    """The factory gets HandlerSetup(settings, the process's client, index, fleet id); start()
    runs before any message, aclose() at shutdown; serve() exits 0.

    Kills: x_serve__mutmut_14, 26-30, 37, 40, 153, 155-157, 159, 161-163, 165, 167, 178."""
    settings = settings_of(queue, **FAST)
    options = options_for(queue, index=2)
    chat = chat_id(1)
    sent = await queue_chat(queue, chat, ["hello"])
    async with serving(settings, options) as run:

        async def handled() -> bool:
            return await handled_ids(queue.client, chat, queue.prefix) == sent

        await async_wait_until(handled, what="the message handled")
        assert await run.stop() == 0
    probe = run.probe
    (setup,) = probe.setups
    assert setup.settings is settings
    assert (setup.process_index, setup.fleet_id) == (2, options.fleet_id)
    # The process's own client: the one the handlers read and commit through.
    assert setup.redis is probe.contexts[0].redis
    assert probe.lifecycle == ["start", "close"]


async def test_the_heap_is_settled_before_the_first_message(queue: Queue) -> None:
    """By the time a slot hands over a message, what the process built at start is frozen out
    of the collector's sight and the young generation waits YOUNG_THRESHOLD allocations
    (shared/heap.py)."""
    seen: list[tuple[int, int]] = []

    async def look(event: QueuedEvent, ctx: HandlerContext) -> None:
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
        await commit(event, ctx)

    settings = settings_of(queue, **FAST)
    chat = chat_id(1)
    sent = await queue_chat(queue, chat, ["hello"])
    async with serving(settings, options_for(queue, index=0), look) as run:

        async def handled() -> bool:
            return await handled_ids(queue.client, chat, queue.prefix) == sent

        await async_wait_until(handled, what="the message handled")
        assert await run.stop() == 0
    ((threshold, frozen),) = seen
    assert threshold == YOUNG_THRESHOLD
    assert frozen > 1000


# --- the slots and the consumer -------------------------------------------------------------


def chats_on_shards(shards: int) -> dict[int, str]:
    """One chat per shard."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < shards:
        found.setdefault(shard_of(conversation_token(SESSION, chat_id(n)), shards), chat_id(n))
        n += 1
    return found


async def test_slots_claim_from_their_home_shard_as_owner_fleet_index_pid_n(queue: Queue) -> None:
    """Slot n of process i has home shard i*C+n and claims as `<fleet>:<i>:<pid>:<n>:<k>`; its
    lease lasts WSM_LEASE_SECONDS from the claim.

    Each slot's first claim is of its home shard's conversation; the first handler waits for
    the other slot to start, so neither sweeps the other's home first.

    Kills: x_serve__mutmut_60, 73, 79, 89."""
    lease_ms = 100_000_000
    settings = settings_of(queue, WSM_QUEUE_SHARDS="4", WSM_LEASE_SECONDS="100000", **FAST)
    options = options_for(queue, index=1, concurrency=2)
    chats = chats_on_shards(4)
    await enqueue_texts(queue.client, queue.prefix, {chat: ["x"] for chat in chats.values()}, 4)
    seen: dict[int, tuple[str, int, int]] = {}
    both = asyncio.Event()

    async def note(event: QueuedEvent, ctx: HandlerContext) -> None:
        started = now_ms()
        values: list[Any] = await ctx.redis.hmget(ctx.conversation.meta, "owner", "lease_until")
        owner, until = values
        seen[ctx.conversation.shard_keys.shard] = (owner.decode(), int(until), started)
        if len(seen) >= 2:
            both.set()
        await asyncio.wait_for(both.wait(), timeout=10)
        await commit(event, ctx)

    async with serving(settings, options, note) as run:

        async def all_seen() -> bool:
            return len(seen) == 4

        await async_wait_until(all_seen, what="a message on every shard")
        assert await run.stop() == 0
    base = f"{options.fleet_id}:1:{os.getpid()}"
    assert seen[2][0] == f"{base}:0:0"
    assert seen[3][0] == f"{base}:1:0"
    for owner, until, started in seen.values():
        assert re.fullmatch(rf"{re.escape(base)}:[01]:\d+", owner)
        # Claimed before the handler started: the lease ends at most lease_ms after that.
        assert started + lease_ms - 60_000 < until <= started + lease_ms


async def test_a_failed_message_waits_the_configured_backoff_capped(queue: Queue) -> None:
    """A failure schedules the retry WSM_RETRY_BACKOFF_SECONDS (doubled per attempt, at most
    WSM_RETRY_BACKOFF_MAX_SECONDS) after it: the due time in Redis.

    Kills: x_serve__mutmut_46, 47, 62, 63, 65, 66."""
    settings = settings_of(
        queue,
        WSM_RETRY_BACKOFF_SECONDS="100000",
        WSM_RETRY_BACKOFF_MAX_SECONDS="150000",
        WSM_MAX_ATTEMPTS="5",
        **FAST,
    )
    first, second = chat_id(1), chat_id(2)
    await queue_chat(queue, first, ["a"])
    (again,) = await queue_chat(queue, second, ["b"])
    # The second chat's message failed once already: its retry is capped.
    await queue.client.hset(keys_of(queue, second).attempts, again, 1)
    failed_at: dict[str, int] = {}

    async def fail(event: QueuedEvent, ctx: HandlerContext) -> None:
        failed_at[ctx.conversation.token] = now_ms()
        raise RuntimeError("boom")

    delayed = ShardKeys(0, queue.prefix).delayed

    async def both_delayed() -> bool:
        return bool(await queue.client.zcard(delayed) == 2)

    async with serving(settings, options_for(queue, index=0), fail) as run:
        await async_wait_until(both_delayed, what="both retries scheduled")
        assert await run.stop() == 0
    for chat, delay_ms in ((first, 100_000_000), (second, 150_000_000)):
        token = keys_of(queue, chat).token
        due = int(await queue.client.zscore(delayed, token))
        # Scheduled (by Redis's clock, this machine's) after the handler raised.
        assert failed_at[token] + delay_ms <= due < failed_at[token] + delay_ms + 60_000


async def test_a_handler_past_its_timeout_is_dead_lettered_after_max_attempts(
    queue: Queue,
) -> None:
    """WSM_HANDLER_TIMEOUT_SECONDS cuts a hung handler off; after WSM_MAX_ATTEMPTS the
    message is a dead letter, and WSM_DEAD_LETTERS_MAX drops the older one.

    Kills: x_serve__mutmut_45, 48, 56, 81."""
    settings = settings_of(
        queue,
        WSM_MAX_ATTEMPTS="2",
        WSM_RETRY_BACKOFF_SECONDS="0.05",
        WSM_RETRY_BACKOFF_MAX_SECONDS="0.05",
        WSM_HANDLER_TIMEOUT_SECONDS="0.2",
        WSM_DEAD_LETTERS_MAX="1",
        **FAST,
    )
    chat = chat_id(3)
    (sent,) = await queue_chat(queue, chat, ["hung"])
    await plant_old_dead_letter(queue, chat)

    async def dead() -> bool:
        letters = await list_dead_letters(queue.client, 1, queue.prefix)
        return [letter.id for letter in letters] == [sent]

    async with serving(settings, options_for(queue, index=0), hang) as run:
        await async_wait_until(dead, what="the message dead-lettered, alone")
        assert await run.stop() == 0
    (letter,) = await list_dead_letters(queue.client, 1, queue.prefix)
    assert (letter.attempts, letter.error) == (2, "handler timed out after 0.2 s")
    assert [ctx.attempt for ctx in run.probe.contexts] == [1, 2]


async def test_the_slots_claim_through_a_pool_of_their_own(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blocking claims use a second client, one connection per slot plus one, with
    deadlines: a slot parked in BLMOVE holds none of the handlers' connections.

    Kills: x_serve__mutmut_14, 16-18, 20-24, 49, 57."""
    made = record_clients(monkeypatch, process_module)
    async with serving(settings_of(queue, **FAST), options_for(queue, 0, concurrency=2)) as run:

        async def parked() -> bool:
            if len(made) < 2:
                return False
            pool = made[1].connection_pool
            # Connections the pool handed out: the slots' BLMOVEs (pool internals of redis-py).
            return len(pool._in_use_connections) + len(pool._available_connections) > 0

        await async_wait_until(parked, what="a slot claiming through the claims pool")
        assert await run.stop() == 0
    client, claims = made
    assert claims is not client
    assert claims.connection_pool.max_connections == 3
    assert has_deadlines(claims)


# --- heartbeat and reaper -------------------------------------------------------------------


async def test_a_process_beats_under_its_index_reaps_and_deletes_its_beat_at_stop(
    queue: Queue,
) -> None:
    """The heartbeat is written under the fleet's key for the process's index (pid, index,
    host, messages in flight) and deleted at shutdown; the reaper runs, as the process, and
    takes back a dead holder's lease (the message comes back as attempt 2).

    Kills: x_serve__mutmut_99-105, 109-111, 157, 158; x_start_background__mutmut_6, 7."""
    settings = settings_of(queue, **FAST)
    options = options_for(queue, index=3)
    chat = chat_id(4)
    sent = await queue_chat(queue, chat, ["orphan"])
    lease = await lease_chat(queue, queue.consumer(lease_ms=50), chat)
    await wait_past(lease.until_ms)
    release = asyncio.Event()

    async def held(event: QueuedEvent, ctx: HandlerContext) -> None:
        await asyncio.wait_for(release.wait(), timeout=20)
        await commit(event, ctx)

    key = FleetKeys(options.fleet_id, queue.prefix).process(3)
    lock = ShardKeys(0, queue.prefix).reaper_lock

    async def busy_beat() -> dict[str, Any] | None:
        raw = await queue.client.get(key)
        beat = None if raw is None else orjson.loads(raw)
        return beat if beat and beat["inflight"] == 1 else None

    async with serving(settings, options, held) as run:
        owner = await async_wait_until(lambda: queue.client.get(lock), what="the reaper's lock")
        assert owner == f"{options.fleet_id}:3:{os.getpid()}".encode()
        beat = await async_wait_until(busy_beat, what="a beat with the message in flight")
        assert beat is not None
        assert (beat["pid"], beat["index"], beat["host"]) == (os.getpid(), 3, socket.gethostname())
        assert [ctx.attempt for ctx in run.probe.contexts] == [2]
        release.set()

        async def handled() -> bool:
            return await handled_ids(queue.client, chat, queue.prefix) == sent

        await async_wait_until(handled, what="the message handled")
        assert await run.stop() == 0
    assert await queue.client.exists(key) == 0


# --- shutdown -------------------------------------------------------------------------------


async def test_work_past_the_grace_period_is_cancelled_and_handed_back(queue: Queue) -> None:
    """SIGTERM: a handler still running after WSM_SHUTDOWN_GRACE_SECONDS is cancelled and its
    conversation handed back (no lease left, first in line); serve() exits 0.

    Kills: x_serve__mutmut_136, 138, 147, 149, 150."""
    settings = settings_of(queue, WSM_SHUTDOWN_GRACE_SECONDS="0.3", WSM_LEASE_SECONDS="60")
    chat = chat_id(5)
    sent = await queue_chat(queue, chat, ["hung"])
    keys: ConversationKeys = keys_of(queue, chat)
    async with serving(settings, options_for(queue, index=0), hang) as run:

        async def started() -> bool:
            return len(run.probe.contexts) == 1

        await async_wait_until(started, what="the handler to start")
        assert await run.stop() == 0
    assert await queue.client.zcard(keys.shard_keys.leases) == 0
    assert await queue.client.lrange(keys.shard_keys.ready, 0, -1) == [keys.token.encode()]
    assert await queue.client.hget(keys.meta, "state") == b"ready"
    assert await queue.client.hget(keys.attempts, sent[0]) is None


async def test_an_idle_slot_leaves_its_blmove_before_work_is_handed_back(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grace period shorter than a BLMOVE's wait: the idle slot's BLMOVE is not cancelled
    (a cancelled one only drops its connection, and Redis could serve it with the handed-back
    conversation before noticing, leaving it in `claimed`); it returns by itself, and only then
    is the busy slot cancelled and its conversation handed back, first in line
    (worker/process.py, leave_blocking_claims)."""
    waits: list[str] = []
    wait_ready = QueueConsumer.wait_ready

    async def watched(self: QueueConsumer, *args: Any, **options: Any) -> Any:
        try:
            answer = await wait_ready(self, *args, **options)
        except asyncio.CancelledError:
            waits.append("cancelled")
            raise
        waits.append("returned")
        return answer

    monkeypatch.setattr(QueueConsumer, "wait_ready", watched)
    settings = settings_of(queue, WSM_SHUTDOWN_GRACE_SECONDS="0.1", WSM_LEASE_SECONDS="60")
    chat = chat_id(6)
    await queue_chat(queue, chat, ["hung", "next"])
    keys: ConversationKeys = keys_of(queue, chat)
    async with serving(settings, options_for(queue, index=0, concurrency=2), hang) as run:

        async def started() -> bool:
            return len(run.probe.contexts) == 1

        await async_wait_until(started, what="the handler to start")
        assert await run.stop() == 0
    assert "returned" in waits
    assert "cancelled" not in waits
    assert await queue.client.lrange(keys.shard_keys.ready, 0, -1) == [keys.token.encode()]
    assert await queue.client.llen(keys.shard_keys.claimed) == 0
    assert await queue.client.zcard(keys.shard_keys.leases) == 0


async def test_a_slot_that_survives_its_cancel_does_not_keep_the_process(queue: Queue) -> None:
    """A handler that swallows the cancellation keeps its slot running: serve() waits for it a
    bounded time (HAND_BACK_SECONDS + 1), then stops anyway and exits 0.

    Kills: x_serve__mutmut_148."""
    settings = settings_of(queue, WSM_SHUTDOWN_GRACE_SECONDS="0.1", WSM_LEASE_SECONDS="60")
    await queue_chat(queue, chat_id(6), ["stubborn"])
    release = asyncio.Event()
    stuck: list[asyncio.Task[Any]] = []

    async def stubborn(event: QueuedEvent, ctx: HandlerContext) -> None:
        task = asyncio.current_task()
        assert task is not None
        stuck.append(task)
        while not release.is_set():
            try:
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:  # the point: it ignores the cancel
                continue

    try:
        async with serving(settings, options_for(queue, index=0), stubborn) as run:

            async def started() -> bool:
                return bool(stuck)

            await async_wait_until(started, what="the handler to start")
            assert await run.stop() == 0
    finally:
        release.set()
        if stuck:
            await asyncio.wait(stuck, timeout=10)


async def test_a_handler_whose_aclose_hangs_does_not_keep_the_process(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler's aclose() gets CLOSE_HANDLER_SECONDS (shortened here), then the process
    stops without it.

    Kills: x_serve__mutmut_160."""
    monkeypatch.setattr(process_module, "CLOSE_HANDLER_SECONDS", 0.2)
    async with serving(settings_of(queue, **FAST), options_for(queue, index=0)) as run:
        run.probe.hang_on_close = True

        async def started() -> bool:
            return run.probe.lifecycle == ["start"]

        await async_wait_until(started, what="the handler started")
        assert await run.stop() == 0
    assert run.probe.lifecycle == ["start", "close"]


async def test_a_process_stopped_before_redis_answers_exits_0(key_prefix: str) -> None:
    """Kills: x_serve__mutmut_13."""
    settings = Settings(
        _env_file=None, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", WSM_KEY_PREFIX=key_prefix
    )
    options = ProcessOptions(index=0, concurrency=1, handler=PROBE, fleet_id="f1")
    async with serving(settings, options) as run:
        assert await run.stop() == 0
    assert run.probe.setups == []


# --- connect_when_ready, run_process, die_with_parent ----------------------------------------


async def test_an_absent_redis_is_retried_with_a_capped_backoff_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each refused start is logged with its error and the delay before the next try; the
    delays start at 0.2 s (with jitter, at least half) and are capped at RETRY_CAP_SECONDS.

    Kills: x_connect_when_ready__mutmut_4-6, 18, 19, 21-28."""
    settings = Settings(_env_file=None, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    stopping = asyncio.Event()
    delays: list[float] = []

    async def no_sleep(stop: asyncio.Event, delay: float) -> None:
        delays.append(delay)
        if len(delays) == 6:
            stop.set()

    monkeypatch.setattr(process_module, "sleep_unless", no_sleep)
    logger = process_module.log
    with caplog.at_level(logging.WARNING, logger=logger.name):
        assert await connect_when_ready(settings, stopping) is None
    assert len(delays) == 6
    assert 0.1 <= delays[0] <= 0.2
    assert all(delay <= 1.0 for delay in delays)
    assert delays[-1] >= 0.5  # the cap's step reached
    warnings = [r for r in caplog.records if r.name == logger.name]
    assert [r.getMessage() for r in warnings] == ["redis unreachable at start"] * 6
    assert [getattr(r, "retry_in", None) for r in warnings] == delays
    for record in warnings:
        error = getattr(record, "error", None)
        assert isinstance(error, str) and error not in ("", "None")


def test_a_handler_that_cannot_be_loaded_exits_3_and_dies_with_its_supervisor(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_process: the process asks to die with its supervisor (its pid passed on); a
    `--handler` that names nothing is exit status 3 (terminal, not a crash to restart).

    Kills: x_run_process__mutmut_2, 14."""
    parents: list[int | None] = []
    monkeypatch.setattr(process_module, "die_with_parent", parents.append)
    monkeypatch.setattr(process_module, "setup_logging", lambda level: None)
    settings = Settings(_env_file=None, REDIS_URL=redis_url, WSM_KEY_PREFIX=key_prefix)
    options = ProcessOptions(0, 1, "tests.worker.support.serve:no_such_handler", "f1", 4242)
    signums = (signal.SIGTERM, signal.SIGINT)
    saved = {signum: signal.getsignal(signum) for signum in signums}
    try:
        assert run_process(settings, options) == 3
    finally:
        for signum in signums:
            signal.signal(signum, saved[signum])
    assert parents == [4242]


def test_a_process_dies_with_its_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    """No supervisor pid: nothing. Our parent's pid: SIGTERM asked for on its death. A pid
    that is not our parent (it died before prctl took effect): SIGTERM to ourselves now.

    Kills: x_die_with_parent__mutmut_1, 2, 4-7."""
    asked: list[int] = []
    killed: list[tuple[int, int]] = []

    def kill(pid: int, signum: int) -> None:
        killed.append((pid, signum))

    monkeypatch.setattr(process_module, "signal_on_parent_death", asked.append)
    monkeypatch.setattr(os, "kill", kill)

    die_with_parent(None)
    assert (asked, killed) == ([], [])

    die_with_parent(os.getppid())
    assert (asked, killed) == ([signal.SIGTERM], [])

    die_with_parent(os.getppid() + 100_000_000)  # no such process
    assert (asked, killed) == ([signal.SIGTERM] * 2, [(os.getpid(), signal.SIGTERM)])
