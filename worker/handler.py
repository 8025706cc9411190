"""The handler seam: what the fleet calls for each message, and what it hands the handler.

    async def handler(event: QueuedEvent, ctx: HandlerContext) -> None

The fleet calls the handler once per delivery, strictly in order within a conversation, and
never for two messages of one conversation at once. Delivery is at least once: a message whose
work was not committed (worker killed, lease lost, Redis away) is delivered again, first in its
conversation, so handlers keep their effects inside `ctx.commit` or make them repeatable.

- `await ctx.commit(writes)` acks the message and applies `writes` (see
  shared/commit_writes.py) in one atomic, fenced step. It raises LeaseLost when the lease was
  taken away or ran out: nothing was written, the message will be handled again elsewhere, and
  the handler should stop (letting LeaseLost propagate is right). A handler that returns without
  committing is acked with no writes, in the round trip of the turn's next call (the next
  commit, the release or a fail: QueueConsumer.ack_later).
- `await ctx.commit_later(writes, prelude=..., then=...)` commits the same, for a handler that
  does nothing after its commit but nudge another part (`then`, run once the commit landed):
  when the message is the last of the turn (or there are no writes) its ack and writes ride
  with the turn's next call (the release: one round trip for both); otherwise it commits at
  once, so the next message's handler sees its writes.
- `await ctx.extend_lease()` pushes the lease out now (raises LeaseLost). The fleet already
  extends it every third of WSM_LEASE_SECONDS while the handler runs.
- `ctx.deadline` is when the fleet cancels the handler (a `time.monotonic()` value,
  WSM_HANDLER_TIMEOUT_SECONDS after it started): work that can give up early fits itself before
  it (the engine's media, engine/media/ingest.py) rather than have the message retried.
- Raising anything else counts a failed attempt: the message is retried after a backoff, and
  after WSM_MAX_ATTEMPTS it goes to the dead letters and the conversation moves on.
- `ctx.redis` is the process's Redis client, for reads (and for idempotent writes outside the
  conversation's hash tag); `ctx.conversation` gives the conversation's keys and hash tag.

`--handler module:attr` (WSM_WORKER_HANDLER) names either such a callable or a factory called
once per process as `attr(setup: HandlerSetup)`, returning one (or an awaitable of one).
Lifecycle, both optional: a `start()` method (plain or async) is called once when the process
starts, before any message, so background work (an outbox sweeper) runs in a process restarted
with nothing queued; an `aclose()` coroutine method is awaited when the process stops.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from shared.commit_writes import Write
from shared.envelope import QueuedEvent
from shared.keys import ConversationKeys
from shared.queue_consumer import ClaimedMessage, Lease, Prelude, QueueConsumer
from shared.queue_errors import LeaseLost
from shared.redis_client import RedisClient
from shared.redis_errors import REDIS_UNAVAILABLE
from shared.settings import Settings
from worker.lease_keeper import LeaseKeeper
from worker.redis_retry import retry_until


class Handler(Protocol):
    async def __call__(self, event: QueuedEvent, ctx: HandlerContext) -> None: ...


class HandlerLoadError(RuntimeError):
    """`--handler` does not name an importable handler or factory (terminal: fix the setting)."""


class AlreadyCommitted(RuntimeError):
    """`ctx.commit` was called twice for one message (a handler bug)."""


@dataclass(frozen=True, slots=True)
class HandlerSetup:
    """What a handler factory gets, once per worker process."""

    settings: Settings
    redis: RedisClient
    process_index: int
    fleet_id: str


class HandlerContext:
    """One delivery of one message, under the worker's lease on its conversation."""

    def __init__(
        self,
        *,
        consumer: QueueConsumer,
        keeper: LeaseKeeper,
        message: ClaimedMessage,
        last_in_turn: bool = False,
        deadline: float | None = None,
    ) -> None:
        self._consumer = consumer
        self._keeper = keeper
        self._lease: Lease = keeper.lease
        self.message_id = message.id
        # 1 on the first delivery; more after failures or a crashed worker.
        self.attempt = message.attempts + 1
        # The turn's last message: nothing is handled after it before the release.
        self.last_in_turn = last_in_turn
        # When the fleet cancels this handler (time.monotonic()); None: no timeout.
        self.deadline = deadline
        self.committed = False

    @property
    def conversation(self) -> ConversationKeys:
        """The conversation's queue keys; build your own keys on its hash tag."""
        return self._lease.conversation

    @property
    def fence(self) -> int:
        """This lease's fencing token (grows with every lease of the conversation)."""
        return self._lease.fence

    @property
    def redis(self) -> RedisClient:
        return self._consumer.client

    async def commit(self, writes: Iterable[Write] = (), *, prelude: Prelude | None = None) -> None:
        """Ack this message and apply `writes` atomically, if the lease is still ours.

        `prelude` queues commands on any keys that must land first and are safe to repeat (an
        index written ahead of what it indexes): in the commit's round trip where Redis keeps
        their order (QueueConsumer.ack). They may land even when the commit is refused.

        Raises LeaseLost (nothing written), InvalidWrite (nothing written), AlreadyCommitted.
        """
        # Encoded (and InvalidWrite raised) by `ack` before anything is sent.
        writes = list(writes)
        self._check_committable()
        try:
            await retry_until(
                lambda: self._consumer.ack(self._lease, self.message_id, writes, prelude=prelude),
                self._keeper.deadline,
                "ack_message",
            )
        except LeaseLost:
            self._keeper.lost = True
            raise
        except REDIS_UNAVAILABLE as exc:
            self._keeper.lost = True
            raise LeaseLost(f"lease on {self._lease.token} ran out while Redis was away") from exc
        self.committed = True

    async def commit_later(
        self,
        writes: Iterable[Write] = (),
        *,
        prelude: Prelude | None = None,
        then: Callable[[], None] | None = None,
    ) -> None:
        """`commit`, for a handler that returns right after it. The turn's last message is
        committed with the release, in its round trip (QueueConsumer.ack_later): its writes are
        applied with its ack (after `prelude`'s commands), atomically and fenced, or, if the
        lease is lost first, not at all (the message is delivered again). Any other message
        with writes commits at once: the next message's handler must see them. Without writes
        the ack rides with the turn's next call wherever the message is (as when a handler
        returns without committing).

        `then` is what follows from the commit and needs no lease (a nudge to another part,
        such as the sender's kick): it runs once the commit is known to have landed, after the
        release for a commit that rode with it. If that release's answer is lost (it is
        retried, and a repeat cannot tell), `then` does not run: it must be a hint that
        something else also covers (the sender's sweep finds a reply the kick missed).

        Raises InvalidWrite (nothing written), AlreadyCommitted; LeaseLost as `commit` does.
        """
        writes = list(writes)
        if (writes or prelude is not None) and not self.last_in_turn:
            await self.commit(writes, prelude=prelude)
            if then is not None:
                then()
            return
        self._check_committable()
        self._consumer.ack_later(self._lease, self.message_id, writes, prelude=prelude)
        if then is not None:
            self._lease.after_release.append(then)
        self.committed = True

    def _check_committable(self) -> None:
        """AlreadyCommitted, or LeaseLost when the keeper lost the lease: nothing is sent."""
        if self.committed:
            raise AlreadyCommitted(f"message {self.message_id} is already committed")
        if self._keeper.lost:
            raise LeaseLost(f"lease on {self._lease.token} is lost")

    async def extend_lease(self) -> None:
        """Extend the lease now (fenced). Raises LeaseLost."""
        await self._keeper.extend()


def _is_handler(value: object) -> bool:
    call = getattr(value, "__call__", None)  # noqa: B004 - an instance's async __call__ counts
    return inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(call)


async def load_handler(spec: str, setup: HandlerSetup) -> Handler:
    """Import `module:attr`; a handler is used as is, anything else callable is a factory."""
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise HandlerLoadError(f"cannot load handler {spec!r}: {exc}") from exc
    if _is_handler(target):
        return target
    if not callable(target):
        raise HandlerLoadError(f"handler {spec!r} is neither a handler nor a factory")
    try:
        made = target(setup)
    except TypeError as exc:
        raise HandlerLoadError(
            f"{spec!r} is not an async handler, nor a factory taking a HandlerSetup: {exc}"
        ) from exc
    if inspect.isawaitable(made):
        made = await made
    if not _is_handler(made):
        raise HandlerLoadError(f"factory {spec!r} returned {made!r}, not an async handler")
    return made


async def start_handler(handler: Handler) -> None:
    start = getattr(handler, "start", None)
    if callable(start):
        started = start()
        if inspect.isawaitable(started):
            await started


async def close_handler(handler: Handler) -> None:
    close = getattr(handler, "aclose", None)
    if close is not None and inspect.iscoroutinefunction(close):
        await close()
