"""Talking to a brain the way the engine does, without the queue: each message becomes a
Turn with the conversation's state and history, and the Decision is applied as the engine
applies it (collected data merged, step set, replies appended to the history)."""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field, replace

from engine.brain import Brain, Decision, InboundMessage, Turn
from engine.history import HistoryEntry
from engine.identity import Conversation
from engine.state import ConversationState, State
from shared.keys import CalendarKeys
from shared.redis_client import RedisClient

_ids = itertools.count()


@dataclass
class Chat:
    chat_id: str
    session: str = "default"
    state: ConversationState = field(default_factory=lambda: ConversationState(state=State.BOT))
    history: list[HistoryEntry] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    @property
    def conversation(self) -> Conversation:
        return Conversation(self.session, self.chat_id)

    def turn(self, text: str) -> Turn:
        message_id = f"false_{self.chat_id}_{uuid.uuid4().hex.upper()[:20]}"
        return Turn(
            conversation=self.conversation,
            state=self.state,
            history=list(self.history),
            message=InboundMessage(text=text, waha_id=message_id, at=int(time.time() * 1000)),
        )

    def apply(self, turn: Turn, decision: Decision) -> None:
        self.decisions.append(decision)
        self.history.append(
            HistoryEntry(mid=f"in{next(_ids)}", direction="in", text=turn.message.text, at=0)
        )
        for text in decision.replies:
            self.history.append(
                HistoryEntry(mid=f"out{next(_ids)}", direction="out", text=text, at=0)
            )
            self.replies.append(text)
        self.state = self.state.with_collected(decision.collected)
        if decision.step is not None:
            self.state = replace(self.state, step=decision.step)

    async def say(self, brain: Brain, text: str) -> Decision:
        turn = self.turn(text)
        decision = await brain.decide(turn)
        self.apply(turn, decision)
        return decision

    def named(self, name: str) -> Chat:
        self.state = self.state.with_collected({"name": name})
        return self

    async def booked(self, redis: RedisClient, prefix: str) -> int:
        """How many appointments the customer has booked (their calendar index)."""
        return int(await redis.zcard(CalendarKeys(prefix).customer(self.conversation.token)))
