"""The AI agent's metrics, counted in the worker processes (prometheus multiprocess mode).

- `wsm_llm_requests_total{result}`: every HTTP request to the model, by outcome: ok, timeout,
  connection_error, rate_limited, server_error, request_too_large, model_not_found, not_found,
  bad_request, tool_use_failed, auth_error, bad_response.
- `wsm_llm_duration_seconds`: time of each request (failures included).
- `wsm_llm_tokens_total{kind}`: prompt and completion tokens from the response's `usage`.
- `wsm_llm_fallbacks_total{reason}`: customer messages answered by the menu instead of the
  model: no_api_key, breaker_open, timeout, rate_limited, server_error, connection_error,
  model_error, bad_response, tool_rounds, request_too_large (413: that message only), and the
  conversation's own limits: turn_limit (agent turns per minute), token_limit (tokens per day),
  and unheard_audio (a voice note or audio without a transcript: the menu's audio answer).
- `wsm_agent_burst_deferred_total`: customer messages not answered on their own because more
  of the same customer's messages were already queued behind them (one answer per burst).
- `wsm_agent_tool_calls_total{tool,result}`: tools the model called, by result (ok,
  confirmation_required, invalid_arguments, unknown_tool, unknown_service, unknown_team,
  invalid_slot, slot_taken, already_booked, booking_limit, not_found, changed, no_documents):
  fixed codes, never the model's words (its unknown tool is `tool="unknown"`).
- `wsm_llm_ratelimit_remaining{kind}`: Groq's `x-ratelimit-remaining-requests` / `-tokens`
  from the latest response (any process: the most recent value wins).
- `wsm_booking_webhook_deliveries_total{result}`: booking webhook deliveries (delivered,
  retry, dead).
- `wsm_reminders_total{event}`: bookings' reminders (engine/agent/reminders.py): `due`
  (queued to its conversation), `sent` (committed to its outbox), and how each was answered:
  `confirmed`, `rescheduled`, `cancelled`, or `unanswered` (the booking started first).
- `wsm_freed_slot_offers_total{event}`: cancelled slots of today offered to the waiting line
  (engine/agent/freed_slots.py): `queued` (an offer queued to a waiting customer's
  conversation), `sent` (committed to its outbox), `taken` (the customer booked it), `lost`
  (they answered after someone else took it, or it could no longer be booked).
- `wsm_transcriptions_total{result,reason}`: customers' voice notes and audio sent to Groq's
  speech-to-text (engine/media/transcribe.py), by result: `ok`; `failed` with the request's
  reason (timeout, connection_error, rate_limited, server_error, model_not_found, not_found,
  auth_error, bad_request, request_too_large, bad_response, error; turn_deadline: cut when the
  customer's turn had no time left, engine/media/ingest.py); `skipped` with why no request was
  made (too_large: over Groq's 25 MB upload limit, empty, breaker_open, turn_limit,
  turn_deadline). An `ok` whose text is empty (silence) has reason `empty`.
- `wsm_transcription_duration_seconds`: time of each transcription request (failures
  included).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LLM_REQUESTS = Counter(
    "wsm_llm_requests_total", "Requests to the LLM, by result.", ["result"]
)  # fmt: skip
# The label values of the counters an alert or a panel rates (requests, tokens, fallbacks,
# reminders) are exported from the start, at 0, as wsm_outbox_sends_total's are
# (engine/metrics.py): a series that first appears at 1 is an increase of 0 to Prometheus, so
# WsmLlmFallbackRateHigh and the panels would miss a worker's first fallback (found by an audit).
LLM_RESULTS = (
    "ok", "timeout", "connection_error", "rate_limited", "server_error", "request_too_large",
    "model_not_found", "not_found", "auth_error", "bad_request", "tool_use_failed",
    "bad_response",
)  # fmt: skip
for _result in LLM_RESULTS:
    LLM_REQUESTS.labels(_result)
LLM_DURATION = Histogram(
    "wsm_llm_duration_seconds",
    "Duration of one LLM request (failed ones included).",
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 12, 20, 30, 60),
)
LLM_TOKENS = Counter("wsm_llm_tokens_total", "Tokens used by the LLM, by kind.", ["kind"])
for _kind in ("prompt", "completion"):
    LLM_TOKENS.labels(_kind)
LLM_FALLBACKS = Counter(
    "wsm_llm_fallbacks_total",
    "Customer messages answered by the menu brain instead of the LLM, by reason.",
    ["reason"],
)
FALLBACK_REASONS = (
    "no_api_key", "breaker_open", "timeout", "rate_limited", "server_error", "connection_error",
    "model_error", "bad_response", "tool_rounds", "request_too_large", "turn_limit",
    "token_limit", "unheard_audio",
)  # fmt: skip
for _reason in FALLBACK_REASONS:
    LLM_FALLBACKS.labels(_reason)
BURST_DEFERRED = Counter(
    "wsm_agent_burst_deferred_total",
    "Customer messages answered together with the ones queued right behind them.",
)
TOOL_CALLS = Counter(
    "wsm_agent_tool_calls_total",
    "Tools called by the model, by tool and result.",
    ["tool", "result"],
)
RATELIMIT_REMAINING = Gauge(
    "wsm_llm_ratelimit_remaining",
    "Groq's remaining rate limit (x-ratelimit-remaining-*) at its latest answer.",
    ["kind"],
    multiprocess_mode="mostrecent",
)
WEBHOOK_DELIVERIES = Counter(
    "wsm_booking_webhook_deliveries_total",
    "Booking webhook deliveries, by result (delivered, retry, dead).",
    ["result"],
)
# Exported at 0 from the start, as the reminders below: WsmBookingWebhooksGivenUp would miss a
# worker's first given-up delivery, a series that first appears at 1 being no increase.
for _result in ("delivered", "retry", "dead"):
    WEBHOOK_DELIVERIES.labels(_result)
TRANSCRIPTIONS = Counter(
    "wsm_transcriptions_total",
    "Voice notes and audio transcribed, by result (ok, failed, skipped) and reason.",
    ["result", "reason"],
)
# Its (result, reason) pairs at 0 from the start, for the same reason: the "Voice note
# transcriptions" panel would miss a worker's first failure of each kind. The `failed` reasons
# are the request's (the chat model's, llm.py, less tool_use_failed, which only a chat answer
# gives) plus a local `error` and the turn's deadline (engine/media/ingest.py).
TRANSCRIPTION_OUTCOMES = (
    ("ok", ""),
    ("ok", "empty"),
    *(
        ("skipped", r)
        for r in ("too_large", "empty", "breaker_open", "turn_limit", "turn_deadline")
    ),
    *(("failed", r) for r in LLM_RESULTS if r not in ("ok", "tool_use_failed")),
    ("failed", "error"),
    ("failed", "turn_deadline"),
)
for _result, _reason in TRANSCRIPTION_OUTCOMES:
    TRANSCRIPTIONS.labels(_result, _reason)
TRANSCRIPTION_DURATION = Histogram(
    "wsm_transcription_duration_seconds",
    "Duration of one transcription request (failed ones included).",
    buckets=(0.25, 0.5, 1, 2, 3, 5, 8, 12, 20, 30, 60),
)
REMINDERS = Counter(
    "wsm_reminders_total",
    "Booking reminders, by event (due, sent, confirmed, rescheduled, cancelled, unanswered).",
    ["event"],
)
for _event in ("due", "sent", "confirmed", "rescheduled", "cancelled", "unanswered"):
    REMINDERS.labels(_event)
FREED_SLOTS = Counter(
    "wsm_freed_slot_offers_total",
    "Cancelled slots offered to the waiting line, by event (queued, sent, taken, lost).",
    ["event"],
)
for _event in ("queued", "sent", "taken", "lost"):
    FREED_SLOTS.labels(_event)
