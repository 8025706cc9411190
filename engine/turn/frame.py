"""One event of one conversation: the frame every step shares.

A `ConversationTurn` reads the conversation's state, lets one step (engine/turn/dispatch.py)
decide, and commits everything the event changed in the conversation - state, history, replies
to send - with `ctx.commit(writes)`: one fenced script that also acks the message. So a message
is either fully handled once or not at all, and a redelivered message never causes a second
reply.

Steps outside the conversation's hash tag (the waiting line, the indexes, the timers) are
idempotent and run before the commit when repeating them is harmless (entering the line,
indexing), or after it when they only follow from it (telling others in line, waking the
sender): a step queues those in `after`. A crash between the commit and a later step is covered
by the background passes of engine/service.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from engine.assignment import LineCoordinator
from engine.brain import Brain
from engine.history import HistoryEntry, append_writes
from engine.identity import Conversation, PhoneResolver, send_target
from engine.outbox import OutboxEntry, history_keys, new_entry, outbox_writes
from engine.sender import Sender
from engine.state import OPEN_STATES, ConversationState, State, state_writes
from engine.texts import Texts
from engine.waiting_line import WaitingLine
from shared.clock import now_ms
from shared.commit_writes import Write
from shared.envelope import QueuedEvent
from shared.keys import EngineConversationKeys, EngineIndexKeys, engine_keys_for
from shared.queue_consumer import Prelude
from shared.redis_client import RedisClient

if TYPE_CHECKING:
    from engine.media.ingest import MediaIngest

# Queues a step's first reads on the pipeline that reads the state; returns what takes their
# answers (in the order queued) once it ran.
Prefetch = Callable[["ConversationTurn", Any], Callable[[Sequence[Any]], None]]


class CommitContext(Protocol):
    """What the engine needs of the worker's HandlerContext."""

    async def commit(
        self, writes: Iterable[Sequence[Any]] = (), *, prelude: Prelude | None = None
    ) -> None: ...

    # For an event with nothing to do after its commit but `then` (which needs no lease): it
    # may ride with the turn's next call (worker/handler.py).
    async def commit_later(
        self,
        writes: Iterable[Sequence[Any]] = (),
        *,
        prelude: Prelude | None = None,
        then: Callable[[], None] | None = None,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    prefix: str
    shards: int
    retention_seconds: int
    inactivity_close_seconds: int
    waiting_timeout_seconds: int
    notice_interval_seconds: float
    brain_history_turns: int
    ignore_groups: bool = True
    ignore_broadcasts: bool = True

    def keys(self, conversation: Conversation) -> EngineConversationKeys:
        return engine_keys_for(conversation.session, conversation.chat_id, self.shards, self.prefix)


@dataclass(frozen=True, slots=True)
class TurnTools:
    """Everything a turn may use, handed over by the engine (engine/conversation_engine.py)."""

    redis: RedisClient
    config: EngineConfig
    brain: Brain
    texts: Texts
    line: WaitingLine
    coordinator: LineCoordinator
    resolver: PhoneResolver
    sender: Sender | None
    index: EngineIndexKeys
    # Customers' media: fetched, stored and transcribed (None: kinds are recognised, files
    # are not kept).
    media: MediaIngest | None = None
    # Sessions with a business of their own whose file changes texts (`texts` is the default
    # business's).
    texts_by_session: Mapping[str, Texts] = field(default_factory=dict)

    def texts_for(self, session: str) -> Texts:
        return self.texts_by_session.get(session, self.texts)


class ConversationTurn:
    """One event of one conversation: reads, lets a step decide, commits, then follows up."""

    def __init__(self, tools: TurnTools, event: QueuedEvent, ctx: CommitContext) -> None:
        self.tools = tools
        self.redis = tools.redis
        self.config = tools.config
        # The texts of this session's business (its file's `texts` on top of the deployment's).
        self.texts = tools.texts_for(event.session)
        # The line as this session's business sees it (its own hours and teams).
        self.line = tools.line.for_session(event.session)
        self.event = event
        self.ctx = ctx
        # When the worker cancels this handler (worker/handler.py HandlerContext.deadline,
        # time.monotonic()): the customer's media fit themselves before it. None for a context
        # without one (the engine driven directly).
        self.deadline: float | None = getattr(ctx, "deadline", None)
        self.conversation = Conversation(event.session, event.chat_id)
        self.keys = tools.config.keys(self.conversation)
        self.history = history_keys(self.keys)
        self.now = now_ms()
        self.payload: dict[str, Any] = event.document().get("payload") or {}
        self.writes: list[Write] = []
        self.replies: list[OutboxEntry] = []
        self.line_changed = False  # someone left the line or was taken: tell those behind
        self.slot_freed = False  # an agent has room again: give them the next customer
        # A customer's message came in this turn: the first reply marks it seen (sendSeen),
        # once per inbound burst; later replies, and replies to no new message, do not.
        self.seen_due = False
        self.after: list[Callable[[], Awaitable[Any]]] = []
        # What a step's prefetch read with the state (engine/turn/customer.py).
        self.prefetched: dict[str, Any] = {}

    async def run(
        self,
        step: Callable[[ConversationTurn], Awaitable[None]] | None,
        prefetch: Prefetch | None = None,
    ) -> None:
        """Load the state, run `step` (None: an event the engine does not act on), commit.
        `prefetch` queues the step's first reads in the state's round trip (dispatch.py)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.state)
        take = prefetch(self, pipe) if prefetch is not None else None
        answers = await pipe.execute()
        self.before = ConversationState.from_hash(answers[0])
        if take is not None:
            take(answers[1:])
        self.state = self.before
        if step is not None:
            await step(self)
        await self.commit()

    # --- the commit and what follows it ----------------------------------------------------
    async def commit(self) -> None:
        changed = self.state != self.before
        retention = self.config.retention_seconds
        if changed:
            self.state = replace(self.state, version=self.before.version + 1)
            self.writes += state_writes(self.keys.state, self.state, retention)
        self.writes += outbox_writes(
            self.keys, self.replies, retention_seconds=retention, now_ms=self.now
        )
        # A changed conversation is indexed before its state lands, in the commit's round trip
        # (one round trip per message less: about 3% of the product's CPU, docs/benchmarks.md).
        prelude = self._index_before_commit if changed else None
        kick = self._kick_sender if self.replies and self.tools.sender is not None else None
        if not self._follow_ups(changed):
            # Nothing follows the commit but the sender's kick, which needs no lease: the commit
            # rides with the turn's release when this is its last message, one round trip less
            # per reply (docs/benchmarks.md, "The reply's commit rides with the release").
            await self.ctx.commit_later(self.writes, prelude=prelude, then=kick)
            return
        await self.ctx.commit(self.writes, prelude=prelude)
        # --- after the commit: what only follows from it -----------------------------------
        if changed and self.state.state is not self.before.state:
            await self._index_state()
        for step in self.after:
            await step()
        coordinator = self.tools.coordinator
        if self.line_changed:
            await coordinator.notify_positions(self.conversation.session)
        if self.slot_freed or self.state.state is State.WAITING:
            await coordinator.assign_free_agents()
        if kick is not None:
            kick()

    def _follow_ups(self, changed: bool) -> bool:
        """Whether the commit is followed by work that must run under the lease, before the
        next turn of this conversation can start: the state's index, the steps queued in
        `after`, the line's position notices and handing out a freed slot or a waiting
        customer (each reads or writes what the next turn may change)."""
        return (
            (changed and self.state.state is not self.before.state)
            or bool(self.after)
            or self.line_changed
            or self.slot_freed
            or self.state.state is State.WAITING
        )

    def _kick_sender(self) -> None:
        sender = self.tools.sender
        assert sender is not None  # only queued when there is one
        sender.kick(self.conversation.token)

    def _index_before_commit(self, pipe: Any) -> None:
        """Idempotent: the conversation is listed, and its timer set, before its state exists;
        readers take the state hash as the truth, and a timer re-checks before acting."""
        index = self.tools.index
        pipe.zadd(index.conversations, {self.conversation.token: self.now})
        due = self._timer_due()
        if due is None:
            pipe.zrem(index.timers, self.conversation.token)
        else:
            pipe.zadd(index.timers, {self.conversation.token: due})

    async def _index_state(self) -> None:
        index = self.tools.index
        pipe = self.redis.pipeline(transaction=False)
        for state in State:
            if state is not self.state.state:
                pipe.srem(index.in_state(state.value), self.conversation.token)
        pipe.sadd(index.in_state(self.state.state.value), self.conversation.token)
        await pipe.execute()

    def _timer_due(self) -> int | None:
        config = self.config
        if self.state.state is State.WAITING:
            return self.state.line_entered_at + config.waiting_timeout_seconds * 1000
        if self.state.state in OPEN_STATES:
            return self.state.last_activity_at + config.inactivity_close_seconds * 1000
        return None

    # --- building blocks for the steps -----------------------------------------------------
    def reply(self, text: str, *, author: str = "bot") -> None:
        entry = new_entry(
            send_target(self.conversation.chat_id), text, author=author, at_ms=self.now
        )
        if entry.mark_seen:
            entry = replace(entry, mark_seen=self.seen_due)
            self.seen_due = False
        self.replies.append(entry)

    def record(self, entry: HistoryEntry) -> None:
        self.writes += append_writes(
            self.history, entry, retention_seconds=self.config.retention_seconds,
            now_ms=self.now,
        )  # fmt: skip

    async def leave_line(self) -> None:
        """Idempotent, before the commit: a repeat finds the customer gone already."""
        await self.line.leave(self.conversation.session, self.conversation.token)
        # Told even when a repeat finds the customer gone: the first run may have crashed
        # before telling the others (notices are deduplicated per position).
        self.line_changed = True
        self.state = replace(self.state, line_entered_at=0, line_position=0, line_notice_at=0)

    def release_agent(self, *, handled: bool, until: int = 0) -> None:
        """The agent's slot is free again; a handled conversation's time (taken to `until`,
        default now) feeds the line's estimates."""
        agent_id = self.state.agent_id
        if not agent_id:
            return
        end = max(until or self.now, self.state.taken_at)
        handled_seconds = (
            (end - self.state.taken_at) / 1000 if handled and self.state.taken_at else None
        )
        session, token = self.conversation.session, self.conversation.token

        async def release() -> None:
            await self.line.release(agent_id, session, token, handled_seconds)

        self.after.append(release)
        self.slot_freed = True
        self.state = replace(self.state, agent_id="", agent_name="", taken_at=0)
