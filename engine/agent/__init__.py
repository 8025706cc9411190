"""The AI agent: a Groq brain that books appointments with tools, behind the engine's brain
seam (engine/brain.py), falling back to a deterministic scheduling menu.

    service.py          wiring for a worker process; `create` is a fleet handler factory
    fallback.py         the brain the engine runs: agent when it can, menu when it cannot
    groq_brain.py       the agent: context, tool-calling loop, Decision
    llm.py              one chat completion against Groq, failures sorted, metrics
    breaker.py          circuit breaker in front of the model
    context.py          system prompt, state summary, history within a token budget
    tools.py            the tools the model may call (validated, for this customer only)
    knowledge.py        the business's documents: passages, BM25 ranking, kept fresh
    limits.py           turns per minute and tokens per day per conversation
    confirmation.py     changes wait for the customer's yes (enforced in code)
    agenda.py           the calendar's rules for both brains
    menu.py             the scheduling menu (numbered options to the same actions)
    bookings.py         atomic bookings in Redis (shared/scripts/booking_*.lua)
    reminders.py        each booking's reminder, queued once when due (the step: turn/reminder.py)
    booking_webhook.py  signed, retried webhook of booking changes
    calendar.py         services, hours, slots, holidays (WSM_CALENDAR_FILE)
    texts.py            the agent's texts (pt-BR, en; overridable in the calendar file)
    metrics.py          wsm_llm_*, wsm_agent_tool_calls_total, wsm_booking_webhook_*

See docs/agent.md.
"""
