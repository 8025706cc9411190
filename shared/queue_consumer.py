"""The consume side of the per-conversation queue (the workers' half of the protocol).

A worker takes a conversation in two steps: a blocking `BLMOVE ready -> claimed` (blocking
commands cannot run inside scripts), then `claim_conversation.lua`, which takes the lease,
bumps the conversation's fence and reads up to `batch` head messages. It then acks each
handled message (`ack_message.lua`, fenced, optionally with the handler's writes), and ends
its turn with `release_conversation.lua` or `fail_message.lua`. `release_and_take.lua` ends a
turn and does the next BLMOVE's work in the same round trip when the line is not empty.
See docs/architecture.md.

Every method raises redis-py's ConnectionError/TimeoutError when Redis cannot be reached; the
scripts are written so that repeating a call whose answer was lost is safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field
from enum import Enum
from typing import Any

from shared.commit_writes import Write, encode_writes
from shared.dead_letters import DEFAULT_DEAD_LETTER_LIMITS, DeadLetterLimits
from shared.keys import ConversationKeys, ShardKeys
from shared.lua import Arg, LuaScript, is_noscript
from shared.queue_errors import LeaseLost, NotHead
from shared.redis_client import one_node
from shared.text import as_text

CLAIM_CONVERSATION = LuaScript.named("claim_conversation")
ACK_MESSAGE = LuaScript.named("ack_message")
ACK_MESSAGES = LuaScript.named("ack_messages")
EXTEND_LEASE = LuaScript.named("extend_lease")
RELEASE_CONVERSATION = LuaScript.named("release_conversation")
RELEASE_AND_TAKE = LuaScript.named("release_and_take")
FAIL_MESSAGE = LuaScript.named("fail_message")

# A dead letter's error text is for a person reading `wsm dlq list`, not a full traceback dump.
MAX_ERROR_CHARS = 2000

# Redis errors in a row on one message (connection lost, timeouts, cluster down: Redis's fault,
# not the message's) that count as one failed attempt. One or two are an outage or a failover
# and cost nothing; a message that breaks the connection every time it is handled (a command
# too big for Redis, a call that always times out) must still reach the dead letters.
REDIS_ERRORS_PER_ATTEMPT = 5


# Queues commands on a pipeline: what must land before an ack (QueueConsumer.ack's prelude).
Prelude = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    id: str
    # None only if the body vanished from Redis (hand edits): the message is dead-lettered.
    record: bytes | None
    # Attempts already counted against this message before this delivery.
    attempts: int


@dataclass(slots=True)
class Lease:
    """A worker's hold on one conversation for one turn."""

    conversation: ConversationKeys
    fence: int
    # The deadline by the Redis clock (ms); `extend` moves it.
    until_ms: int
    messages: list[ClaimedMessage]
    # True once an ack learnt that the lease ran out or was taken back after its commit went
    # through (a retried ack): the committed work stands, but the turn must end there.
    ran_out: bool = False
    # Handled messages not acked yet, oldest first: acked together with the turn's next call
    # (ack, release or fail) in one round trip (`QueueConsumer.ack_later`).
    unacked: list[str] = field(default_factory=list)
    # Those of them whose ack applies writes: ack_message.lua's extra KEYS and ARGV.
    unacked_writes: dict[str, tuple[list[str], list[Arg]]] = field(default_factory=dict)
    # What must land before those acks (their preludes, `QueueConsumer.ack_later`), in order.
    unacked_preludes: list[Prelude] = field(default_factory=list)
    # Not the queue's: what the worker runs once the turn's release has landed, and with it
    # every ack that rode with it (HandlerContext.commit_later's `then`).
    after_release: list[Callable[[], None]] = field(default_factory=list)
    _ack_keys: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        conv = self.conversation
        self._ack_keys = [
            conv.meta,
            conv.messages,
            conv.bodies,
            conv.attempts,
            conv.shard_keys.stats,
            conv.reaped_ack,
        ]

    @property
    def token(self) -> str:
        return self.conversation.token

    def forget_unacked(self) -> None:
        """The pending acks were sent (landed or refused): done with them."""
        self.unacked.clear()
        self.unacked_writes.clear()
        self.unacked_preludes.clear()


class FailOutcome(Enum):
    RETRY = "retry"  # waits in `delayed`, then goes to the front of the line
    REQUEUED = "requeued"  # Redis's fault: back to the front, no attempt counted (a strike)
    DEAD = "dead"  # moved to the dead-letter list; the conversation goes on
    LOST = "lost"  # the lease was gone: the reaper counts (or counted) this attempt


@dataclass(frozen=True, slots=True)
class FailResult:
    outcome: FailOutcome
    attempts: int = 0


# ack_head's codes for a message whose ack is done (lib/ack.lua): acked now, or already.
_ACKED = (1, 2, 3)


def _landed_up_to_the_last_kept(codes: list[Any]) -> list[Any]:
    """Acks' codes, oldest message first, with every code before the last 3 read as 3.

    A 3 after a refusal is a fenced-out holder's ack that the reaper kept (lib/ack.lua): that
    message was acked under this lease, and acks go head first, in order, so every message
    before it was acked under this lease too, although their own records are gone."""
    last = max((i for i, code in enumerate(codes) if code == 3), default=-1)
    return [3] * last + codes[last:] if last > 0 else codes


@dataclass(eq=False)
class QueueConsumer:
    """Claim, ack, extend, release and fail for one Redis client (standalone or cluster)."""

    # Any: redis-py's stubs type replies as bytes | str (and some arguments too narrowly).
    client: Any
    _: KW_ONLY
    lease_ms: int
    batch: int
    max_attempts: int
    backoff_ms: int
    backoff_max_ms: int
    dead_letters: DeadLetterLimits = DEFAULT_DEAD_LETTER_LIMITS
    redis_errors_per_attempt: int = REDIS_ERRORS_PER_ATTEMPT
    # The blocking BLMOVE parks a connection for up to its timeout: given its own pool (one
    # connection per slot), parked claims never take the connections commits, reads and
    # sends need. None: the one client for everything.
    blocking_client: Any = None
    _batch_acks_loaded: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.blocking_client is None:
            self.blocking_client = self.client

    # --- taking a conversation --------------------------------------------------------------

    async def pop_ready(self, shard: ShardKeys) -> str | None:
        """Move the conversation at the front of `shard`'s line into `claimed`, without waiting."""
        token = await self.client.lmove(shard.ready, shard.claimed, "RIGHT", "LEFT")
        return None if token is None else as_text(token)

    async def wait_ready(self, shard: ShardKeys, block_seconds: float) -> str | None:
        """The same, blocking in Redis up to `block_seconds` for a conversation to be ready."""
        token = await self.blocking_client.blmove(
            shard.ready, shard.claimed, block_seconds, "RIGHT", "LEFT"
        )
        return None if token is None else as_text(token)

    async def claim(self, shard: ShardKeys, token: str, owner: str) -> Lease | None:
        """Lease a conversation moved into `claimed`. None: not ours (or nothing queued).

        `owner` must be unique per attempt: repeating the call with the same owner after a
        lost answer returns the lease already taken instead of giving up on it.
        """
        conversation = shard.conversation(token)
        reply = await CLAIM_CONVERSATION(
            self.client,
            [
                shard.claimed,
                shard.leases,
                conversation.meta,
                conversation.messages,
                conversation.bodies,
                conversation.attempts,
                shard.fence,
            ],
            [token, owner, self.lease_ms, self.batch],
        )
        if not reply:
            return None
        messages = [
            ClaimedMessage(
                id=as_text(reply[i]),
                record=reply[i + 1],
                attempts=int(reply[i + 2]),
            )
            for i in range(2, len(reply), 3)
        ]
        return Lease(conversation, int(reply[0]), int(reply[1]), messages)

    # --- while holding it -------------------------------------------------------------------

    def ack_later(
        self,
        lease: Lease,
        message_id: str,
        writes: Iterable[Write] = (),
        *,
        prelude: Prelude | None = None,
    ) -> None:
        """Ack a handled message with the turn's next call, in its round trip, applying
        `writes` (checked now: InvalidWrite before anything is sent) with its ack, atomically,
        after `prelude`'s commands (as `ack` places them).

        Safe because nothing is applied before that call: until then the message merely stays
        at the head, and if the lease is lost first it is delivered again, as after any crash
        (at least once; nothing of its handler's writes landed, so nothing is applied twice).
        The acks still run in order, each fenced, before the call that follows them
        (docs/architecture.md). Writes wait unseen until then: a message with writes must be
        the last handled before that call (HandlerContext.commit_later sees to it).
        """
        extra_keys, extra_args = encode_writes(writes, lease.conversation)
        if extra_args:
            lease.unacked_writes[message_id] = (extra_keys, extra_args)
        if prelude is not None:
            lease.unacked_preludes.append(prelude)
        lease.unacked.append(message_id)

    async def ack(
        self,
        lease: Lease,
        message_id: str,
        writes: Iterable[Write] = (),
        *,
        prelude: Prelude | None = None,
    ) -> None:
        """Remove a handled message, applying `writes` in the same atomic step.

        `prelude` queues commands, on any keys, that must land before the ack and are safe to
        repeat (indexes written ahead of what they index): on one Redis they go in the ack's
        round trip, ahead of it (a pipeline runs in order); on a cluster, whose pipeline runs
        each node's share apart, in a round trip of their own just before.

        Raises LeaseLost (fenced out or expired: nothing was written), NotHead, InvalidWrite.
        A repeated ack whose first call went through returns normally even if the lease ran out
        since; `lease.ran_out` then tells the caller to end the turn.
        """
        extra_keys, extra_args = encode_writes(writes, lease.conversation)
        keys, args = lease._ack_keys + extra_keys, [lease.fence, message_id, *extra_args]
        if lease.unacked or prelude is not None:
            pending = list(lease.unacked)
            *earlier, result = await self._after_unacked(
                lease, ACK_MESSAGE, keys, args, prelude=prelude
            )
            lease.forget_unacked()
            # Up to the first refusal, which raises here (the messages after it stay queued).
            codes = _landed_up_to_the_last_kept([*earlier, result])
            for acked, code in zip([*pending, message_id], codes, strict=True):
                self._check_ack(lease, acked, code)
            return
        self._check_ack(lease, message_id, await ACK_MESSAGE(self.client, keys, args))

    @staticmethod
    def _check_ack(lease: Lease, message_id: str, result: Any) -> None:
        if result in (1, 2):
            return
        if result == 3:
            lease.ran_out = True
            return
        if result == -2:
            raise NotHead(f"{message_id} is not the head of {lease.token}")
        raise LeaseLost(f"lease on {lease.token} {'ran out' if result == -1 else 'was taken over'}")

    async def _flush_unacked(
        self, lease: Lease, script: LuaScript, keys: list[Any], args: list[Any]
    ) -> tuple[bool, Any]:
        """Run `script` after the lease's pending acks, in one round trip: (all acks landed,
        the script's answer).

        A pending ack refused (lease lost, not the head) leaves its message queued, to be
        delivered again; the call that follows is fenced by the same lease, so it is refused
        too (or, for a lease past its deadline that the reaper has not taken yet, does what the
        reaper would: the conversation goes back in line). Either way the acks are done with.
        """
        *earlier, result = await self._after_unacked(lease, script, keys, args)
        lease.forget_unacked()
        return all(code in _ACKED for code in _landed_up_to_the_last_kept(earlier)), result

    async def _after_unacked(
        self,
        lease: Lease,
        script: LuaScript,
        keys: list[Any],
        args: list[Any],
        *,
        prelude: Prelude | None = None,
    ) -> list[Any]:
        """The pending acks' preludes and `prelude`'s commands, the pending acks, then
        `script`, pipelined: a code per pending message (None for one an `ack_messages.lua`
        call stopped before), then the script's answer. The acks go in order: each run of
        messages without writes as one `ack_messages.lua` call, each message with writes as
        its own `ack_message.lua` call. No MULTI: each script is atomic, the acks are
        idempotent and so is a prelude, so repeating the pipeline after a lost answer or
        NOSCRIPT is safe. On a cluster, whose pipeline runs each node's share apart and in no
        set order, the preludes go in a round trip of their own first."""
        if not self._batch_acks_loaded:
            # Loaded before the first pipeline: had Redis answered NOSCRIPT to the acks but run
            # the call behind them (a release), the turn's messages would be delivered again.
            # (After a Redis restart every script is gone, so all answer NOSCRIPT and the
            # pipeline is simply repeated.)
            await ACK_MESSAGES.load(self.client)
            await ACK_MESSAGE.load(self.client)
            self._batch_acks_loaded = True
        preludes = [*lease.unacked_preludes, *([prelude] if prelude is not None else [])]
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for queue_prelude in preludes:
                queue_prelude(pipe)
            if preludes and not one_node(pipe):
                await pipe.execute()
                preludes = []
                pipe = self.client.pipeline(transaction=False)
            ahead = len(pipe)
            calls = self._queue_unacked(pipe, lease)
            script.queue_in(pipe, keys, args)
            try:
                *answers, result = (await pipe.execute())[ahead:]
            except Exception as exc:
                if attempt == 1 and is_noscript(exc):
                    for loaded in (ACK_MESSAGES, ACK_MESSAGE, script):
                        await loaded.load(self.client)
                    continue
                raise
            codes: list[Any] = []
            for size, answer in zip(calls, answers, strict=True):
                if size == 0:  # one ack_message.lua: one code
                    codes.append(answer)
                else:  # ack_messages.lua stops at a -1 or -2: no code for the rest
                    codes += [*answer, *[None] * (size - len(answer))]
            return [*codes, result]
        raise AssertionError("unreachable")

    @staticmethod
    def _queue_unacked(pipe: Any, lease: Lease) -> list[int]:
        """Queue the lease's pending acks on `pipe`, oldest first; returns each call's size
        (messages in an ack_messages.lua call; 0 for an ack_message.lua call with writes)."""
        calls: list[int] = []
        run: list[str] = []
        for message_id in lease.unacked:
            writes = lease.unacked_writes.get(message_id)
            if writes is None:
                run.append(message_id)
                continue
            if run:
                ACK_MESSAGES.queue_in(pipe, lease._ack_keys, [lease.fence, *run])
                calls.append(len(run))
                run = []
            extra_keys, extra_args = writes
            ACK_MESSAGE.queue_in(
                pipe, lease._ack_keys + extra_keys, [lease.fence, message_id, *extra_args]
            )
            calls.append(0)
        if run:
            ACK_MESSAGES.queue_in(pipe, lease._ack_keys, [lease.fence, *run])
            calls.append(len(run))
        return calls

    async def extend(self, lease: Lease) -> int:
        """Push the lease deadline to now + lease; returns it (ms). Raises LeaseLost."""
        conversation = lease.conversation
        result = int(
            await EXTEND_LEASE(
                self.client,
                [conversation.meta, conversation.shard_keys.leases],
                [lease.token, lease.fence, self.lease_ms],
            )
        )
        if result <= 0:
            raise LeaseLost(
                f"lease on {lease.token} {'ran out' if result == -1 else 'was taken over'}"
            )
        lease.until_ms = result
        return result

    # --- ending the turn --------------------------------------------------------------------

    async def release(self, lease: Lease, *, to_front: bool = False) -> bool:
        """End the turn. False: the lease was no longer ours (nothing changed)."""
        args: list[Any] = [lease.token, lease.fence, "front" if to_front else "back"]
        released, _ = await self._end_turn(lease, RELEASE_CONVERSATION, [], args)
        return bool(released)

    async def release_and_take(self, lease: Lease) -> tuple[bool, str | None]:
        """release(lease) to the back of the line and, in the same round trip, pop_ready on
        the conversation's shard: (released, the next conversation to claim or None).

        Not to be repeated after a lost answer: its first call may have taken a token, which
        the reaper hands back from `claimed`; a second would take another. Retry with release.
        """
        shard = lease.conversation.shard_keys
        released, token = await self._end_turn(
            lease, RELEASE_AND_TAKE, [shard.claimed], [lease.token, lease.fence]
        )
        return bool(released), None if token is None else as_text(token)

    async def _end_turn(
        self, lease: Lease, script: LuaScript, more_keys: list[Any], args: list[Any]
    ) -> tuple[Any, Any]:
        """Run a release script after the lease's pending acks: (its release code, what else it
        answered). A pending ack refused makes the release count as refused too."""
        conversation = lease.conversation
        keys: list[Any] = [
            conversation.meta,
            conversation.messages,
            conversation.shard_keys.leases,
            conversation.shard_keys.ready,
            conversation.shard_keys.fence,
            *more_keys,
        ]
        if lease.unacked:
            landed, result = await self._flush_unacked(lease, script, keys, args)
        else:
            landed, result = True, await script(self.client, keys, args)
        released, taken = (result[0], result[1]) if isinstance(result, list) else (result, None)
        return landed and released, taken

    async def fail(
        self,
        lease: Lease,
        message_id: str,
        error: str,
        *,
        terminal: bool = False,
        redis_error: bool = False,
    ) -> FailResult:
        """Count a failed attempt at the head message and end the turn.

        `terminal` sends the message to the dead letters at once (a record that can never be
        handled). `redis_error`: the failure was Redis's (connection, timeout, cluster down), so
        only a strike is counted and the conversation goes back to the front (REQUEUED), until
        `redis_errors_per_attempt` strikes in a row make one attempt. Raises NotHead.
        """
        conversation = lease.conversation
        shard = conversation.shard_keys
        keys: list[Any] = [
            conversation.meta,
            conversation.messages,
            conversation.bodies,
            conversation.attempts,
            shard.stats,
            shard.leases,
            shard.ready,
            shard.delayed,
            shard.dlq,
            shard.fence,
        ]
        args: list[Any] = [
            lease.token,
            lease.fence,
            message_id,
            error[:MAX_ERROR_CHARS],
            self.max_attempts,
            self.backoff_ms,
            self.backoff_max_ms,
            1 if terminal else 0,
            self.redis_errors_per_attempt if redis_error else 0,
            self.dead_letters.max_entries,
            self.dead_letters.max_age_ms,
        ]
        if lease.unacked:
            # The failed message comes after the pending ones: they must leave the head first.
            landed, reply = await self._flush_unacked(lease, FAIL_MESSAGE, keys, args)
            if not landed:
                return FailResult(FailOutcome.LOST)
        else:
            reply = await FAIL_MESSAGE(self.client, keys, args)
        code = int(reply[0])
        if code == 1:
            return FailResult(FailOutcome.RETRY, int(reply[1]))
        if code == 3:
            return FailResult(FailOutcome.REQUEUED)
        if code == 2:
            return FailResult(FailOutcome.DEAD, int(reply[1]))
        if code == -2:
            raise NotHead(f"{message_id} is not the head of {lease.token}")
        return FailResult(FailOutcome.LOST)
