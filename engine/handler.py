"""The conversation engine as the worker fleet's handler.

    async def __call__(event: QueuedEvent, ctx: HandlerContext) -> None

For each event of a conversation (in order, one at a time, under the worker's lease) the
engine reads the conversation's state, decides (the brain, the waiting line, the state table),
and commits everything the event changes in that conversation - state, history, replies to
send - with `ctx.commit(writes)`: one fenced script that also acks the message. So a message is
either fully handled once or not at all, and a redelivered message never causes a second reply.

Steps outside the conversation's hash tag (the waiting line, the indexes, the timers, the
session registry) are idempotent and run before the commit when repeating them is harmless
(entering the line, indexing), or after it when they only follow from it (telling others in
line, waking the sender). A crash between commit and a later step is covered by the background
passes of engine/service.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from engine import commands
from engine.assignment import LineCoordinator
from engine.brain import Brain, InboundMessage, Turn
from engine.history import (
    HistoryEntry,
    ack_writes,
    append_writes,
    edit_writes,
    mid_for,
    reaction_writes,
    recent,
    revoke_writes,
    status_for_ack,
)
from engine.identity import Conversation, PhoneResolver, is_ignored, send_target
from engine.metrics import WAITING_SECONDS
from engine.outbox import OutboxEntry, history_keys, new_entry, outbox_writes
from engine.sender import InflightSend, Sender
from engine.state import (
    OPEN_STATES,
    State,
    Trigger,
    can,
    load_state,
    state_writes,
)
from engine.texts import Texts
from engine.waha_client import SentMessage, short_message_id
from engine.waiting_line import WaitingLine
from engine.writes import Write
from shared.envelope import QueuedEvent
from shared.events import SESSION_CHAT
from shared.keys import EngineConversationKeys, EngineIndexKeys, WahaSessionKeys, engine_keys_for

log = logging.getLogger(__name__)


class CommitContext(Protocol):
    """What the engine needs of the worker's HandlerContext."""

    async def commit(self, writes: Iterable[Sequence[Any]] = ()) -> None: ...


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


def now_ms() -> int:
    return int(time.time() * 1000)


class Engine:
    def __init__(
        self,
        redis: Any,
        config: EngineConfig,
        *,
        brain: Brain,
        texts: Texts,
        line: WaitingLine,
        coordinator: LineCoordinator,
        resolver: PhoneResolver,
        sender: Sender | None = None,
    ) -> None:
        self._redis = redis
        self.config = config
        self.brain = brain
        self.texts = texts
        self.line = line
        self.coordinator = coordinator
        self.resolver = resolver
        self.sender = sender
        self.index = EngineIndexKeys(config.prefix)

    async def __call__(self, event: QueuedEvent, ctx: CommitContext) -> None:
        if event.event == "session.status" or event.chat_id == SESSION_CHAT:
            await self._session_status(event)
            await ctx.commit([])
            return
        if is_ignored(
            event.chat_id,
            ignore_groups=self.config.ignore_groups,
            ignore_broadcasts=self.config.ignore_broadcasts,
        ):
            await ctx.commit([])
            return
        turn = _Turn(self, event, ctx)
        await turn.run()

    # --- helpers shared by turns -----------------------------------------------------------
    def keys(self, conversation: Conversation) -> EngineConversationKeys:
        return engine_keys_for(
            conversation.session, conversation.chat_id, self.config.shards, self.config.prefix
        )

    async def _session_status(self, event: QueuedEvent) -> None:
        payload = event.document().get("payload") or {}
        status = str(payload.get("status") or "")
        if not status:
            return
        record = f'{{"status":"{status}","at":{now_ms()}}}'
        await self._redis.hset(self.index.sessions, event.session, record)
        if status == "WORKING":
            if self.sender is not None:
                await self.sender.wake_session(event.session)
            else:
                await self._redis.delete(WahaSessionKeys(event.session, self.config.prefix).parked)


class _Turn:
    """One event of one conversation: reads, decides, commits, then follows up."""

    def __init__(self, engine: Engine, event: QueuedEvent, ctx: CommitContext) -> None:
        self.engine = engine
        self.event = event
        self.ctx = ctx
        self.conversation = Conversation(event.session, event.chat_id)
        self.keys = engine.keys(self.conversation)
        self.history = history_keys(self.keys)
        self.texts = engine.texts
        self.line = engine.line
        self.now = now_ms()
        self.writes: list[Write] = []
        self.replies: list[OutboxEntry] = []
        self.line_changed = False  # someone left the line or was taken: tell those behind
        self.slot_freed = False  # an agent has room again: give them the next customer
        self.after: list[Any] = []

    # --- the frame -------------------------------------------------------------------------
    async def run(self) -> None:
        name = self.event.event
        document = self.event.document()
        self.payload: dict[str, Any] = document.get("payload") or {}
        self.before = await load_state(self.engine._redis, self.keys.state)
        self.state = self.before
        if name == "message":
            await self.customer_message()
        elif name == "message.any":
            if self.payload.get("fromMe") is True:
                await self.from_business_phone()
            # Without fromMe it repeats a `message` event: handled there.
        elif name in ("message.ack", "message.ack.group"):
            await self.ack()
        elif name == "message.edited":
            await self.edited()
        elif name == "message.revoked":
            await self.revoked()
        elif name == "message.reaction":
            await self.reaction()
        elif name == commands.AGENT_MESSAGE:
            await self.agent_message()
        elif name == commands.CLOSE:
            await self.close(Trigger.CLOSE, goodbye=self.before.state is not State.PAUSED)
        elif name == commands.HANDBACK:
            await self.handback()
        elif name == commands.ASSIGNED:
            await self.assigned()
        elif name == commands.LINE:
            await self.line_notice()
        elif name == commands.TIMEOUT:
            await self.timeout()
        await self.commit()

    async def commit(self) -> None:
        changed = self.state != self.before
        if changed:
            self.state = replace(self.state, version=self.before.version + 1)
            self.writes += state_writes(
                self.keys.state, self.state, self.engine.config.retention_seconds
            )
        self.writes += outbox_writes(
            self.keys,
            self.replies,
            retention_seconds=self.engine.config.retention_seconds,
            now_ms=self.now,
        )
        if changed:
            await self._index_before_commit()
        await self.ctx.commit([w.as_command() for w in self.writes])
        # --- after the commit: what only follows from it -----------------------------------
        if changed and self.state.state is not self.before.state:
            await self._index_state()
        for step in self.after:
            await step()
        if self.line_changed:
            await self.engine.coordinator.notify_positions(self.conversation.session)
        if self.slot_freed or self.state.state is State.WAITING:
            await self.engine.coordinator.assign_free_agents()
        if self.replies and self.engine.sender is not None:
            self.engine.sender.kick(self.conversation.token)

    async def _index_before_commit(self) -> None:
        """Idempotent: the conversation is listed, and its timer set, before its state exists;
        readers take the state hash as the truth, and a timer re-checks before acting."""
        index = self.engine.index
        pipe = self.engine._redis.pipeline(transaction=False)
        pipe.zadd(index.conversations, {self.conversation.token: self.now})
        due = self._timer_due()
        if due is None:
            pipe.zrem(index.timers, self.conversation.token)
        else:
            pipe.zadd(index.timers, {self.conversation.token: due})
        await pipe.execute()

    async def _index_state(self) -> None:
        index = self.engine.index
        pipe = self.engine._redis.pipeline(transaction=False)
        for state in State:
            if state is not self.state.state:
                pipe.srem(index.in_state(state.value), self.conversation.token)
        pipe.sadd(index.in_state(self.state.state.value), self.conversation.token)
        await pipe.execute()

    def _timer_due(self) -> int | None:
        config = self.engine.config
        if self.state.state is State.WAITING:
            return self.state.line_entered_at + config.waiting_timeout_seconds * 1000
        if self.state.state in OPEN_STATES:
            return self.state.last_activity_at + config.inactivity_close_seconds * 1000
        return None

    # --- building blocks -------------------------------------------------------------------
    def reply(self, text: str, *, author: str = "bot") -> None:
        entry = new_entry(
            send_target(self.conversation.chat_id), text, author=author, at_ms=self.now
        )
        self.replies.append(entry)

    def record(self, entry: HistoryEntry) -> None:
        self.writes += append_writes(
            self.history, entry, retention_seconds=self.engine.config.retention_seconds,
            now_ms=self.now,
        )  # fmt: skip

    async def position_text(self, key: str, position: int) -> str:
        minutes = await self.line.estimate_minutes(self.conversation.session, position)
        return self.texts.render(
            key,
            position=position,
            ordinal=self.texts.ordinal(position),
            minutes=minutes,
            leave_word=self.texts.templates["leave_word"],
        )

    async def leave_line(self) -> None:
        """Idempotent, before the commit: a repeat finds the customer gone already."""
        await self.line.leave(self.conversation.session, self.conversation.token)
        # Told even when a repeat finds the customer gone: the first run may have crashed
        # before telling the others (notices are deduplicated per position).
        self.line_changed = True
        self.state = replace(self.state, line_entered_at=0, line_position=0, line_notice_at=0)

    def release_agent(self, *, handled: bool) -> None:
        agent_id = self.state.agent_id
        if not agent_id:
            return
        handled_seconds = (
            (self.now - self.state.taken_at) / 1000 if handled and self.state.taken_at else None
        )
        session, token = self.conversation.session, self.conversation.token

        async def release() -> None:
            await self.line.release(agent_id, session, token, handled_seconds)

        self.after.append(release)
        self.slot_freed = True
        self.state = replace(self.state, agent_id="", agent_name="", taken_at=0)

    # --- customer messages -----------------------------------------------------------------
    async def customer_message(self) -> None:
        payload = self.payload
        if payload.get("fromMe") is True:
            return
        text = str(payload.get("body") or "")
        waha_id = str(payload.get("id") or "")
        if waha_id and await mid_for(self.engine._redis, self.history, short_message_id(waha_id)):
            # Already in this conversation's history: handled before (a webhook replayed
            # after the gateway's dedupe window). Recorded once, answered once.
            return
        at = int(payload.get("timestamp") or 0) * 1000 or self.event.received_at_ms
        kind = "media" if payload.get("hasMedia") else "text"
        self.record(
            HistoryEntry(
                mid=short_message_id(waha_id) if waha_id else f"in-{self.event.id}",
                direction="in", text=text, at=at, author="customer", kind=kind,
                waha_id=waha_id, status="received",
            )
        )  # fmt: skip
        if not self.state.phone:
            phone = await self.engine.resolver.phone(
                self.conversation.session, self.conversation.chat_id
            )
            if phone:
                self.state = replace(self.state, phone=phone)
        self.state = replace(self.state, last_activity_at=self.now, last_customer_at=self.now)
        current = self.before.state
        if current in (State.NEW, State.CLOSED, State.BOT):
            await self.ask_brain(text, waha_id, at, kind)
        elif current is State.WAITING:
            self.state = self.state.moved(Trigger.CUSTOMER_MESSAGE)
            await self.waiting_message(text)
        else:  # with a person, or paused: recorded for them, the bot keeps quiet
            self.state = self.state.moved(Trigger.CUSTOMER_MESSAGE)

    async def ask_brain(self, text: str, waha_id: str, at: int, kind: str) -> None:
        config = self.engine.config
        past = await recent(self.engine._redis, self.history, config.brain_history_turns)
        decision = await self.engine.brain.decide(
            Turn(
                conversation=self.conversation,
                state=self.state,
                history=past,
                message=InboundMessage(text=text, waha_id=waha_id, at=at, kind=kind),
            )
        )
        reopened = self.before.state in (State.NEW, State.CLOSED)
        self.state = self.state.moved(Trigger.CUSTOMER_MESSAGE).with_collected(decision.collected)
        if reopened:
            self.state = replace(self.state, opened_at=self.now, closed_at=0)
        if decision.step is not None:
            self.state = replace(self.state, step=decision.step)
        for text_out in decision.replies:
            self.reply(text_out)
        if decision.hands_off:
            position, entered = await self.line.enter(
                self.conversation.session, self.conversation.token, self.now
            )
            self.reply(await self.position_text("line_entered", position))
            self.state = self.state.moved(
                Trigger.HANDOFF,
                line_entered_at=entered,
                line_position=position,
                line_notice_at=self.now,
            )
        elif decision.closes:
            self.state = self.state.moved(Trigger.CLOSE, closed_at=self.now)
            self.reply(self.texts.render("goodbye"))

    async def waiting_message(self, text: str) -> None:
        if text.strip().casefold() in self.texts.leave_words:
            await self.leave_line()
            self.state = self.state.moved(Trigger.LEFT_LINE)
            self.reply(self.texts.render("line_left"))
            return
        position = await self.line.position(self.conversation.session, self.conversation.token)
        interval_ms = self.engine.config.notice_interval_seconds * 1000
        if position and self.now - self.state.line_notice_at >= interval_ms:
            self.reply(await self.position_text("line_still_waiting", position))
            self.state = replace(self.state, line_position=position, line_notice_at=self.now)

    # --- our own phone ---------------------------------------------------------------------
    async def from_business_phone(self) -> None:
        waha_id = str(self.payload.get("id") or "")
        short = short_message_id(waha_id) if waha_id else ""
        if await self._is_our_send(short, str(self.payload.get("body") or "")):
            return  # the echo of one of our replies: already in the history
        text = str(self.payload.get("body") or "")
        at = int(self.payload.get("timestamp") or 0) * 1000 or self.event.received_at_ms
        self.record(
            HistoryEntry(
                mid=short or f"out-{self.event.id}", direction="out", text=text, at=at,
                author="business", waha_id=waha_id,
                status=status_for_ack(self.payload.get("ack")) or "sent",
            )
        )  # fmt: skip
        if self.before.state is State.WAITING:
            await self.leave_line()
        self.state = self.state.moved(Trigger.BUSINESS_REPLIED, last_activity_at=self.now)

    async def _is_our_send(self, short_id: str, body: str) -> bool:
        session_keys = WahaSessionKeys(self.conversation.session, self.engine.config.prefix)
        redis = self.engine._redis
        # The echo can overtake WAHA's answer to our sendText: a send under way to this chat
        # with the same text is ours. If its sender died before recording it, the echo
        # records it, so it is not sent a second time (Sender.settle_echo). Looked at even
        # when the id is known as ours: the sender remembers the id first and takes the reply
        # off the outbox second, and may have died in between.
        for chat in {self.conversation.chat_id, send_target(self.conversation.chat_id)}:
            raw = await redis.get(session_keys.inflight(chat))
            if raw is None:
                continue
            marker = InflightSend.decode(raw)
            if marker.text != body:
                continue
            waha_id = str(self.payload.get("id") or "")
            if self.engine.sender is not None and waha_id:
                echo_at_ms = int(self.payload.get("timestamp") or 0) * 1000
                await self.engine.sender.settle_echo(
                    self.conversation.token, marker, SentMessage(waha_id), echo_at_ms
                )
            return True
        return bool(short_id) and bool(await redis.exists(session_keys.ours(short_id)))

    # --- delivery status, edits, revokes, reactions ----------------------------------------
    async def ack(self) -> None:
        status = status_for_ack(self.payload.get("ack"))
        waha_id = str(self.payload.get("id") or "")
        if status and waha_id:
            self.writes += await ack_writes(
                self.engine._redis, self.history, short_message_id(waha_id), status
            )

    async def edited(self) -> None:
        target = self.payload.get("editedMessageId") or ""
        if target:
            self.writes += await edit_writes(
                self.engine._redis, self.history, short_message_id(str(target)),
                str(self.payload.get("body") or ""),
            )  # fmt: skip

    async def revoked(self) -> None:
        target = self.payload.get("revokedMessageId")
        before = self.payload.get("before")
        if not target and isinstance(before, dict):
            target = before.get("id")
        if target:
            self.writes += await revoke_writes(
                self.engine._redis, self.history, short_message_id(str(target)), self.now
            )

    async def reaction(self) -> None:
        reaction = self.payload.get("reaction") or {}
        target = reaction.get("messageId") if isinstance(reaction, dict) else None
        if target:
            reactor = str(self.payload.get("participant") or self.payload.get("from") or "")
            if self.payload.get("fromMe") is True:
                reactor = "business"
            self.writes += await reaction_writes(
                self.engine._redis, self.history, short_message_id(str(target)), reactor,
                str(reaction.get("text") or ""),
            )  # fmt: skip

    # --- commands --------------------------------------------------------------------------
    async def agent_message(self) -> None:
        text = str(self.payload.get("text") or "")
        agent_id = str(self.payload.get("agent_id") or "")
        agent_name = str(self.payload.get("agent_name") or agent_id)
        if not text or not agent_id:
            return
        if self.before.state is State.WAITING:
            await self.leave_line()
        if self.state.agent_id and self.state.agent_id != agent_id:
            self.release_agent(handled=False)
        if self.state.agent_id != agent_id:
            session, token = self.conversation.session, self.conversation.token

            async def attach() -> None:
                await self.line.attach(agent_id, session, token)

            self.after.append(attach)
        self.state = self.state.moved(
            Trigger.AGENT_WROTE,
            agent_id=agent_id,
            agent_name=agent_name,
            taken_at=self.state.taken_at or self.now,
            last_activity_at=self.now,
        )
        self.reply(text, author=f"agent:{agent_id}")

    async def close(self, trigger: Trigger, *, goodbye: bool, text_key: str = "goodbye") -> None:
        if not can(self.state.state, trigger):
            return
        if self.state.state is State.WAITING:
            await self.leave_line()
        if self.state.state is State.AGENT:
            self.release_agent(handled=True)
        self.state = self.state.moved(trigger, closed_at=self.now, step="")
        if goodbye:
            self.reply(self.texts.render(text_key))

    async def handback(self) -> None:
        if not can(self.state.state, Trigger.HANDBACK):
            return
        if self.state.state is State.WAITING:
            await self.leave_line()
        if self.state.state is State.AGENT:
            self.release_agent(handled=True)
        self.state = self.state.moved(Trigger.HANDBACK, last_activity_at=self.now)
        self.reply(self.texts.render("handback"))

    async def assigned(self) -> None:
        agent_id = str(self.payload.get("agent_id") or "")
        agent_name = str(self.payload.get("agent_name") or agent_id)
        session, token = self.conversation.session, self.conversation.token
        if self.state.state is not State.WAITING:
            if self.state.state is State.AGENT and self.state.agent_id == agent_id:
                self.after.append(lambda: self.line.confirm_taken(token))
                return
            # The customer left (or was closed) before the assignment reached them.

            async def give_back() -> None:
                await self.line.release(agent_id, session, token, None)

            self.after.append(give_back)
            self.slot_freed = True
            return
        entered_at = int(self.payload.get("entered_at") or self.state.line_entered_at)
        taken_at = int(self.payload.get("taken_at") or self.now)
        self.state = self.state.moved(
            Trigger.AGENT_TOOK,
            agent_id=agent_id,
            agent_name=agent_name,
            taken_at=taken_at,
            line_entered_at=0,
            line_position=0,
            line_notice_at=0,
            last_activity_at=self.now,
        )
        self.reply(self.texts.render("line_taken", agent=agent_name))
        waited = max(0.0, (taken_at - entered_at) / 1000)

        async def confirm() -> None:
            await self.line.confirm_taken(token)
            WAITING_SECONDS.observe(waited)

        self.after.append(confirm)

    async def line_notice(self) -> None:
        if self.state.state is not State.WAITING:
            return
        position = await self.line.position(self.conversation.session, self.conversation.token)
        if not position or position >= (self.state.line_position or position + 1):
            return
        interval_ms = self.engine.config.notice_interval_seconds * 1000
        if position != 1 and self.now - self.state.line_notice_at < interval_ms:
            return
        if position == 1:
            self.reply(self.texts.render("line_front"))
        else:
            self.reply(await self.position_text("line_position", position))
        self.state = replace(self.state, line_position=position, line_notice_at=self.now)

    async def timeout(self) -> None:
        config = self.engine.config
        state = self.state
        if state.state is State.WAITING:
            if self.now - state.line_entered_at >= config.waiting_timeout_seconds * 1000:
                await self.close(Trigger.LINE_TIMEOUT, goodbye=True, text_key="line_timeout")
        elif (
            state.state in OPEN_STATES
            and self.now - state.last_activity_at >= config.inactivity_close_seconds * 1000
        ):
            # Paused: a person of the business is talking there; the bot stays quiet.
            await self.close(Trigger.INACTIVITY, goodbye=state.state is not State.PAUSED)
        # Not due after all (activity since): the timer was moved by that activity.


def create(setup: Any) -> Any:
    """The fleet's handler factory (WSM_WORKER_HANDLER=engine.handler:create): one engine per
    worker process, with its sender and background passes (engine/service.py)."""
    from engine.service import create as create_service  # it wires this module: import late

    return create_service(setup)
