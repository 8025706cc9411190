"""WAHA's webhook retry policies, as its WebhookSender builds them on top of axios-retry.

- Every failure is retried (`retryCondition: () => true`): non-2xx answers, 4xx included,
  and network errors.
- `attempts` is axios-retry's `retries`: how many times a failed request is sent *again*
  (default 15, so up to 16 requests), each after `delay(n)` where n = 1, 2, … is the retry
  number (axios-retry increments its counter before asking for the delay).
- constant: max(delay, Retry-After); linear: n × delay; exponential: max(2ⁿ × delay,
  Retry-After) plus 0–20 % random jitter. A delay of 0 means no wait (but Retry-After).
- Retries reuse the request's headers, so `X-Webhook-Request-Id` and `X-Webhook-Timestamp`
  are the same on every retry of one delivery.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from shared.retry_after import parse_retry_after
from wsm.waha_sim.config import RETRY_POLICIES


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    policy: str = "constant"
    delay_seconds: float = 2.0
    attempts: int = 15

    def __post_init__(self) -> None:
        if self.policy not in RETRY_POLICIES:
            raise ValueError(f"unknown retry policy {self.policy!r}; one of {RETRY_POLICIES}")
        if self.delay_seconds < 0 or self.attempts < 0:
            raise ValueError("retry delay and attempts must not be negative")

    def delay(self, retry_number: int, retry_after: float = 0.0) -> float:
        """Seconds to wait before retry number `retry_number` (1 for the first retry)."""
        base = self.delay_seconds
        if base == 0:
            return max(0.0, retry_after)
        if self.policy == "linear":
            return retry_number * base
        if self.policy == "exponential":
            wait = max(2**retry_number * base, retry_after)
            return wait + wait * 0.2 * random.random()
        return max(base, retry_after)


def retry_after_seconds(header: str | None, now: float | None = None) -> float:
    """axios-retry's reading of `Retry-After`: seconds, or an HTTP date; 0 when absent (or
    unreadable), as axios-retry treats it."""
    return parse_retry_after(header, now=now) or 0.0
