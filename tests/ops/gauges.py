"""The gauges every replica reads from the same Redis state (the dashboard and the alerts must
never sum them: a sum would show N times the truth after `--scale worker=N`)."""

from __future__ import annotations

import re

REDIS_STATE_GAUGES = (
    "wsm_queue_messages",
    "wsm_queue_chats_ready",
    "wsm_queue_oldest_age_seconds",
    "wsm_dlq_messages",
    "wsm_outbox_dlq_messages",
    "wsm_redis_memory_used_bytes",
    "wsm_redis_memory_max_bytes",
    "wsm_outbox_pending",
    "wsm_waiting_line_length",
    "wsm_conversations",
    "wsm_waha_session_up",
)


def summed(gauge: str) -> re.Pattern[str]:
    """`sum(gauge…)`, with or without `by`/`without`, in a PromQL expression."""
    return re.compile(rf"sum(?:\s+(?:by|without)\s*\([^)]*\))?\s*\(\s*{gauge}\b")
