"""One backoff formula for every retry the product makes in-process or schedules in Redis.

Exponential, capped, with "equal jitter": half of the delay is fixed and half is random, so the
many callers that failed together (every worker after a Redis restart, every conversation after
a WAHA outage) come back spread out, yet none retries sooner than half its step. A server's
`Retry-After` is a floor, never shortened.
"""

from __future__ import annotations

import random


def backoff_seconds(
    attempt: int, base: float, cap: float, *, retry_after: float | None = None
) -> float:
    """The delay before retry number `attempt` (1 for the first retry)."""
    ceiling = backoff_step(attempt, base, cap)
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def backoff_step(attempt: int, base: float, cap: float) -> float:
    """The step itself, without jitter: `base` doubled per attempt, at most `cap`. For the one
    caller that is alone in waiting (the supervisor restarting its own child) and announces the
    exact delay in its log; everyone else wants backoff_seconds."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


def backoff_ms(attempt: int, base_ms: int, max_ms: int, retry_after: float | None = None) -> int:
    """backoff_seconds in milliseconds, for retries scheduled in Redis (scores are ms);
    `retry_after` stays in seconds, as HTTP gives it."""
    return int(backoff_seconds(attempt, base_ms, max_ms, retry_after=_ms(retry_after)))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


class Backoff:
    """The same formula for a loop that retries until something works: each `next_delay()` is
    the next step; `reset()` after a success starts over from `first`."""

    def __init__(self, first: float = 0.05, cap: float = 2.0) -> None:
        self.first = first
        self.cap = cap
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next_delay(self) -> float:
        self._attempt += 1
        return backoff_seconds(self._attempt, self.first, self.cap)
