"""The conversation engine: the fleet's handler for one event of one conversation.

    async def __call__(event: QueuedEvent, ctx: CommitContext) -> None

For each event of a conversation (in order, one at a time, under the worker's lease) the
engine reads the conversation's state, decides (the brain, the waiting line, the state table)
and commits everything the event changes in one fenced step with the message's ack
(engine/turn/frame.py). Which step handles which event is the table in engine/turn/dispatch.py.
Built by engine/service.py (EngineService: the engine plus its background passes).
"""

from __future__ import annotations

from engine.identity import Conversation, is_ignored
from engine.turn.dispatch import LIGHT_STEPS, PREFETCH, STEPS
from engine.turn.frame import CommitContext, ConversationTurn, EngineConfig, TurnTools
from engine.turn.session import session_status
from shared.envelope import QueuedEvent
from shared.events import SESSION_CHAT
from shared.keys import EngineConversationKeys

__all__ = ["CommitContext", "Engine", "EngineConfig"]


class Engine:
    def __init__(self, tools: TurnTools) -> None:
        self.tools = tools
        self.config = tools.config

    async def __call__(self, event: QueuedEvent, ctx: CommitContext) -> None:
        if event.event == "session.status" or event.chat_id == SESSION_CHAT:
            tools = self.tools
            await session_status(tools.redis, tools.index, tools.sender, self.config.prefix, event)
            await ctx.commit_later()
            return
        if is_ignored(
            event.chat_id,
            ignore_groups=self.config.ignore_groups,
            ignore_broadcasts=self.config.ignore_broadcasts,
        ):
            await ctx.commit_later()
            return
        step = STEPS.get(event.event)
        light = LIGHT_STEPS.get(event.event)
        if step is None and light is None:
            # A WAHA event the engine does not act on: acked as is.
            await ctx.commit_later()
            return
        turn = ConversationTurn(self.tools, event, ctx)
        if light is not None and await light(turn):
            # Nothing but its own writes (engine/turn/dispatch.py): no state read, no follow-ups,
            # so its commit may ride with the turn's release (an ack, an echo: issue 19).
            await ctx.commit_later(turn.writes)
            return
        await turn.run(step, PREFETCH.get(event.event))

    def keys(self, conversation: Conversation) -> EngineConversationKeys:
        return self.config.keys(conversation)
