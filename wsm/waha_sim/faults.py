"""Faults on demand, set through `POST /_sim/faults`.

API side (WAHA's REST answers): added latency, and the next N calls answering an error status
(5xx or 429, optionally with Retry-After). "422 with the session down" is not a fault here:
it is the real behaviour once a session's status is set to anything but WORKING.

Webhook side (WAHA's deliveries): duplicates (the same envelope bytes sent twice, as when
WAHA resends a request it thinks timed out; and/or the same payload under a new envelope id,
as WAHA has been seen to do) and out-of-order delivery (the next N events held back and sent
newest first).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, TypeVar

DUPLICATE_MODES = ("same_envelope", "new_envelope", "both")


class FaultSpecError(ValueError):
    """A fault request that cannot be applied (answered 400)."""


@dataclass(slots=True)
class ApiLatency:
    seconds: float
    jitter: float
    paths: tuple[str, ...] | None

    def applies(self, path: str) -> bool:
        return _matches(self.paths, path)


@dataclass(slots=True)
class ApiFailure:
    remaining: int
    status: int
    paths: tuple[str, ...] | None
    retry_after: float | None

    def applies(self, path: str) -> bool:
        return self.remaining > 0 and _matches(self.paths, path)


@dataclass(slots=True)
class DuplicateFault:
    remaining: int
    mode: str
    events: frozenset[str] | None

    def applies(self, event: str) -> bool:
        return _event_matches(self.events, event)


@dataclass(slots=True)
class ReorderFault:
    remaining: int
    events: frozenset[str] | None
    # A partial batch is released after this long, so a held event is never stuck.
    hold_seconds: float

    def applies(self, event: str) -> bool:
        return _event_matches(self.events, event)


# The faults armed for the next N calls or events.
_Counted = TypeVar("_Counted", ApiFailure, DuplicateFault, ReorderFault)


def _spend(fault: _Counted | None, key: str) -> tuple[_Counted | None, _Counted | None]:
    """`fault` when it applies to `key` (a path or an event), one of its uses spent; and the
    fault still armed after it (None once its last use is spent)."""
    if fault is None or not fault.applies(key):
        return None, fault
    fault.remaining -= 1
    return fault, (fault if fault.remaining > 0 else None)


def _matches(paths: tuple[str, ...] | None, path: str) -> bool:
    return paths is None or any(p in path for p in paths)


def _event_matches(events: frozenset[str] | None, event: str) -> bool:
    return events is None or event in events


class Faults:
    def __init__(self) -> None:
        self.latency: ApiLatency | None = None
        self.failure: ApiFailure | None = None
        self.duplicate: DuplicateFault | None = None
        self.reorder: ReorderFault | None = None

    def clear(self) -> None:
        self.latency = self.failure = self.duplicate = self.reorder = None

    # --- API -------------------------------------------------------------------------------
    def api_delay(self, path: str) -> float:
        latency = self.latency
        if latency is None or not latency.applies(path):
            return 0.0
        return latency.seconds + latency.jitter * random.random()

    def take_api_failure(self, path: str) -> ApiFailure | None:
        failure, self.failure = _spend(self.failure, path)
        return failure

    # --- webhooks --------------------------------------------------------------------------
    def take_duplicate(self, event: str) -> str | None:
        duplicate, self.duplicate = _spend(self.duplicate, event)
        return duplicate.mode if duplicate is not None else None

    def take_reorder(self, event: str) -> ReorderFault | None:
        reorder, self.reorder = _spend(self.reorder, event)
        return reorder

    # --- the control API's view ------------------------------------------------------------
    def update(self, spec: dict[str, Any]) -> None:
        """Applies a `POST /_sim/faults` body; keys absent are left as they are, null clears."""
        if not isinstance(spec, dict):
            raise FaultSpecError("body must be a JSON object")
        unknown = set(spec) - {"latency", "fail_next", "duplicate", "reorder"}
        if unknown:
            raise FaultSpecError(f"unknown fault(s): {sorted(unknown)}")
        if "latency" in spec:
            self.latency = _latency(spec["latency"])
        if "fail_next" in spec:
            self.failure = _failure(spec["fail_next"])
        if "duplicate" in spec:
            self.duplicate = _duplicate(spec["duplicate"])
        if "reorder" in spec:
            self.reorder = _reorder(spec["reorder"])

    def describe(self) -> dict[str, Any]:
        def paths(value: tuple[str, ...] | None) -> list[str] | None:
            return list(value) if value is not None else None

        def events(value: frozenset[str] | None) -> list[str] | None:
            return sorted(value) if value is not None else None

        lat, fail, dup, reo = self.latency, self.failure, self.duplicate, self.reorder
        return {
            "latency": lat
            and {
                "ms": lat.seconds * 1000,
                "jitter_ms": lat.jitter * 1000,
                "paths": paths(lat.paths),
            },
            "fail_next": fail
            and {
                "count": fail.remaining,
                "status": fail.status,
                "paths": paths(fail.paths),
                "retry_after": fail.retry_after,
            },
            "duplicate": dup
            and {"count": dup.remaining, "mode": dup.mode, "events": events(dup.events)},
            "reorder": reo
            and {
                "count": reo.remaining,
                "events": events(reo.events),
                "hold_ms": reo.hold_seconds * 1000,
            },
        }


def _obj(value: Any, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FaultSpecError(f"{name} must be an object or null")
    return value


def _number(spec: dict[str, Any], key: str, default: float, *, minimum: float = 0) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise FaultSpecError(f"{key} must be a number >= {minimum}")
    return float(value)


def _count(spec: dict[str, Any]) -> int:
    value = spec.get("count", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FaultSpecError("count must be an integer >= 1")
    return value


def _strings(spec: dict[str, Any], key: str) -> tuple[str, ...] | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise FaultSpecError(f"{key} must be a list of strings")
    return tuple(value)


def _events(spec: dict[str, Any]) -> frozenset[str] | None:
    values = _strings(spec, "events")
    return frozenset(values) if values is not None else None


def _latency(value: Any) -> ApiLatency | None:
    spec = _obj(value, "latency")
    if spec is None:
        return None
    return ApiLatency(
        _number(spec, "ms", 0) / 1000, _number(spec, "jitter_ms", 0) / 1000, _strings(spec, "paths")
    )


def _failure(value: Any) -> ApiFailure | None:
    spec = _obj(value, "fail_next")
    if spec is None:
        return None
    status = spec.get("status", 500)
    if not isinstance(status, int) or not (status == 429 or 500 <= status <= 599):
        raise FaultSpecError("fail_next.status must be 429 or 5xx")
    retry_after = spec.get("retry_after")
    if retry_after is not None:
        retry_after = _number(spec, "retry_after", 0)
    return ApiFailure(_count(spec), status, _strings(spec, "paths"), retry_after)


def _duplicate(value: Any) -> DuplicateFault | None:
    spec = _obj(value, "duplicate")
    if spec is None:
        return None
    mode = spec.get("mode", "same_envelope")
    if mode not in DUPLICATE_MODES:
        raise FaultSpecError(f"duplicate.mode must be one of {DUPLICATE_MODES}")
    return DuplicateFault(_count(spec), mode, _events(spec))


def _reorder(value: Any) -> ReorderFault | None:
    spec = _obj(value, "reorder")
    if spec is None:
        return None
    count = _count(spec)
    if count < 2:
        raise FaultSpecError("reorder.count must be at least 2")
    return ReorderFault(count, _events(spec), _number(spec, "hold_ms", 2000) / 1000)
