"""The brain the engine runs: the AI agent when it can answer, the scheduling menu when it
cannot, switched per message and without the customer having to do anything.

The menu answers when:
- no GROQ_API_KEY is configured (reason `no_api_key`);
- the circuit breaker is open after repeated failures (`breaker_open`);
- the model fails on this message: timeout, 429, 5xx, network (`timeout`, `rate_limited`,
  `server_error`, `connection_error`), an unknown model / key / request (`model_error`), a
  malformed or empty answer (`bad_response`), no answer within the tool rounds
  (`tool_rounds`), or a request too large for the model (`request_too_large`: that one
  message's turn fails; the breaker is not touched);
- the turn's deadline (WSM_LLM_TURN_DEADLINE_SECONDS) passes, in a model call or in a tool
  (`timeout`; the breaker is told only of the first: a slow Redis is not the model's fault);
- the conversation is past its own limits (engine/agent/limits.py): agent turns per minute
  (`turn_limit`) or model tokens per day (`token_limit`); the limit is also recorded in the
  conversation's collected data as `agent_limit` (cleared when the model answers again), and
  the menu is shown for it at most once a minute: a flood's other messages get no answer
  unless they are the menu's (a number of its list, a confirmation);
each counted in `wsm_llm_fallbacks_total{reason}`. The menu then tells the customer what the
agent's tools already did for this message, carries a pending confirmation on, or shows the
numbered options (engine/agent/menu.py: SchedulingMenuBrain.resume).

Not a fallback (not counted) when a model is configured: a message that belongs to a numbered
menu flow under way (the customer answering "2" to a list the menu showed) goes to the menu.

A voice note or audio without a transcript (the transcription failed or was skipped) goes to
the menu too, counted as `unheard_audio`: the model has no words to answer, and the menu says
plainly that it cannot listen to audio yet and offers typing or a person. A transcribed one
reaches the model as "[áudio] <transcript>"; other media as a note with its caption
(engine/agent/context.py).

Bursts: when more customer messages already wait in the conversation's queue right behind this
one, the agent does not answer it (an empty Decision: the engine records it in the history);
the last message of the burst gets the one answer, with the earlier ones in its history. The
menu's path is unchanged (each message is a menu step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from engine.agent.breaker import CircuitBreaker
from engine.agent.confirmation import PENDING_KEY, PendingAction, confirms
from engine.agent.groq_brain import AgentTurnFailed, GroqBrain, TurnDeadline
from engine.agent.limits import AGENT_LIMIT, AGENT_LIMIT_TOLD, ConversationLimits
from engine.agent.llm import CONFIG_REJECTIONS, count_failure
from engine.agent.menu import SchedulingMenuBrain
from engine.agent.metrics import BURST_DEFERRED, LLM_FALLBACKS
from engine.agent.reminders import REMINDER_KEY
from engine.brain import Decision, Turn
from engine.identity import Conversation
from engine.menu_brain import PERSON_WORDS, unheard_audio

log = logging.getLogger("wsm.engine.agent.fallback")

# Rejections that say the configuration is wrong (every request would fail the same way):
# the breaker stops sending them. A malformed answer is the model's, for one message only.
_CONFIG_REJECTIONS = CONFIG_REJECTIONS


def fallback_reason(error: Exception) -> str:
    reason = getattr(error, "reason", "")
    if reason in {"timeout", "rate_limited", "server_error", "connection_error"}:
        return str(reason)
    if reason in _CONFIG_REJECTIONS:
        return "model_error"
    if reason in {"bad_response", "tool_rounds", "request_too_large"}:
        return str(reason)
    return "model_error"


@dataclass(eq=False)
class FallbackBrain:
    agent: GroqBrain | None
    menu: SchedulingMenuBrain
    breaker: CircuitBreaker
    limits: ConversationLimits | None = None

    def reads_history(self, conversation: Conversation) -> bool:
        """The model reads it; without one (no GROQ_API_KEY) only the menu answers."""
        return self.agent is not None

    async def decide(self, turn: Turn) -> Decision:
        if self.agent is None:
            LLM_FALLBACKS.labels("no_api_key").inc()
            return await self.menu.decide(turn)
        if self.menu.owns(turn):
            return await self.menu.decide(turn)
        if unheard_audio(turn.message):
            LLM_FALLBACKS.labels("unheard_audio").inc()
            return await self.menu.resume(turn)
        if not self.breaker.allow():
            LLM_FALLBACKS.labels("breaker_open").inc()
            return await self.menu.resume(turn)
        if self.limits is not None:
            try:
                behind = await self.limits.customer_messages_behind(turn.conversation)
                limited = None if behind else await self.limits.admit(turn.conversation.token)
            except BaseException:
                self.breaker.release()
                raise
            if behind:
                # Answered with the last message of the burst (this one is in its history).
                self.breaker.release()
                BURST_DEFERRED.inc()
                return held_back(turn)
            if limited is not None:
                self.breaker.release()
                LLM_FALLBACKS.labels(limited).inc()
                asks_for_person = PERSON_WORDS.search(turn.message.text) is not None
                if self.limits.quiet(turn.state.collected, limited) and not asks_for_person:
                    # Shown the menu for it a moment ago: one answer a minute to a flood, not
                    # one a message (recorded all the same). Asking for a person is answered.
                    return Decision()
                decision = await self.menu.resume(turn)
                told = self.limits.told(limited)
                return replace(decision, collected={**decision.collected, **told})
        try:
            decision = await self.agent.decide(turn)
        except AgentTurnFailed as failed:
            self._count_failure(failed)
            reason = fallback_reason(failed.error)
            LLM_FALLBACKS.labels(reason).inc()
            log.warning(
                "agent fell back to the menu",
                extra={"reason": failed.reason, "conversation": turn.conversation.token},
            )
            return await self.menu.resume(turn, failed.session)
        except BaseException:
            self.breaker.release()  # a local error (Redis): says nothing about the model
            raise
        self.breaker.success()
        if turn.state.collected.get(AGENT_LIMIT):
            cleared = {AGENT_LIMIT: "", AGENT_LIMIT_TOLD: ""}
            decision = replace(decision, collected={**decision.collected, **cleared})
        if turn.state.collected.get(REMINDER_KEY):
            # The model has answered the message after a reminder (it was told of the
            # reminder for it): the reminder is answered or left behind, as the menu leaves it
            # behind for words it does not understand. Kept, a later "3" would still cancel it.
            decision = replace(decision, collected={**decision.collected, REMINDER_KEY: ""})
        return decision

    def _count_failure(self, failed: AgentTurnFailed) -> None:
        if isinstance(failed.error, TurnDeadline) and not failed.error.model:
            # The turn ran out in a tool or its context (a slow Redis): not the model's fault.
            self.breaker.release()
            return
        count_failure(self.breaker, failed.error)


def held_back(turn: Turn) -> Decision:
    """A message of a burst, answered with the burst's last one: no reply of its own. But a
    proposal waiting for the customer's yes lapses here unless this message is that yes: the
    last message alone is read as the answer, so "não, obrigada" then "ok" in one burst would
    otherwise book what the customer declined (found by an audit)."""
    pending = PendingAction.decode(turn.state.collected.get(PENDING_KEY))
    if pending is None or confirms(turn.message.text, pending.kind):
        return Decision()
    return Decision(collected={PENDING_KEY: ""})
