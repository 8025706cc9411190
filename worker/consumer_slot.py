"""One of a worker process's C consumers: take a conversation, run its turn, hand it back.

A turn handles up to WSM_CLAIM_BATCH messages of one conversation in order, each committed
(acked) before the next starts, then releases the conversation to the back of the line, and
in the same round trip takes the conversation at the front of the line, if any, for the next
turn (a BLMOVE saved whenever there is a backlog).
A failure ends the turn (the message is retried after a backoff or dead-lettered); a lost
lease ends it without a release (the conversation is someone else's now).

With several shards, each slot blocks on its home shard and sweeps the others without
blocking before each wait, so no shard goes unserved even when it has no home slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from enum import Enum

from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from shared.backoff import Backoff
from shared.deadlines import deadline
from shared.envelope import InvalidRecord, decode_record
from shared.keys import ShardKeys
from shared.queue_consumer import ClaimedMessage, FailOutcome, Lease, QueueConsumer
from shared.queue_errors import LeaseLost, NotHead
from shared.redis_errors import REDIS_UNAVAILABLE, RETRY_CAP_SECONDS
from worker import metrics
from worker.handler import Handler, HandlerContext
from worker.lease_keeper import LeaseKeeper
from worker.redis_retry import retry_until

log = logging.getLogger("wsm.worker.consumer_slot")

# How long one BLMOVE waits. Bounds how late a stopping slot notices, and how often a slot
# sweeps the shards it does not block on.
BLOCK_SECONDS = 1.0
# Hand-backs during shutdown get this long to reach Redis before the reaper is left to do it.
HAND_BACK_SECONDS = 2.0

# Redis errors a handler may raise that say nothing about its message: Redis unreachable, slow,
# failing over (a demoted master answers READONLY), resharding, or full. They cost the message
# a strike, not an attempt (see QueueConsumer.fail). Any other Redis error (WRONGTYPE, a script
# error, a bad argument) is the message's doing and counts like any exception.
NOT_THE_MESSAGES_FAULT: tuple[type[BaseException], ...] = (
    *REDIS_UNAVAILABLE,
    ReadOnlyError,
    OutOfMemoryError,
)


def not_the_messages_fault(exc: BaseException) -> bool:
    # redis-py has no class for BUSY (another script is running past its time limit).
    return isinstance(exc, NOT_THE_MESSAGES_FAULT) or (
        isinstance(exc, ResponseError) and str(exc).startswith("BUSY ")
    )


class Outcome(Enum):
    OK = "ok"
    RETRY = "retry"
    DEAD = "dead"
    LOST = "lost"


class ConsumerSlot:
    def __init__(
        self,
        *,
        consumer: QueueConsumer,
        handler: Handler,
        shards: list[ShardKeys],
        home: int,
        owner: str,
        stopping: asyncio.Event,
        handler_timeout: float,
    ) -> None:
        self.consumer = consumer
        self.handler = handler
        self.shards = shards
        self.home = shards[home % len(shards)]
        self.others = [s for s in shards if s is not self.home]
        self.owner = owner
        self.stopping = stopping
        self.handler_timeout = handler_timeout
        self._claims = itertools.count()
        self._sweep_start = home
        # A conversation the last turn's release took from the line in its round trip
        # (release_and_take.lua): in `claimed`, to be claimed next instead of a BLMOVE.
        self._taken: tuple[ShardKeys, str] | None = None
        # True while a handler runs (the heartbeat reports how many are busy).
        self.handling = False

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = Backoff(first=0.1, cap=RETRY_CAP_SECONDS)
        # A taken conversation is claimed even when stopping: its turn then hands it back to
        # the front of the line at once, instead of leaving it to the reaper.
        while not self.stopping.is_set() or self._taken is not None:
            try:
                found = await self._next_conversation()
                backoff.reset()
                if found is None:
                    continue
                lease = await self._claim(*found)
                if lease is not None:
                    await self.run_turn(lease)
            except REDIS_UNAVAILABLE as exc:
                delay = backoff.next_delay()
                log.warning(
                    "redis unreachable; claiming paused",
                    extra={"error": str(exc), "retry_in": delay},
                )
                await asyncio.sleep(delay)
            except Exception:
                # A bug in here must not silently shrink the process's concurrency.
                log.exception("consumer slot failed; continuing")
                await asyncio.sleep(backoff.next_delay())

    async def _next_conversation(self) -> tuple[ShardKeys, str] | None:
        if self._taken is not None:
            taken, self._taken = self._taken, None
            return taken
        if self.others:
            token = await self.consumer.pop_ready(self.home)
            if token is not None:
                return self.home, token
            self._sweep_start += 1
            for i in range(len(self.others)):
                shard = self.others[(self._sweep_start + i) % len(self.others)]
                token = await self.consumer.pop_ready(shard)
                if token is not None:
                    return shard, token
        token = await self.consumer.wait_ready(self.home, BLOCK_SECONDS)
        return None if token is None else (self.home, token)

    async def _claim(self, shard: ShardKeys, token: str) -> Lease | None:
        # Unique per attempt, so a retried claim whose first answer was lost finds its lease.
        owner = f"{self.owner}:{next(self._claims)}"
        # If Redis stays away longer than a lease, the token stays in `claimed` and the reaper
        # hands it back; nothing is lost by giving up.
        deadline = time.monotonic() + self.consumer.lease_ms / 1000
        return await retry_until(
            lambda: self.consumer.claim(shard, token, owner), deadline, "claim_conversation"
        )

    # --- one turn ---------------------------------------------------------------------------

    async def run_turn(self, lease: Lease) -> None:
        keeper = LeaseKeeper(self.consumer, lease)
        keeper.start()
        # Metrics are counted per turn, not per message: each prometheus multiprocess update
        # is a lock, a pid check and an mmap write, about a tenth of a no-op message's CPU
        # when done four times per message (docs/benchmarks.md, "Worker").
        metrics.INFLIGHT.inc()
        handled = 0
        try:
            for message in lease.messages:
                if self.stopping.is_set():
                    # Claimed but not started: hand it back at once, still first in line.
                    await self._release(keeper, to_front=True)
                    return
                outcome = await self._handle(keeper, message)
                if outcome is not Outcome.OK:
                    return
                handled += 1
                if lease.ran_out:
                    # A retried commit went through but the lease is over: starting the next
                    # message would be wasted work; hand the conversation back, still first in
                    # line (the reaper does it if someone took it back already).
                    await self._release(keeper, to_front=True)
                    return
            # Only from the home shard, which _next_conversation would look at first anyway:
            # the others keep their turns in the sweep.
            take_next = lease.conversation.shard_keys == self.home and not self.stopping.is_set()
            await self._release(keeper, to_front=False, take_next=take_next)
        except asyncio.CancelledError:
            # Shutdown past its grace period cancelled the handler: the message was not
            # committed; let another worker have the conversation now rather than at lease end.
            if not keeper.lost:
                with contextlib.suppress(TimeoutError, *REDIS_UNAVAILABLE):
                    await asyncio.wait_for(
                        self.consumer.release(lease, to_front=True), HAND_BACK_SECONDS
                    )
            raise
        finally:
            metrics.INFLIGHT.dec()
            if handled:
                metrics.HANDLED_OK.inc(handled)
            await keeper.stop()

    async def _handle(self, keeper: LeaseKeeper, message: ClaimedMessage) -> Outcome:
        lease = keeper.lease
        if message.record is None:
            return await self._fail(keeper, message, "queued record is missing", terminal=True)
        try:
            event = decode_record(message.record)
        except InvalidRecord as exc:
            return await self._fail(keeper, message, f"InvalidRecord: {exc}", terminal=True)

        ctx = HandlerContext(
            consumer=self.consumer,
            keeper=keeper,
            message=message,
            last_in_turn=message is lease.messages[-1],
            # The instant the timeout below cancels the handler (taken just before it starts).
            deadline=time.monotonic() + self.handler_timeout,
        )
        self.handling = True
        started = time.perf_counter()
        ack_later = False
        try:
            # Not wait_for (an extra task per message) nor asyncio.timeout (a timer each): one
            # timer for every wait of the process (shared/deadlines.py).
            with deadline(self.handler_timeout):
                await self.handler(event, ctx)
            if not ctx.committed and not keeper.lost:
                # Nothing to apply: the ack rides with the turn's next call (the next commit,
                # the release or a fail), one round trip for them all (QueueConsumer.ack_later).
                self.consumer.ack_later(lease, message.id)
                ack_later = True
        except Exception as exc:
            outcome = await self._after_error(keeper, message, ctx, exc)
            if outcome is not None:
                return outcome
        finally:
            self.handling = False
            metrics.HANDLE_SECONDS.observe(time.perf_counter() - started)
        if not (ctx.committed or ack_later):
            return self._count(Outcome.LOST, lease, message, "lease lost before commit")
        return Outcome.OK

    async def _after_error(
        self, keeper: LeaseKeeper, message: ClaimedMessage, ctx: HandlerContext, exc: Exception
    ) -> Outcome | None:
        """What a handler's (or its commit's) exception means; None: the message is done."""
        lease = keeper.lease
        if ctx.committed:
            # Its work is committed and the message gone; what failed after cannot be undone by
            # a retry, and retrying would handle the message twice.
            log.exception("handler failed after its commit", extra=self._where(lease, message))
            return None
        if isinstance(exc, LeaseLost):
            keeper.lost = True
            return self._count(Outcome.LOST, lease, message, str(exc))
        if isinstance(exc, NotHead):
            log.error("message is not its conversation's head", extra=self._where(lease, message))
            await self._release(keeper, to_front=True)
            return self._count(Outcome.LOST, lease, message, str(exc))
        if not_the_messages_fault(exc):
            # Redis failed, not (as far as we can tell) the message: a strike, no attempt, and
            # the conversation goes back to the front of the line. Strikes in a row on one
            # message add up to an attempt, so one that breaks Redis every time still ends in
            # the dead letters.
            return await self._fail(
                keeper, message, f"redis: {type(exc).__name__}: {exc}", redis_error=True
            )
        if isinstance(exc, TimeoutError):
            error = f"handler timed out after {self.handler_timeout:g} s"
            return await self._fail(keeper, message, error)
        return await self._fail(keeper, message, f"{type(exc).__name__}: {exc}")

    async def _fail(
        self,
        keeper: LeaseKeeper,
        message: ClaimedMessage,
        error: str,
        *,
        terminal: bool = False,
        redis_error: bool = False,
    ) -> Outcome:
        lease = keeper.lease
        if keeper.lost:
            return self._count(Outcome.LOST, lease, message, error)
        try:
            result = await retry_until(
                lambda: self.consumer.fail(
                    lease, message.id, error, terminal=terminal, redis_error=redis_error
                ),
                keeper.deadline,
                "fail_message",
            )
        except REDIS_UNAVAILABLE:
            # The lease runs out unrenewed; the reaper counts this attempt instead.
            return self._count(Outcome.LOST, lease, message, error)
        except NotHead:
            log.error(
                "failed message is not its conversation's head", extra=self._where(lease, message)
            )
            await self._release(keeper, to_front=True)
            return self._count(Outcome.LOST, lease, message, error)
        outcome = {
            FailOutcome.RETRY: Outcome.RETRY,
            FailOutcome.REQUEUED: Outcome.RETRY,
            FailOutcome.DEAD: Outcome.DEAD,
            FailOutcome.LOST: Outcome.LOST,
        }[result.outcome]
        # A lost lease's failure is not counted by this worker (fail_message answers before
        # counting): its 0 would read as "no attempt yet" in the log (found by an audit).
        attempts = None if outcome is Outcome.LOST else result.attempts
        return self._count(outcome, lease, message, error, attempts=attempts)

    async def _release(
        self, keeper: LeaseKeeper, *, to_front: bool, take_next: bool = False
    ) -> None:
        """End the turn; with `take_next`, also take the next conversation from the line in
        the same round trip (to the back of the line only). Once the release (with every ack
        that rode with it) has landed, runs what the turn's commits left for then
        (HandlerContext.commit_later's `then`)."""
        if keeper.lost:
            return
        lease = keeper.lease
        attempts = itertools.count()

        async def release() -> bool:
            if take_next and next(attempts) == 0:
                released, token = await self.consumer.release_and_take(lease)
                if token is not None:
                    self._taken = (lease.conversation.shard_keys, token)
                return released
            # A retry never takes: the first call may have taken a conversation whose answer
            # was lost, which the reaper hands back from `claimed`.
            return await self.consumer.release(lease, to_front=to_front)

        # If Redis stays away, the lease runs out and the reaper puts the conversation back.
        with contextlib.suppress(*REDIS_UNAVAILABLE):
            if await retry_until(release, keeper.deadline, "release_conversation"):
                for then in lease.after_release:
                    try:
                        then()
                    except Exception:  # a nudge's failure is its own; the turn is done
                        log.exception(
                            "after-release step failed", extra={"conversation": lease.token}
                        )

    def _count(
        self,
        outcome: Outcome,
        lease: Lease,
        message: ClaimedMessage,
        error: str,
        attempts: int | None = None,
    ) -> Outcome:
        metrics.MESSAGES.labels(outcome.value).inc()
        extra = self._where(lease, message) | {"outcome": outcome.value, "error": error}
        if attempts is not None:
            extra["attempts"] = attempts
        if outcome is Outcome.LOST:
            log.warning("lease lost; work dropped", extra=extra)
        elif outcome is Outcome.DEAD:
            log.error("message sent to the dead letters", extra=extra)
        else:
            log.warning("message failed; will be retried", extra=extra)
        return outcome

    @staticmethod
    def _where(lease: Lease, message: ClaimedMessage) -> dict[str, object]:
        return {"conversation": lease.token, "message_id": message.id, "fence": lease.fence}
