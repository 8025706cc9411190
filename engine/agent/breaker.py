"""A circuit breaker in front of the LLM, one per worker process.

closed    requests go through; WSM_LLM_BREAKER_FAILURES failures in a row open it.
open      nobody waits on a model that is down: every message goes straight to the menu
          brain, for WSM_LLM_BREAKER_RESET_SECONDS (or as long as a 429's retry-after says).
half-open after that, one request is let through as a trial: success closes the breaker,
          failure opens it again for another period.

Per process on purpose: it needs no Redis round trip on the hot path, and each process learns
of an outage from its own first few failures, which costs at most a few slow answers.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        failures_to_open: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures_to_open = failures_to_open
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._opened = False
        self._trial_running = False

    @property
    def state(self) -> BreakerState:
        if not self._opened:
            return BreakerState.CLOSED
        if self._clock() < self._open_until:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allow(self) -> bool:
        """May a request go to the model now? In half-open, only one at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._trial_running:
            return False
        self._trial_running = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._opened = False
        self._trial_running = False

    def failure(self, *, hold_seconds: float | None = None) -> None:
        """A failed request. `hold_seconds` (a 429's retry-after) opens the breaker at once
        for that long: every other request would be refused too."""
        self._trial_running = False
        self._failures += 1
        if hold_seconds is not None or self._opened or self._failures >= self.failures_to_open:
            hold = max(self.reset_seconds if hold_seconds is None else hold_seconds, 0.0)
            self._opened = True
            self._open_until = self._clock() + hold

    def release(self) -> None:
        """The trial ended without telling anything about the model (a local error)."""
        self._trial_running = False
