"""Tests written to kill the mutants of worker/lease_keeper.py that survived the mutation run
against the real-fleet test (tests/worker/test_lease_keeper_fleet.py): the keeper run in this
process on a real Redis, with leases a few hundred milliseconds long.

- A refused extension marks the keeper `lost` for good, and so does Redis staying away until
  the lease would have run out (the retries give up at the keeper's deadline, before as after
  a successful extension).
- The deadline: a lease length (less the margin) from when the keeper was made, then from
  when each successful extension was asked; checked between two readings of the clock taken
  around the call, never by how long anything took.
- The periodic extension: every third of the lease, so a lease much shorter than the turn is
  kept; it ends, with a warning naming the conversation, once the lease is lost, and for good
  on `stop()` (which is safe before `start()` and when repeated).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

import pytest

import worker.lease_keeper as lease_keeper_module
from shared.embedded_redis import free_port
from shared.queue_consumer import Lease, QueueConsumer
from shared.queue_errors import LeaseLost
from shared.redis_client import connect
from tests.support.polling import async_wait_until
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.in_process import single_queue
from tests.worker.support.protocol import fence_out, lease_chat, queue_chat
from worker.lease_keeper import DEADLINE_MARGIN_SECONDS, LeaseKeeper

KEEPER_LOG = "wsm.worker.lease_keeper"
# Short, so that a deadline (and Redis's retries up to it) comes soon.
SHORT_LEASE_MS = 300
# For the tests that keep a lease by the periodic extension: one extension delayed by up to
# two thirds of it (a loaded machine) still comes before the lease runs out.
KEPT_LEASE_MS = 1200
# Rounding slack for the deadline's bounds: far below the 0.2 s a flipped margin moves it by.
SLACK_SECONDS = 0.001
# A guard against retrying for ever (a mutant), not a timing assertion.
GUARD_SECONDS = 30


class Held(NamedTuple):
    queue: Queue
    consumer: QueueConsumer
    lease: Lease


@contextlib.asynccontextmanager
async def _held(redis_url: str, prefix: str, lease_ms: int) -> AsyncIterator[Held]:
    """A chat queued on the run's Redis and its lease taken by a consumer with `lease_ms`."""
    async with single_queue(redis_url, prefix) as queue:
        chat = chat_id(30)
        await queue_chat(queue, chat, ["a"])
        consumer = queue.consumer(lease_ms=lease_ms)
        lease = await lease_chat(queue, consumer, chat)
        yield Held(queue, consumer, lease)


@contextlib.asynccontextmanager
async def _away_consumer(prefix: str, lease_ms: int) -> AsyncIterator[QueueConsumer]:
    """A consumer whose Redis is away: its client points at a closed port."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    client = connect(url, socket_connect_timeout=1)
    try:
        yield Queue(client, url, prefix, 1).consumer(lease_ms=lease_ms)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _started(keeper: LeaseKeeper) -> AsyncIterator[LeaseKeeper]:
    keeper.start()
    try:
        yield keeper
    finally:
        await keeper.stop()


async def _lease_until(held: Held) -> int:
    value = await held.queue.client.hget(held.lease.conversation.meta, "lease_until")
    assert value is not None
    return int(value)


def _assert_deadline_from(keeper: LeaseKeeper, before: float, after: float) -> None:
    """The keeper's deadline is a lease length, less the margin, from some instant between
    `before` and `after`."""
    lease_seconds = keeper.consumer.lease_ms / 1000
    low = before + lease_seconds - DEADLINE_MARGIN_SECONDS - SLACK_SECONDS
    high = after + lease_seconds - DEADLINE_MARGIN_SECONDS + SLACK_SECONDS
    assert isinstance(keeper.deadline, float)
    assert low <= keeper.deadline <= high, (low, keeper.deadline, high)


async def test_a_new_keeper_has_a_lease_length_less_the_margin_left(
    redis_url: str, key_prefix: str
) -> None:
    """A new keeper is not lost (`lost` is the bool False, not merely falsy) and its deadline
    is a lease length, less the margin, from when it was made: ahead of Redis's deadline,
    never after it. Kills, in __init__: `lost = None` (__init____mutmut_3), the deadline None
    (__init____mutmut_8), the margin added instead of taken off (__init____mutmut_9) and the
    lease length taken off instead of added (__init____mutmut_10)."""
    async with _held(redis_url, key_prefix, SHORT_LEASE_MS) as held:
        before = time.monotonic()
        keeper = LeaseKeeper(held.consumer, held.lease)
        after = time.monotonic()
        assert keeper.lost is False
        _assert_deadline_from(keeper, before, after)


async def test_a_successful_extension_moves_the_deadline_to_a_lease_from_when_it_was_asked(
    redis_url: str, key_prefix: str
) -> None:
    """After each successful extension the deadline is a lease length, less the margin, from
    when the extension was asked (later than the one before), and the keeper is not lost.
    Kills, in extend: the new deadline None (extend__mutmut_18), the margin added
    (extend__mutmut_19) and the lease length taken off (extend__mutmut_20)."""
    async with _held(redis_url, key_prefix, SHORT_LEASE_MS) as held:
        keeper = LeaseKeeper(held.consumer, held.lease)
        previous = keeper.deadline
        for _ in range(3):
            before = time.monotonic()
            await keeper.extend()
            after = time.monotonic()
            _assert_deadline_from(keeper, before, after)
            assert keeper.deadline > previous
            previous = keeper.deadline
        assert keeper.lost is False


async def test_an_extension_refused_marks_the_keeper_lost_for_good(
    redis_url: str, key_prefix: str
) -> None:
    """Redis refuses the extension of a lease taken away (its fence moved on): extend raises
    LeaseLost and `lost` is True, so the slot neither commits nor releases under it; the next
    extension is refused too. Kills, in extend: `self.lost = True` in the LeaseLost branch
    mutated to None/False (extend__mutmut_13/14)."""
    async with _held(redis_url, key_prefix, SHORT_LEASE_MS) as held:
        keeper = LeaseKeeper(held.consumer, held.lease)
        await fence_out(held.queue, held.lease.conversation)
        with pytest.raises(LeaseLost):
            await keeper.extend()
        assert keeper.lost is True
        with pytest.raises(LeaseLost):
            await keeper.extend()
        assert keeper.lost is True


async def test_an_extension_while_redis_is_away_gives_up_at_the_deadline_for_good(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis unreachable: the extension retries only until the keeper's deadline (the lease
    would have run out by then), then raises LeaseLost (not Redis's connection error) and
    `lost` is True. The slot gave the turn up. When Redis is back the lease may not be reaped
    yet, and extending it would succeed, renewing a lease for a turn nobody runs any more: the
    next extension raises LeaseLost without asking Redis. Kills: the deadline passed to
    retry_until dropped (extend__mutmut_4: retried for ever), the first deadline None
    (__init____mutmut_8: the same), `self.lost = True` in the Redis-away branch mutated to
    None/False (extend__mutmut_15/16), and extend's `if self.lost: raise LeaseLost` dropped
    (an audit's hand-made mutant)."""
    async with (
        _held(redis_url, key_prefix, SHORT_LEASE_MS) as held,
        _away_consumer(key_prefix, SHORT_LEASE_MS) as away,
    ):
        keeper = LeaseKeeper(away, held.lease)
        with pytest.raises(LeaseLost):
            await asyncio.wait_for(keeper.extend(), timeout=GUARD_SECONDS)
        assert keeper.lost is True
        keeper.consumer = held.consumer  # Redis is back
        asked = _count_extensions(monkeypatch)
        with pytest.raises(LeaseLost):
            await keeper.extend()
        assert asked == []


async def test_after_an_extension_redis_away_is_given_up_at_the_new_deadline(
    redis_url: str, key_prefix: str
) -> None:
    """Redis goes away after a successful extension: the next extension still gives up at the
    (moved) deadline, with LeaseLost, and the keeper is lost. Kills: the deadline set to None
    by a successful extension (extend__mutmut_18: the retries would go on for ever); also
    extend__mutmut_4 and extend__mutmut_15/16, as the test above."""
    async with (
        _held(redis_url, key_prefix, SHORT_LEASE_MS) as held,
        _away_consumer(key_prefix, SHORT_LEASE_MS) as away,
    ):
        keeper = LeaseKeeper(held.consumer, held.lease)
        await keeper.extend()
        keeper.consumer = away  # Redis is away from now on
        with pytest.raises(LeaseLost):
            await asyncio.wait_for(keeper.extend(), timeout=GUARD_SECONDS)
        assert keeper.lost is True


async def test_a_lease_much_shorter_than_the_turn_is_kept_by_extending_every_third(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A started keeper extends the lease every third of its length: a turn several times
    longer than the lease keeps it (Redis's deadline moves on past a second lease length, the
    lease is never lost, and the keeper's deadline moves forward). The waits between
    extensions are checked as asked for (a third of the lease), not by measuring them. Kills,
    in _keep: the wait a quarter of the lease (_keep__mutmut_7); also the deadline mutants
    extend__mutmut_18/20 and __init____mutmut_3/8."""
    waits: list[float] = []
    real_sleep_unless = lease_keeper_module.sleep_unless

    async def recorded(stop: asyncio.Event, seconds: float) -> None:
        waits.append(seconds)
        await real_sleep_unless(stop, seconds)

    monkeypatch.setattr(lease_keeper_module, "sleep_unless", recorded)
    async with _held(redis_url, key_prefix, KEPT_LEASE_MS) as held:
        first_until = await _lease_until(held)
        keeper = LeaseKeeper(held.consumer, held.lease)
        first_deadline = keeper.deadline
        async with _started(keeper):

            async def kept_past_two_leases() -> bool:
                assert not keeper.lost
                return await _lease_until(held) > first_until + KEPT_LEASE_MS

            await async_wait_until(
                kept_past_two_leases, timeout=60, what="the lease extended past two leases"
            )
            assert keeper.lost is False
            assert keeper.deadline > first_deadline
            # Still ours: Redis extends it (it neither ran out nor was taken back).
            await held.consumer.extend(held.lease)
        assert len(waits) >= 3
        assert waits == [pytest.approx(KEPT_LEASE_MS / 1000 / 3, rel=0.01)] * len(waits)


async def test_the_keeper_ends_with_a_warning_once_the_lease_is_lost(
    redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A started keeper whose lease is taken away learns it at its next extension: it marks
    itself lost, ends (it asks for no more extensions), and logs a warning carrying the
    conversation's token. Kills, in _keep: the `not self._stop.is_set()` guard of the warning
    flipped (_keep__mutmut_8: no warning for a lease lost while handling), the warning's
    `extra` dropped or None or its key renamed (_keep__mutmut_10/12/15/16) and its message
    dropped (_keep__mutmut_11: a TypeError ends the keeper instead); also extend__mutmut_13/14
    (`lost` not set)."""
    caplog.set_level(logging.INFO, logger=KEEPER_LOG)
    async with _held(redis_url, key_prefix, SHORT_LEASE_MS) as held:
        keeper = LeaseKeeper(held.consumer, held.lease)
        await fence_out(held.queue, held.lease.conversation)
        async with _started(keeper):

            async def ended() -> bool:
                # A task from the first extension on (before it, a timer).
                return keeper._task is not None and keeper._task.done()

            await async_wait_until(ended, timeout=30, what="the keeper to end")
            assert keeper.lost is True
            assert keeper._task is not None and keeper._task.exception() is None
        warnings = [
            r for r in caplog.records if r.name == KEEPER_LOG and r.levelno == logging.WARNING
        ]
        assert [getattr(r, "conversation", None) for r in warnings] == [held.lease.token]


def _count_extensions(monkeypatch: pytest.MonkeyPatch) -> list[Lease]:
    """Every lease QueueConsumer.extend is asked to extend from now on, in order."""
    asked: list[Lease] = []
    real_extend = QueueConsumer.extend

    async def counted(self: QueueConsumer, lease: Lease) -> int:
        asked.append(lease)
        return await real_extend(self, lease)

    monkeypatch.setattr(QueueConsumer, "extend", counted)
    return asked


async def test_a_turn_shorter_than_a_third_of_the_lease_costs_no_task_and_no_extension(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nearly every turn: the keeper is started and stopped long before its first extension is
    due. It is a timer meanwhile, not a task (a task, its Event wait and their cancellation
    per turn cost about a Redis round trip), and it asks Redis for nothing. Kills, in start: a
    task made at once; in stop and _first_extension_due together: the timer left to fire
    without the flag checked (it would start extending a lease the turn is done with)."""
    asked = _count_extensions(monkeypatch)
    async with _held(redis_url, key_prefix, SHORT_LEASE_MS) as held:
        tasks_before = len(asyncio.all_tasks())
        keeper = LeaseKeeper(held.consumer, held.lease)
        keeper.start()
        assert keeper._task is None
        assert len(asyncio.all_tasks()) == tasks_before
        await keeper.stop()
        # Well past when the first extension would have been due: none was asked for.
        await asyncio.sleep(SHORT_LEASE_MS / 1000 / 3 * 2)
        assert keeper._task is None
        assert asked == []


async def test_stop_ends_the_extensions_for_good_and_is_safe_to_repeat(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stop()` on a keeper never started does nothing; after `stop()` the keeper asks for no
    extension again, and a second `stop()` does nothing: the lease then runs out in Redis (its
    deadline there no longer moves) and Redis refuses to revive it. Kills, in stop: `and`
    mutated to `or` (stop__mutmut_1) and `is not None` to `is None` (stop__mutmut_2), both
    failing on a keeper without a task; and the task reset to "" (stop__mutmut_4) or made ""
    in __init__ (__init____mutmut_11), failing on the second stop or on the unstarted one."""
    real_extend = QueueConsumer.extend  # Redis's own answer, past the counting
    asked = _count_extensions(monkeypatch)
    async with _held(redis_url, key_prefix, KEPT_LEASE_MS) as held:
        await LeaseKeeper(held.consumer, held.lease).stop()  # never started: nothing to stop
        keeper = LeaseKeeper(held.consumer, held.lease)
        first_until = await _lease_until(held)
        keeper.start()

        async def extended() -> bool:
            return await _lease_until(held) > first_until

        await async_wait_until(extended, timeout=30, what="a first extension")
        await keeper.stop()
        asked_by_stop = len(asked)
        await keeper.stop()  # again: nothing more to do

        async def ran_out() -> bool:
            # Read afresh each time: an extension in flight at stop may still land once.
            return time.time() * 1000 > await _lease_until(held) + 2

        await async_wait_until(ran_out, timeout=30, interval=0.05, what="the lease to run out")
        assert len(asked) == asked_by_stop
        with pytest.raises(LeaseLost):
            await real_extend(held.consumer, held.lease)
        assert keeper.lost is False  # stopped, not lost: the keeper never saw a refusal
