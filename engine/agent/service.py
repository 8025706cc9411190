"""Wiring the AI agent, and the fleet's handler factory.

`build_agent(redis, settings)` makes the process's agent: one AsyncGroq client (when
GROQ_API_KEY is set), the calendar, the bookings, the circuit breaker, the scheduling menu and
the fallback brain that joins them, and the booking webhook's deliverer (when
WSM_BOOKING_WEBHOOK_URL is set). The parts the engine and the operator API share (calendar,
bookings, texts) come from engine/parts.py.

`create(setup)` is the fleet's one handler factory (WSM_WORKER_HANDLER, default
`engine.agent.service:create`): the engine's EngineService with the agent as its brain and the
webhook deliverer as one of its background passes. Without GROQ_API_KEY the same handler runs
the scheduling menu alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import groq

from engine.agent.agenda import Agenda
from engine.agent.booking_webhook import BookingWebhook
from engine.agent.bookings import BookingStore
from engine.agent.breaker import CircuitBreaker
from engine.agent.fallback import FallbackBrain
from engine.agent.groq_brain import AgentConfig, GroqBrain
from engine.agent.knowledge import KnowledgeBase
from engine.agent.limits import ConversationLimits
from engine.agent.llm import ChatModel, make_client
from engine.agent.menu import SchedulingMenuBrain
from engine.agent.texts import load_agent_texts
from engine.brain import Brain
from engine.businesses import Business, Businesses, SessionBrain, businesses_from
from engine.parts import booking_store, calendar_from, conversation_limits, knowledge_bases, texts
from engine.service import EngineService
from engine.waha_client import Outbound
from shared.dead_letters import DeadLetterLimits
from shared.redis_client import RedisClient
from shared.settings import Settings

log = logging.getLogger(__name__)


def agent_config(settings: Settings) -> AgentConfig:
    return AgentConfig(
        language=settings.language,
        max_tool_rounds=settings.llm_max_tool_rounds,
        history_token_budget=settings.llm_history_token_budget,
        reply_max_chars=settings.agent_reply_max_chars,
        turn_deadline_seconds=settings.llm_turn_deadline_seconds,
        inbound_max_chars=settings.agent_inbound_max_chars,
    )


@dataclass
class AgentParts:
    brain: Brain  # FallbackBrain; a SessionBrain over them with several businesses
    store: BookingStore  # the default business's (`stores`: every business's, by id)
    agenda: Agenda
    breaker: CircuitBreaker
    limits: ConversationLimits | None = None
    client: groq.AsyncGroq | None = None
    webhook: BookingWebhook | None = None
    businesses: Businesses | None = None
    stores: dict[str, BookingStore] | None = None
    knowledge: dict[str, KnowledgeBase] | None = None  # business id -> its documents

    async def aclose(self) -> None:
        if self.webhook is not None:
            await self.webhook.aclose()
        if self.client is not None:
            await self.client.close()


def build_agent(
    redis: RedisClient,
    settings: Settings,
    *,
    groq_http_client: Any = None,
    webhook_http_client: Any = None,
    clock: Callable[[], datetime] | None = None,
) -> AgentParts:
    calendar = calendar_from(settings)
    webhook: BookingWebhook | None = None
    if settings.booking_webhook_url:
        secret = settings.booking_webhook_secret
        if secret is None or not secret.get_secret_value():
            # Settings refuse this already; an unsigned event must never leave, whatever
            # built the settings.
            raise ValueError("WSM_BOOKING_WEBHOOK_URL is set without WSM_BOOKING_WEBHOOK_SECRET")
        webhook = BookingWebhook(
            redis,
            prefix=settings.key_prefix,
            url=settings.booking_webhook_url,
            secret=secret.get_secret_value().encode(),
            timeout_seconds=settings.booking_webhook_timeout_seconds,
            max_attempts=settings.booking_webhook_max_attempts,
            retry_base_ms=settings.booking_webhook_retry_base_ms,
            retry_max_ms=settings.booking_webhook_retry_max_ms,
            dead_letters=DeadLetterLimits.from_settings(settings),
            http=webhook_http_client,
        )
    businesses = businesses_from(settings, default=calendar)
    breaker = CircuitBreaker(
        failures_to_open=settings.llm_breaker_failures,
        reset_seconds=settings.llm_breaker_reset_seconds,
    )
    client: groq.AsyncGroq | None = None
    model: ChatModel | None = None
    limits = conversation_limits(redis, settings)
    if settings.groq_api_key is not None and settings.groq_api_key.get_secret_value():
        client = make_client(
            api_key=settings.groq_api_key.get_secret_value(),
            base_url=settings.groq_base_url,
            timeout_seconds=settings.llm_timeout_seconds,
            http_client=groq_http_client,
        )
        model = ChatModel(
            client,
            model=settings.groq_model,
            max_retries=settings.llm_max_retries,
            max_completion_tokens=settings.llm_max_completion_tokens,
        )

    def business_parts(business: Business) -> tuple[BookingStore, Agenda, FallbackBrain]:
        """One business's bookings, agenda and brain; the model, breaker, limits and webhook
        are the process's, shared by every business."""
        store = booking_store(
            redis,
            settings,
            calendar=business.calendar,
            webhook_enabled=webhook is not None,
            on_event=webhook.kick if webhook is not None else None,
            business=business.id,
        )
        agenda = Agenda(store, business.calendar, language=settings.language, clock=clock)
        agent_texts = load_agent_texts(settings.language, business.calendar.texts)
        menu = SchedulingMenuBrain(
            texts(settings).with_business(business.calendar.texts),
            agent_texts,
            agenda,
            business=business.calendar.business_name,
            services=[s.name for s in business.calendar.services],
        )
        agent: GroqBrain | None = None
        if model is not None and business.calendar.agent_enabled:
            agent = GroqBrain(
                model,
                agenda,
                agent_config(settings),
                on_tokens=limits.add_tokens,
                knowledge=knowledge.get(business.id),
                texts=agent_texts,
            )
        return store, agenda, FallbackBrain(agent, menu, breaker, limits)

    # Each business's documents, indexed now (only the agent reads them).
    knowledge = knowledge_bases(settings, businesses) if model is not None else {}
    built = {business.id: business_parts(business) for business in businesses.all()}
    store, agenda, brain = built[businesses.default.id]
    return AgentParts(
        brain=(
            SessionBrain(brain, {k: v[2] for k, v in built.items()}, businesses)
            if len(built) > 1
            else brain
        ),
        store=store,
        agenda=agenda,
        breaker=breaker,
        limits=limits,
        client=client,
        webhook=webhook,
        businesses=businesses,
        stores={k: v[0] for k, v in built.items()},
        knowledge=knowledge,
    )


def build_service(
    redis: RedisClient,
    settings: Settings,
    *,
    outbound: Outbound | None = None,
    agent: AgentParts | None = None,
) -> EngineService:
    """The engine with the agent as its brain (`agent`: built from `settings` when not given)
    and the booking webhook's deliverer among its background passes."""
    agent = agent or build_agent(redis, settings)
    background = [agent.webhook.run] if agent.webhook is not None else []
    return EngineService(
        redis,
        settings,
        outbound=outbound,
        brain=agent.brain,
        background=background,
        closing=[agent.aclose],
    )


def create(setup: Any) -> EngineService:
    """The fleet's handler factory: `WSM_WORKER_HANDLER=engine.agent.service:create`, called
    once per worker process with its HandlerSetup (worker/handler.py).

    The fleet calls it inside the worker process's running loop, so the background passes
    start here: a process started after a crash must deliver what the crashed one left in the
    outboxes (and the webhook events) even if no new message ever reaches it."""
    service = build_service(setup.redis, setup.settings)
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # called outside a loop (a script): they start with the first message
        return service
    service.start()
    return service
