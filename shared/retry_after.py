"""HTTP `Retry-After` (RFC 9110 §10.2.3): either a number of seconds or an HTTP date."""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait, never negative; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after_of(headers: Mapping[str, str] | None) -> float | None:
    """parse_retry_after of a response's headers (case-insensitive mappings, as httpx's)."""
    if not headers:
        return None
    return parse_retry_after(headers.get("retry-after"))
