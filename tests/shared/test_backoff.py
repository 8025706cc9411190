"""shared/backoff.py: the one backoff formula (exponential, capped, equal jitter)."""

from __future__ import annotations

import random

import pytest

from shared.backoff import Backoff, backoff_ms, backoff_seconds, backoff_step


def test_every_delay_lies_between_half_its_step_and_its_step() -> None:
    for attempt in range(1, 12):
        step = backoff_step(attempt, 0.5, 60.0)
        for _ in range(50):
            assert step / 2 <= backoff_seconds(attempt, 0.5, 60.0) <= step


def test_the_step_doubles_per_attempt_up_to_the_cap() -> None:
    assert [backoff_step(n, 0.5, 30.0) for n in range(1, 9)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0,
    ]  # fmt: skip
    assert backoff_step(0, 0.5, 30.0) == 0.5  # attempt 0 counts as the first


@pytest.mark.parametrize("draw", ["low", "high"])
def test_the_jitter_spans_the_upper_half(monkeypatch: pytest.MonkeyPatch, draw: str) -> None:
    monkeypatch.setattr(random, "uniform", lambda a, b: a if draw == "low" else b)
    expected = {"low": [0.25, 0.5, 1.0, 1.0], "high": [0.5, 1.0, 2.0, 2.0]}[draw]
    assert [backoff_seconds(n, 0.5, 2.0) for n in range(1, 5)] == expected


def test_retry_after_is_a_floor_never_shortened() -> None:
    assert backoff_seconds(1, 0.5, 60.0, retry_after=7) == 7
    # A Retry-After shorter than the backoff does not shorten it.
    assert backoff_seconds(6, 1.0, 60.0, retry_after=0.1) >= 16.0
    # It may exceed the cap: the server asked for it.
    assert backoff_seconds(1, 0.5, 2.0, retry_after=90) == 90


def test_backoff_ms_is_in_milliseconds_with_retry_after_in_seconds() -> None:
    assert 250 <= backoff_ms(1, 500, 60_000) <= 500
    assert backoff_ms(1, 500, 60_000, retry_after=7) == 7000
    assert isinstance(backoff_ms(3, 500, 60_000), int)


def test_the_loop_form_grows_and_starts_over_after_reset() -> None:
    backoff = Backoff(first=0.1, cap=0.4)
    delays = [backoff.next_delay() for _ in range(5)]
    for delay, step in zip(delays, [0.1, 0.2, 0.4, 0.4, 0.4], strict=True):
        assert step / 2 <= delay <= step
    backoff.reset()
    assert 0.05 <= backoff.next_delay() <= 0.1
