"""The outgoing booking webhook: every booked / rescheduled / cancelled appointment is POSTed
to WSM_BOOKING_WEBHOOK_URL, signed, at least once, with retries.

Durable: the event is queued in Redis by the same script that changes the booking
(engine/agent/bookings.py), so a booking and its event exist together or not at all. Any
worker process delivers due events: `booking_hooks_claim.lua` pushes a claimed event's due
time a visibility window ahead instead of removing it, so an event whose deliverer died is
sent again after that window. Receivers deduplicate on the event id (`X-Wsm-Delivery`, also
the body's `id`).

Why not the engine's outbox: it delivers a conversation's texts through WAHA in that chat's
order, and its entries are committed with the conversation's ack in the conversation's hash
tag. A booking event is born in the calendar's script (another tag, another atomic unit) and
goes to an HTTP endpoint. The outbox would need a destination kind with its own sender and a
queue outside conversations to carry it; this module is that, for one destination.

Retries: network errors, timeouts, 408, 429 and 5xx, with exponential backoff and jitter
(WSM_BOOKING_WEBHOOK_RETRY_BASE_MS .. _MAX_MS; 429's retry-after respected), up to
WSM_BOOKING_WEBHOOK_MAX_ATTEMPTS; any other answer is final: the event goes to the
dead-letter list `{cal}:hooks:dead` with the receiver's answer.

Signature (verify it on the raw body, before parsing):

    X-Wsm-Timestamp: <unix seconds>
    X-Wsm-Signature: sha256=<hex of HMAC-SHA256(secret, "<timestamp>." + raw body)>

The timestamp is signed too, so a captured request cannot be replayed later: receivers
reject timestamps older than a few minutes (see `verify`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import KW_ONLY, InitVar, dataclass, field

import httpx
import orjson

from engine.agent.metrics import WEBHOOK_DELIVERIES
from shared.backoff import backoff_ms
from shared.clock import now_ms
from shared.dead_letters import DEFAULT_DEAD_LETTER_LIMITS, DeadLetterLimits
from shared.keys import CalendarKeys
from shared.lua import LuaScript
from shared.periodic import run_every
from shared.redis_client import RedisClient
from shared.retry_after import retry_after_of
from shared.text import as_text

log = logging.getLogger("wsm.engine.agent.booking_webhook")

CLAIM = LuaScript.named("booking_hooks_claim")
HOOK_DEAD = LuaScript.named("booking_hook_dead")
SIGNATURE_HEADER = "X-Wsm-Signature"
TIMESTAMP_HEADER = "X-Wsm-Timestamp"
MAX_ANSWER_CHARS = 500


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance_seconds: int = 300,
    now: float | None = None,
) -> bool:
    """What a receiver does: the signature matches the raw body and the timestamp is fresh."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, stamp, body), signature)


@dataclass(eq=False)
class BookingWebhook:
    redis: RedisClient
    _: KW_ONLY
    prefix: str
    url: str
    secret: bytes = field(repr=False)
    timeout_seconds: float
    max_attempts: int
    retry_base_ms: int
    retry_max_ms: int
    # How many given-up events are kept, and for how long (the settings' dead-letter limits).
    dead_letters: DeadLetterLimits = DEFAULT_DEAD_LETTER_LIMITS
    http: InitVar[httpx.AsyncClient | None] = None

    def __post_init__(self, http: httpx.AsyncClient | None) -> None:
        self.keys = CalendarKeys(self.prefix)
        # Longer than one delivery can take, so a live deliverer is never raced by another.
        self.visibility_ms = int(self.timeout_seconds * 1000) + 5000
        self._http = http or httpx.AsyncClient(timeout=self.timeout_seconds)
        self._wake = asyncio.Event()

    def kick(self) -> None:
        """Deliver soon (a booking was just made in this process)."""
        self._wake.set()

    async def deliver_due(self, limit: int = 50) -> int:
        """Deliver every due event (up to `limit`); returns how many were delivered."""
        now = now_ms()
        claimed = await CLAIM(self.redis, [self.keys.hooks_due], [now, self.visibility_ms, limit])
        ids = [as_text(raw) for raw in claimed]
        if not ids:
            return 0
        bodies = await self.redis.hmget(self.keys.hooks_body, ids)
        results = await asyncio.gather(
            *(self._deliver(event_id, body) for event_id, body in zip(ids, bodies, strict=True))
        )
        return sum(results)

    async def _deliver(self, event_id: str, raw: bytes | str | None) -> bool:
        if raw is None:  # erased meanwhile (LGPD): nothing to send
            await self.redis.zrem(self.keys.hooks_due, event_id)
            return False
        body = raw if isinstance(raw, bytes) else raw.encode()
        timestamp = int(time.time())
        event = str(orjson.loads(body).get("event", ""))
        headers = {
            "content-type": "application/json",
            "user-agent": "wsm-booking-webhook",
            "x-wsm-event": event,
            "x-wsm-delivery": event_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self.secret, timestamp, body),
        }
        try:
            answer = await self._http.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            await self._retry(event_id, body, f"{type(exc).__name__}: {exc}", None)
            return False
        if answer.is_success:
            pipe = self.redis.pipeline(transaction=True)
            pipe.zrem(self.keys.hooks_due, event_id)
            pipe.hdel(self.keys.hooks_body, event_id)
            pipe.hdel(self.keys.hooks_attempts, event_id)
            await pipe.execute()
            WEBHOOK_DELIVERIES.labels("delivered").inc()
            return True
        error = f"HTTP {answer.status_code}: {answer.text[:MAX_ANSWER_CHARS]}"
        if answer.status_code in (408, 429) or answer.status_code >= 500:
            await self._retry(event_id, body, error, retry_after_of(answer.headers))
        else:
            await self._dead(event_id, body, error, attempts=None)
        return False

    async def _retry(
        self, event_id: str, body: bytes, error: str, retry_after: float | None
    ) -> None:
        attempts = int(await self.redis.hincrby(self.keys.hooks_attempts, event_id, 1))
        if attempts >= self.max_attempts:
            await self._dead(event_id, body, error, attempts=attempts)
            return
        delay = backoff_ms(attempts, self.retry_base_ms, self.retry_max_ms, retry_after)
        await self.redis.zadd(self.keys.hooks_due, {event_id: now_ms() + delay})
        WEBHOOK_DELIVERIES.labels("retry").inc()
        log.info("booking webhook will be retried", extra={"event": event_id, "error": error})

    async def _dead(self, event_id: str, body: bytes, error: str, attempts: int | None) -> None:
        if attempts is None:
            attempts = int(await self.redis.hincrby(self.keys.hooks_attempts, event_id, 1))
        record = orjson.dumps(
            {
                "id": event_id,
                "body": orjson.loads(body),
                "attempts": attempts,
                "error": error,
                "at": now_ms(),
            }
        )
        keys = self.keys
        # Only if the body is still pending: an erase (LGPD) that ran while this delivery was
        # in flight removed it, and the dead letter would bring the customer's data back.
        limits = self.dead_letters
        moved, dropped = await HOOK_DEAD(
            self.redis,
            [
                keys.hooks_body,
                keys.hooks_dead,
                keys.hooks_due,
                keys.hooks_attempts,
                keys.hooks_dead_dropped,
            ],
            [event_id, record, now_ms(), limits.max_entries, limits.max_age_ms],
        )
        if int(dropped):
            log.warning(
                "booking webhook dead letters dropped by the cap or by age",
                extra={"dropped": int(dropped)},
            )
        if not int(moved):
            return
        WEBHOOK_DELIVERIES.labels("dead").inc()
        log.warning("booking webhook dead-lettered", extra={"event": event_id, "error": error})

    async def run(self, stop: asyncio.Event, interval_seconds: float = 1.0) -> None:
        """Deliver due events until `stop`: every interval, and at once after a kick."""

        async def drain() -> None:
            while await self.deliver_due() > 0:
                pass

        await run_every(
            interval_seconds, drain, stop, what="booking webhook pass", logger=log, wake=self._wake
        )

    async def aclose(self) -> None:
        await self._http.aclose()
