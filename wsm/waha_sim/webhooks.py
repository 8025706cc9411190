"""Webhook delivery as WAHA does it.

Each event is serialised once (compact, raw UTF-8) and POSTed to every configured URL with
`X-Webhook-Request-Id` (a ULID), `X-Webhook-Timestamp` (the envelope's ms), and, with a key,
`X-Webhook-Hmac` (lower-case hex HMAC-SHA512 of the body bytes) and
`X-Webhook-Hmac-Algorithm: sha512`. A delivery is retried on any non-2xx answer or network
error following the retry policy (see retry.py); the retries of one delivery repeat its
headers and bytes exactly. Deliveries are independent: one that waits to retry does not hold
up the others, as in WAHA where every event is its own axios request.

Bounds: at most `max_pending` deliveries exist at once (emitting waits for room, so a dead
receiver slows the simulator's API instead of growing memory), and at most
`webhook_concurrency` requests are on the wire; one shared httpx.AsyncClient keeps the
connections alive (over transport.py's lean HTTP/1.1 transport unless told otherwise).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import httpx

from shared.clock import now_ms
from wsm.waha_sim.config import SimConfig
from wsm.waha_sim.faults import Faults
from wsm.waha_sim.ids import request_id
from wsm.waha_sim.payloads import compact, reenvelope
from wsm.waha_sim.retry import RetryPolicy, retry_after_seconds
from wsm.waha_sim.transport import LeanHTTPTransport

log = logging.getLogger("wsm.waha_sim.webhooks")

# Headers axios adds to every WAHA request (message-text.headers.json).
_AXIOS_ACCEPT = "application/json, text/plain, */*"
_AXIOS_ACCEPT_ENCODING = "gzip, compress, deflate, br"


def sign(body: bytes, key: str) -> str:
    return hmac.new(key.encode(), body, hashlib.sha512).hexdigest()


@dataclass(slots=True)
class Attempt:
    at: float
    status: int | None
    error: str | None = None
    # The start of the receiver's answer, for tests and for reading a failure.
    answer: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "status": self.status, "error": self.error, "answer": self.answer}


@dataclass(slots=True)
class Delivery:
    """One event to one URL, with every attempt made for it."""

    event_id: str
    event: str
    url: str
    body: bytes
    request_id: str
    timestamp_ms: int
    # "original", "duplicate" (same envelope again) or "new_envelope" (same payload, new id)
    kind: str
    attempts: list[Attempt] = field(default_factory=list)
    delivered: bool = False
    finished: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event": self.event,
            "url": self.url,
            "request_id": self.request_id,
            "kind": self.kind,
            "delivered": self.delivered,
            "finished": self.finished,
            "attempts": [a.as_dict() for a in self.attempts],
        }


class WebhookDispatcher:
    def __init__(
        self,
        config: SimConfig,
        faults: Faults,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        records: int = 5000,
    ) -> None:
        self.config = config
        self.faults = faults
        self.retry = RetryPolicy(
            config.retries_policy, config.retries_delay, config.retries_attempts
        )
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(config.max_pending)
        self._inflight = asyncio.Semaphore(config.webhook_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: list[list[Delivery]] = []
        self._flush: asyncio.TimerHandle | None = None
        self.records: deque[Delivery] = deque(maxlen=records)
        self.counts: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.by_event: dict[str, Counter[str]] = {}

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        concurrency = self.config.webhook_concurrency
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.config.webhook_timeout),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            headers={
                "accept": _AXIOS_ACCEPT,
                "accept-encoding": _AXIOS_ACCEPT_ENCODING,
                "user-agent": self.config.user_agent,
            },
            # A proxy from the environment must never sit between WAHA and its webhook.
            trust_env=False,
            transport=self._transport or self._default_transport(),
        )

    def _default_transport(self) -> httpx.AsyncBaseTransport | None:
        if self.config.webhook_transport == "httpx":
            return None  # httpx's own (httpcore) transport
        return LeanHTTPTransport(max_idle_per_host=self.config.webhook_concurrency)

    async def aclose(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def reset_stats(self) -> None:
        self.records.clear()
        self.counts.clear()
        self.statuses.clear()
        self.by_event.clear()

    # --- emitting --------------------------------------------------------------------------
    def subscribed(self, event: str) -> bool:
        return bool(self.config.webhook_urls) and self.config.subscribed(event)

    async def emit(self, envelope: dict[str, Any]) -> list[Delivery]:
        """Starts delivering an event to every URL (faults applied); returns its deliveries."""
        event = envelope["event"]
        if not self.subscribed(event):
            return []
        self.counts["events"] += 1
        groups = [self._deliveries(envelope, "original")]
        mode = self.faults.take_duplicate(event)
        if mode in ("same_envelope", "both"):
            groups.append(self._deliveries(envelope, "duplicate", body=groups[0][0].body))
        if mode in ("new_envelope", "both"):
            groups.append(self._deliveries(reenvelope(envelope, now_ms()), "new_envelope"))
        reorder = self.faults.take_reorder(event)
        if reorder is not None:
            self._hold(groups, release_now=reorder.remaining <= 0, after=reorder.hold_seconds)
        else:
            for group in groups:
                for delivery in group:
                    await self._start(delivery)
        return [d for group in groups for d in group]

    def _deliveries(
        self, envelope: dict[str, Any], kind: str, body: bytes | None = None
    ) -> list[Delivery]:
        body = compact(envelope) if body is None else body
        deliveries = []
        for url in self.config.webhook_urls:
            delivery = Delivery(
                event_id=envelope["id"],
                event=envelope["event"],
                url=url,
                body=body,
                request_id=request_id(envelope["timestamp"]),
                timestamp_ms=envelope["timestamp"],
                kind=kind,
            )
            self.records.append(delivery)
            deliveries.append(delivery)
        return deliveries

    # --- out of order ----------------------------------------------------------------------
    def _hold(self, groups: list[list[Delivery]], *, release_now: bool, after: float) -> None:
        self._held.extend(groups)
        if release_now:
            self._release()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(after, self._release)

    def _release(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        batch, self._held = self._held, []
        # Newest first, one after the other, so the receiver sees them in exactly that order.
        self._spawn(self._deliver_in_turn(list(reversed(batch))))

    async def _deliver_in_turn(self, groups: list[list[Delivery]]) -> None:
        for group in groups:
            for delivery in group:
                await self._start(delivery)
                await delivery.done.wait()

    # --- delivering ------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, delivery: Delivery) -> None:
        await self._slots.acquire()
        self.counts["deliveries"] += 1
        self.counts["pending"] += 1
        self._spawn(self._run(delivery))

    async def _run(self, delivery: Delivery) -> None:
        try:
            await self._deliver(delivery)
        finally:
            delivery.finished = True
            delivery.done.set()
            self.counts["pending"] -= 1
            self._slots.release()

    async def _deliver(self, delivery: Delivery) -> None:
        per_event = self.by_event.setdefault(delivery.event, Counter())
        for retry_number in range(self.retry.attempts + 1):
            if retry_number:
                self.counts["retries"] += 1
            attempt, retry_after = await self._attempt(delivery)
            delivery.attempts.append(attempt)
            self.counts["attempts"] += 1
            per_event["attempts"] += 1
            self.statuses[str(attempt.status) if attempt.status else "error"] += 1
            if attempt.status is not None and 200 <= attempt.status < 300:
                delivery.delivered = True
                self.counts["delivered"] += 1
                per_event["delivered"] += 1
                return
            self.counts["failed_attempts"] += 1
            if retry_number == self.retry.attempts:
                break
            await asyncio.sleep(self.retry.delay(retry_number + 1, retry_after))
        self.counts["gave_up"] += 1
        per_event["gave_up"] += 1
        log.warning(
            "webhook given up",
            extra={
                "event_id": delivery.event_id,
                "url": delivery.url,
                "attempts": len(delivery.attempts),
            },
        )

    async def _attempt(self, delivery: Delivery) -> tuple[Attempt, float]:
        client = self._client
        if client is None:
            raise RuntimeError("WebhookDispatcher.start() was not awaited")
        headers = {
            "content-type": "application/json",
            "X-Webhook-Request-Id": delivery.request_id,
            "X-Webhook-Timestamp": str(delivery.timestamp_ms),
        }
        if self.config.hmac_key:
            headers["X-Webhook-Hmac"] = sign(delivery.body, self.config.hmac_key)
            headers["X-Webhook-Hmac-Algorithm"] = "sha512"
        async with self._inflight:
            self.counts["in_flight"] += 1
            at = time.time()
            try:
                response = await client.post(delivery.url, content=delivery.body, headers=headers)
            except httpx.HTTPError as exc:
                return Attempt(at, None, f"{type(exc).__name__}: {exc}"), 0.0
            finally:
                self.counts["in_flight"] -= 1
        answer = response.content[:200].decode(errors="replace")
        return (
            Attempt(at, response.status_code, answer=answer),
            retry_after_seconds(response.headers.get("retry-after")),
        )

    # --- the control API's view ------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "events": self.counts["events"],
            "deliveries": self.counts["deliveries"],
            "attempts": self.counts["attempts"],
            "retries": self.counts["retries"],
            "delivered": self.counts["delivered"],
            "failed_attempts": self.counts["failed_attempts"],
            "gave_up": self.counts["gave_up"],
            "in_flight": self.counts["in_flight"],
            "pending": self.counts["pending"],
            "held": sum(len(g) for g in self._held),
            "statuses": dict(self.statuses),
            "by_event": {event: dict(c) for event, c in self.by_event.items()},
            "retry_policy": {
                "policy": self.retry.policy,
                "delaySeconds": self.retry.delay_seconds,
                "attempts": self.retry.attempts,
            },
        }
