"""The brain the engine runs: the AI agent when it can answer, the scheduling menu when it
cannot, switched per message and without the customer having to do anything.

The menu answers when:
- no GROQ_API_KEY is configured (reason `no_api_key`);
- the circuit breaker is open after repeated failures (`breaker_open`);
- the model fails on this message: timeout, 429, 5xx, network (`timeout`, `rate_limited`,
  `server_error`, `connection_error`), an unknown model / key / request (`model_error`), a
  malformed or empty answer (`bad_response`), or no answer within the tool rounds
  (`tool_rounds`);
each counted in `wsm_llm_fallbacks_total{reason}`. The menu then tells the customer what the
agent's tools already did for this message, carries a pending confirmation on, or shows the
numbered options (engine/agent/menu.py: SchedulingMenuBrain.resume).

Not a fallback (not counted) when a model is configured: a message that belongs to a numbered
menu flow under way (the customer answering "2" to a list the menu showed) goes to the menu.
"""

from __future__ import annotations

import logging

from engine.agent.breaker import CircuitBreaker
from engine.agent.groq_brain import AgentTurnFailed, GroqBrain
from engine.agent.llm import LLMRejected, LLMUnavailable
from engine.agent.menu import SchedulingMenuBrain
from engine.agent.metrics import LLM_FALLBACKS
from engine.brain import Decision, Turn

log = logging.getLogger(__name__)

# Rejections that say the configuration is wrong (every request would fail the same way):
# the breaker stops sending them. A malformed answer is the model's, for one message only.
_CONFIG_REJECTIONS = {"model_not_found", "not_found", "auth_error", "bad_request"}


def fallback_reason(error: Exception) -> str:
    reason = getattr(error, "reason", "")
    if reason in {"timeout", "rate_limited", "server_error", "connection_error"}:
        return str(reason)
    if reason in _CONFIG_REJECTIONS:
        return "model_error"
    if reason in {"bad_response", "tool_rounds"}:
        return str(reason)
    return "model_error"


class FallbackBrain:
    def __init__(
        self,
        agent: GroqBrain | None,
        menu: SchedulingMenuBrain,
        breaker: CircuitBreaker,
    ) -> None:
        self.agent = agent
        self.menu = menu
        self.breaker = breaker

    async def decide(self, turn: Turn) -> Decision:
        if self.agent is None:
            LLM_FALLBACKS.labels("no_api_key").inc()
            return await self.menu.decide(turn)
        if self.menu.owns(turn):
            return await self.menu.decide(turn)
        if not self.breaker.allow():
            LLM_FALLBACKS.labels("breaker_open").inc()
            return await self.menu.resume(turn)
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
        return decision

    def _count_failure(self, failed: AgentTurnFailed) -> None:
        error = failed.error
        if isinstance(error, LLMUnavailable):
            hold = error.retry_after if error.reason == "rate_limited" else None
            self.breaker.failure(hold_seconds=hold)
        elif isinstance(error, LLMRejected) and error.reason in _CONFIG_REJECTIONS:
            self.breaker.failure()
        else:
            self.breaker.release()
