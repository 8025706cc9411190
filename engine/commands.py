"""Commands to a conversation, queued in its own per-conversation FIFO.

Whatever changes a conversation's state goes through the conversation's queue, so it is
handled by the conversation's engine (engine/turn/commands.py), in order with the customer's
messages, under the lease, and committed exactly once with the rest: an agent's reply, a close,
a handback (operator API), an assignment by the waiting line, a "your place improved" check, an
inactivity timeout.

A command is queued like a WAHA event (same record, same dedupe) under an event name WAHA never
uses (`wsm.*`); the gateway only queues WAHA's own events, so a webhook cannot forge one. Its
event id is chosen by the caller so that repeating a step (after a crash) queues it once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from shared.clock import now_ms
from shared.enqueue import EnqueueRequest, enqueue
from shared.events import RoutedEvent
from shared.redis_client import RedisClient

PREFIX = "wsm."
AGENT_MESSAGE = "wsm.agent_message"
CLOSE = "wsm.close"
HANDBACK = "wsm.handback"
ASSIGNED = "wsm.assigned"
LINE = "wsm.line"
TIMEOUT = "wsm.timeout"
# An agent sends a file (operator API, console: api/media_send.py; engine/turn/media_send.py).
AGENT_MEDIA = "wsm.agent_media"
# A booking's reminder is due (engine/agent/reminders.py, engine/turn/reminder.py).
REMINDER = "wsm.reminder"
# A cancelled slot of today is offered to a customer in line (engine/agent/freed_slots.py,
# engine/turn/freed_slot.py).
FREED_SLOT = "wsm.freed_slot"
ALL = frozenset(
    {AGENT_MESSAGE, CLOSE, HANDBACK, ASSIGNED, LINE, TIMEOUT, AGENT_MEDIA, REMINDER, FREED_SLOT}
)


@dataclass(frozen=True, slots=True)
class CommandQueue:
    redis: RedisClient
    prefix: str
    shards: int
    dedupe_ttl_seconds: int

    async def send(
        self, session: str, chat_id: str, name: str, payload: dict[str, Any], event_id: str
    ) -> bool:
        """Queue a command; False when a command with this event id was queued already."""
        if name not in ALL:
            raise ValueError(f"unknown command {name!r}")
        # The dedupe marker is named after the event id: hash it, so no key names the customer
        # (an erase must leave nothing that does), while a repeat still maps to the same id.
        event_id = "cmd_" + hashlib.sha256(event_id.encode()).hexdigest()[:32]
        now = now_ms()
        body = orjson.dumps(
            {"id": event_id, "timestamp": now, "event": name, "session": session,
             "payload": {"chat": chat_id, **payload}}
        )  # fmt: skip
        routed = RoutedEvent(
            event=name, session=session, chat_id=chat_id, event_id=event_id, message_key=None
        )
        request = EnqueueRequest.for_event(
            routed,
            body,
            received_at_ms=now,
            shards=self.shards,
            dedupe_ttl_seconds=self.dedupe_ttl_seconds,
            prefix=self.prefix,
        )
        return await enqueue(self.redis, request)
