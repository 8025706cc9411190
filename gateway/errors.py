"""How a webhook can fail, as exception types. Only `webhook.py` turns them into status codes.

GatewayError
├── RejectedWebhook        terminal: the request itself is wrong; 4xx, nothing stored
│   ├── BodyTooLarge       413
│   ├── SignatureRejected  401
│   └── InvalidBody        400 (not JSON, or not a WAHA event)
└── RetryableFailure       the request is fine, a dependency is not
    ├── RedisUnavailable   Redis refused, failed, or missed the deadline -> spool the event
    └── SpoolUnavailable   the spool cannot take the event either -> 503 + Retry-After
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every failure the gateway reports."""


class RejectedWebhook(GatewayError):
    """Terminal: retrying the same request can never succeed. Nothing was stored."""

    status = 400
    outcome = "invalid"


class BodyTooLarge(RejectedWebhook):
    status = 413
    outcome = "too_large"


class SignatureRejected(RejectedWebhook):
    status = 401
    outcome = "unauthorized"


class InvalidBody(RejectedWebhook):
    """Not JSON, or not a WAHA event: the base's 400 `invalid`."""


class RetryableFailure(GatewayError):
    """The event is acceptable; something it depends on is not available right now."""


class RedisUnavailable(RetryableFailure):
    """Redis did not confirm the enqueue within the deadline (it may still have run it)."""


class SpoolUnavailable(RetryableFailure):
    """The local spool could not make the event durable (unwritable, full, or too slow)."""
