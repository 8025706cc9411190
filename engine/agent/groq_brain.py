"""The AI agent: a brain (engine/brain.py's seam) that answers with an LLM calling tools.

For one customer message: build the context (engine/agent/context.py), then loop: ask the
model; run the tools it calls (engine/agent/tools.py) and give it their results; stop when it
answers with text, when it hands the customer to a person, or after WSM_LLM_MAX_TOOL_ROUNDS
model calls. The whole turn (its context, every model call and every tool call) is bounded by
one deadline, WSM_LLM_TURN_DEADLINE_SECONDS from its start: a tool held up by a slow Redis
cannot push the turn past the worker's handler timeout (found by an audit; the model's time
alone was bounded). Past it the turn fails as a `timeout` and the menu answers the message
(engine/agent/fallback.py). A change cut halfway is not lost nor made twice: its proposal and
the customer's yes stand (tools.py), so the menu carries it out again, and the booking
scripts answer "exists" to a change already made. Only a deadline that struck while the model
was answering tells the breaker about the model (`TurnDeadline.model`). A handoff the model
asked for survives the deadline: a round runs it before anything else (it waits for nothing), so
a slower tool beside it that is cut cannot drop it, and the turn ends with the handoff, not the
menu: the customer asked for a person, and the menu's answer would not put them in line.

It never writes conversation state itself: the Decision carries the replies, the pending
confirmation (collected data) and a handoff request, and the engine commits them with the
message's ack. Bookings are written by the tools' atomic scripts, repeat-safe.

Failures raise AgentTurnFailed, carrying what the turn's tools had already done, so the
fallback brain (engine/agent/fallback.py) can tell the customer about a booking made just
before the model went away, instead of pretending nothing happened.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.agent.agenda import Agenda
from engine.agent.confirmation import PendingAction
from engine.agent.context import (
    build_messages,
    inbound_words,
    state_summary,
    system_prompt,
    tool_result_message,
)
from engine.agent.knowledge import KnowledgeBase, passages_message
from engine.agent.llm import LLMError, LLMRejected, LLMUnavailable, ModelTurn
from engine.agent.texts import AgentTexts, load_agent_texts
from engine.agent.tools import CHANGE_TOOLS, HANDOFF_TOOL, ToolSession, tool_definitions
from engine.brain import Decision, HandOff, Turn

STEP_AGENT = "agent"


class Model(Protocol):
    async def complete(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> ModelTurn: ...


class TurnDeadline(LLMUnavailable):
    """The turn's deadline passed. `model`: while the model was answering (a slow model, as a
    timeout); else in a tool or the context (a slow Redis), which says nothing about it."""

    def __init__(self, *, model: bool) -> None:
        super().__init__("timeout", "turn deadline" + ("" if model else " (outside the model)"))
        self.model = model


@dataclass(slots=True)
class _Progress:
    """Where a turn is: whether it waits for the model now, the words of the model's latest
    answer (the reply of a handoff the deadline cut the round of), and the tools of that round
    not finished yet (what the deadline cut)."""

    asking: bool = False
    said: str = ""
    unfinished: list[str] = field(default_factory=list)


class AgentTurnFailed(Exception):
    """The model could not finish this message's answer; `session` holds what its tools did."""

    def __init__(self, error: LLMError, session: ToolSession) -> None:
        super().__init__(str(error))
        self.error = error
        self.reason = error.reason
        self.session = session


@dataclass(frozen=True, slots=True)
class AgentConfig:
    language: str = "pt-BR"
    max_tool_rounds: int = 5
    history_token_budget: int = 2500
    reply_max_chars: int = 1200
    turn_deadline_seconds: float = 40.0
    inbound_max_chars: int = 4000


_BOLD = re.compile(r"\*\*(.+?)\*\*", re.DOTALL)
_HEADING = re.compile(r"^#{1,6}\s+", re.MULTILINE)


def whatsapp_text(text: str, max_chars: int) -> str:
    """Markdown the model may write, as WhatsApp shows it, cut at `max_chars`."""
    text = _HEADING.sub("", _BOLD.sub(r"*\1*", text)).strip()
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1]
    space = cut.rfind(" ")
    if space > max_chars // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


class GroqBrain:
    def __init__(
        self,
        model: Model,
        agenda: Agenda,
        config: AgentConfig,
        *,
        on_tokens: Callable[[str, int], Awaitable[None]] | None = None,
        knowledge: KnowledgeBase | None = None,
        texts: AgentTexts | None = None,
    ) -> None:
        self.model = model
        self.agenda = agenda
        self.config = config
        self.tools = tool_definitions(knowledge=False)
        # The business's documents (engine/agent/knowledge.py): while they hold passages, each
        # turn gets the best ones, their rules and the search_knowledge tool.
        self.knowledge = knowledge
        self.knowledge_tools = tool_definitions()
        # Told the tokens of every answer (the conversation's daily budget, limits.py).
        self.on_tokens = on_tokens
        # The business's own texts: what the customer is told of a change the deadline cut.
        self.texts = texts or load_agent_texts("pt-BR")  # the settings' default language

    async def decide(self, turn: Turn) -> Decision:
        session = ToolSession.for_turn(self.agenda, turn, knowledge=self.knowledge)
        progress = _Progress()
        deadline = asyncio.timeout(self.config.turn_deadline_seconds)
        try:
            async with deadline:
                return await self._answer(turn, session, progress)
        except TimeoutError:
            if not deadline.expired():
                raise
            if session.handoff is not None:
                # Recorded before whatever the deadline cut (its round runs it first): the
                # customer asked for a person, which the menu's answer would not honour.
                return self._decision(session, self._handoff_words(progress))
            failed = TurnDeadline(model=progress.asking)
            raise AgentTurnFailed(failed, session) from None
        except LLMError as exc:
            raise AgentTurnFailed(exc, session) from exc

    async def _answer(self, turn: Turn, session: ToolSession, progress: _Progress) -> Decision:
        messages = await self._context(turn, session)
        tools = self.knowledge_tools if session.knowledge_offered else self.tools
        for _ in range(self.config.max_tool_rounds):
            progress.asking = True
            answer = await self.model.complete(messages, tools)
            progress.asking = False
            progress.said = answer.content
            # The handoff first, before anything that waits (the token count's write, the other
            # tools): whatever the deadline cuts after it, the customer's request for a person
            # is already recorded.
            progress.unfinished = [c.name for c in answer.tool_calls if c.name != HANDOFF_TOOL]
            results = {
                n: await session.call(call.name, call.arguments)
                for n, call in enumerate(answer.tool_calls)
                if call.name == HANDOFF_TOOL
            }
            if self.on_tokens is not None and answer.tokens:
                await self.on_tokens(turn.conversation.token, answer.tokens)
            if not answer.tool_calls:
                if not answer.content:
                    raise LLMRejected("bad_response", "empty answer")
                return self._decision(session, answer.content)
            messages.append(answer.as_message())
            for n, call in enumerate(answer.tool_calls):
                if n not in results:
                    results[n] = await session.call(call.name, call.arguments)
                    progress.unfinished.remove(call.name)
                # In the model's order, as it asked.
                messages.append(tool_result_message(call.id, call.name, results[n]))
            if session.handoff is not None:
                return self._decision(session, answer.content)
        raise LLMRejected("tool_rounds", f"no answer after {self.config.max_tool_rounds} rounds")

    def _handoff_words(self, progress: _Progress) -> str:
        """What a customer handed off when the deadline struck is told: the model's words of
        that round, unless a change to a booking was among what the deadline cut. Those words
        were written before the tools ran ("pronto, remarquei"), and whether the change was
        made is not known: the customer is told so, and a person checks (the history shows
        the attendant the request)."""
        if CHANGE_TOOLS.intersection(progress.unfinished):
            return self.texts.render("change_unconfirmed")
        return progress.said

    def _decision(self, session: ToolSession, text: str) -> Decision:
        reply = whatsapp_text(text, self.config.reply_max_chars) if text else ""
        return Decision(
            replies=[reply] if reply else [],
            step=STEP_AGENT,
            collected=session.collected(),
            requests=[HandOff(session.handoff)] if session.handoff is not None else [],
        )

    async def _context(self, turn: Turn, session: ToolSession) -> list[dict[str, Any]]:
        now = self.agenda.now()
        upcoming = await self.agenda.mine(session.customer)
        summary = state_summary(
            collected=dict(turn.state.collected),
            upcoming=[(b, self.agenda.booking_label(b)) for b in upcoming],
            pending=session.pending_in,
            pending_text=await self._describe(session.pending_in, session),
        )
        knowledge = await self._knowledge(turn, session)
        return build_messages(
            knowledge=knowledge,
            system=system_prompt(
                self.agenda.calendar,
                language=self.config.language,
                now=now,
                max_reply_chars=self.config.reply_max_chars,
                knowledge=session.knowledge_offered,
            ),
            summary=summary,
            history=turn.history,
            new_message=inbound_words(turn.message),
            budget=self.config.history_token_budget,
            max_chars=self.config.inbound_max_chars,
        )

    async def _knowledge(self, turn: Turn, session: ToolSession) -> str:
        """The system message with this turn's passages; "" while the business has none."""
        if self.knowledge is None:
            return ""
        previous = next(
            (e.text for e in reversed(turn.history) if e.direction == "in" and e.text), ""
        )
        # The customer's words as the model reads them (a voice note's transcript included).
        text = inbound_words(turn.message)[: self.config.inbound_max_chars]
        index, passages = await self.knowledge.for_message(text, previous)
        session.knowledge_offered = bool(index.passages)
        return passages_message(passages) if session.knowledge_offered else ""

    async def _describe(self, pending: PendingAction | None, session: ToolSession) -> str:
        """The pending change in words, with the arguments to repeat; '' if it no longer
        applies (the time has passed, the booking is gone)."""
        if pending is None:
            return ""
        proposal = await self.agenda.describe(pending, session.customer)
        if proposal is None:
            return ""
        if pending.kind == "book":
            args = f'service="{pending.service}", start="{pending.start}"'
            return f"{proposal.service} on {proposal.when} (book_appointment {args})"
        if pending.kind == "cancel":
            args = f'booking_id="{pending.booking_id}"'
            return f"{proposal.service} on {proposal.when} (cancel_appointment {args})"
        args = f'booking_id="{pending.booking_id}", new_start="{pending.start}"'
        return (
            f"{proposal.service} from {proposal.old} to {proposal.when} "
            f"(reschedule_appointment {args})"
        )
