"""`POST /webhook` as a raw ASGI callable: the one path that must be fast.

FastAPI's per-request machinery (middleware stack, router, request object, dependency
resolution, response class) costs more than everything below together; the gateway app hands
this path straight to `WebhookEndpoint` and FastAPI serves the rest.

Statuses (WAHA retries any non-2xx, 4xx included, about 30 s by default, then drops the event):
    200 queued | duplicate | ignored | spooled   the event is durable, or deliberately unused
                 (`queued` also for an ack or echo settled on its message: shared/enqueue.py)
    200 stale    signed, but its `timestamp` is outside the replay window (nothing stored)
    400 not JSON, not an object with `event`, or a used event without `session` or without a
        `payload` object naming its chat (shared.events.route_event)
    401 bad or missing signature                  405 not POST
    413 body over WSM_MAX_BODY_BYTES
    503 neither Redis nor the spool could take it (Retry-After)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from starlette.types import Message, Receive, Scope, Send

from gateway import metrics
from gateway.errors import (
    BodyTooLarge,
    InvalidBody,
    RejectedWebhook,
    SpoolUnavailable,
)
from gateway.intake import Intake
from gateway.signature import verify_signature
from shared.clock import now_ms
from shared.enqueue import EnqueueRequest
from shared.events import InvalidEvent, load_body, route_event
from shared.settings import WEBHOOK_MAX_AHEAD_SECONDS

log = logging.getLogger("wsm.gateway.webhook")

# WAHA retries a 503 on its own schedule; this tells any other client when to.
RETRY_AFTER_SECONDS = b"2"


class ClientDisconnected(Exception):
    """The client went away before its body arrived (nothing stored, nobody to answer)."""


def _answer(
    status: int, document: dict[str, str], extra: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[Message, Message]:
    body = orjson.dumps(document)
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ],
    }
    return start, {"type": "http.response.body", "body": body}


# Built once: every answer of the hot path is a pair of prebuilt messages.
ANSWERS = {
    "queued": _answer(200, {"status": "queued"}),
    "duplicate": _answer(200, {"status": "duplicate"}),
    "ignored": _answer(200, {"status": "ignored"}),
    "spooled": _answer(200, {"status": "spooled"}),
    # 200, not 4xx: WAHA would retry a 4xx, and a stale event never becomes fresh.
    "stale": _answer(200, {"status": "stale"}),
    "unauthorized": _answer(401, {"status": "unauthorized"}),
    "invalid": _answer(400, {"status": "invalid"}),
    "too_large": _answer(413, {"status": "too_large"}),
    "unavailable": _answer(503, {"status": "unavailable"}, [(b"retry-after", RETRY_AFTER_SECONDS)]),
    "method": _answer(405, {"status": "method_not_allowed"}, [(b"allow", b"POST")]),
}


@dataclass(eq=False, kw_only=True)
class WebhookEndpoint:
    intake: Intake
    # Empty only when WSM_ALLOW_UNSIGNED=1 (development): then nothing is verified. Secret:
    # kept out of the repr.
    hmac_keys: Sequence[bytes] = field(repr=False)
    max_body_bytes: int
    shards: int
    dedupe_ttl_seconds: int
    key_prefix: str
    # The replay window: a signed body whose top-level `timestamp` (ms) is older than this
    # (WSM_WEBHOOK_MAX_AGE_SECONDS), or further ahead than WEBHOOK_MAX_AHEAD_SECONDS, is
    # answered `stale`. Without it a body captured once is accepted again as soon as its dedupe
    # marker expires (and the settings refuse a dedupe window shorter than this one).
    max_age_seconds: float

    def __post_init__(self) -> None:
        self.hmac_keys = tuple(self.hmac_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        if scope["method"] != "POST":
            await _send(send, ANSWERS["method"])
            return
        try:
            outcome = await self._handle(scope, receive)
        except RejectedWebhook as exc:
            outcome = exc.outcome
            log.info(
                "webhook rejected",
                extra={"status": exc.status, "reason": str(exc), "request_id": _request_id(scope)},
            )
        except SpoolUnavailable as exc:
            outcome = "unavailable"
            # Not "not stored": a round trip cut off at its deadline may still have run in
            # Redis, and WAHA's retry is then answered `duplicate`.
            log.error(
                "webhook answered 503: Redis did not confirm it and the spool could not take it",
                extra={"reason": str(exc), "request_id": _request_id(scope)},
            )
        except ClientDisconnected:
            return
        # Counted before answering: whoever saw the answer also sees it counted.
        metrics.OUTCOME_COUNTERS[outcome].inc()
        metrics.WEBHOOK_DURATION.observe(time.perf_counter() - started)
        await _send(send, ANSWERS[outcome])

    async def _handle(self, scope: Scope, receive: Receive) -> str:
        signature = algorithm = length = None
        for name, value in scope["headers"]:
            if name == b"x-webhook-hmac":
                signature = value
            elif name == b"x-webhook-hmac-algorithm":
                algorithm = value
            elif name == b"content-length":
                length = value
        if length is not None:
            if not length.isdigit():
                raise InvalidBody("bad content-length")
            if int(length) > self.max_body_bytes:
                # Refused before reading a byte of it.
                raise BodyTooLarge("content-length over the cap")
        body = await self._read_body(receive)
        if self.hmac_keys:
            verify_signature(body, signature, algorithm, self.hmac_keys)
        try:
            document = load_body(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidBody("body is not JSON") from exc
        # What is not an event is refused as such (400) before its age is looked at: a signed
        # `{"timestamp": 1}` is malformed, not stale.
        try:
            routed = route_event(document, body)
        except InvalidEvent as exc:
            raise InvalidBody(str(exc)) from exc
        received_at_ms = now_ms()
        if self._outside_window(document, received_at_ms):
            log.info(
                "webhook outside the replay window",
                extra={"request_id": _request_id(scope), "timestamp": document.get("timestamp")},
            )
            return "stale"
        if routed is None:
            return "ignored"
        request = EnqueueRequest.for_event(
            routed,
            body,
            received_at_ms=received_at_ms,
            shards=self.shards,
            dedupe_ttl_seconds=self.dedupe_ttl_seconds,
            prefix=self.key_prefix,
        )
        outcome = await self.intake.accept(request, body, received_at_ms)
        if outcome == "spooled":
            log.info("webhook spooled", extra={"event_id": routed.event_id, "event": routed.event})
        elif log.isEnabledFor(logging.DEBUG):
            log.debug(
                "webhook " + outcome, extra={"event_id": routed.event_id, "event": routed.event}
            )
        return outcome

    def _outside_window(self, document: object, now_ms: int) -> bool:
        """Is the event's own `timestamp` (ms, set by WAHA and covered by the signature) too
        old or too far ahead? An event without one is let through: WAHA always sends it, and
        what is not there cannot be judged (the dedupe and the engine's own check remain).
        Only at the door: events replayed from the spool were accepted already."""
        if not isinstance(document, dict):
            return False
        stamp = document.get("timestamp")
        if not isinstance(stamp, int | float) or isinstance(stamp, bool):
            return False
        max_age_ms = self.max_age_seconds * 1000
        return stamp < now_ms - max_age_ms or stamp > now_ms + WEBHOOK_MAX_AHEAD_SECONDS * 1000

    async def _read_body(self, receive: Receive) -> bytes:
        """The raw body, refused with 413 as soon as it passes the cap (chunked bodies carry
        no Content-Length, so the cap is enforced while reading too)."""
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > self.max_body_bytes:
                raise BodyTooLarge("body over the cap")
            return body
        chunks = [body]
        size = len(body)
        while True:
            if size > self.max_body_bytes:
                raise BodyTooLarge("body over the cap")
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                break
        if size > self.max_body_bytes:
            raise BodyTooLarge("body over the cap")
        return b"".join(chunks)


async def _send(send: Send, answer: tuple[Message, Message]) -> None:
    await send(answer[0])
    await send(answer[1])


def _request_id(scope: Scope) -> str | None:
    # WAHA's X-Webhook-Request-Id identifies a delivery in WAHA's own logs.
    for name, value in scope["headers"]:
        if name == b"x-webhook-request-id":
            return str(value.decode("latin-1"))
    return None
