"""Stream ids from outside (shared/stream_ids.py): one rule for the API, the console and the
engine's history, checked before Redis sees them (Redis answers a bad one with an error)."""

from __future__ import annotations

import pytest

from engine.history import HistoryKeys, InvalidCursor, read_page
from shared.stream_ids import history_cursor, stream_id

U64 = 2**64 - 1


def test_stream_ids_redis_takes() -> None:
    assert stream_id("1700000000000-3") == (1700000000000, 3)
    assert stream_id("1700000000000") == (1700000000000, 0)
    assert stream_id(f"{U64}-{U64 - 1}") == (U64, U64 - 1)


@pytest.mark.parametrize(
    "value",
    ["", "-", "1-", "-1", "1-2-3", " 1", "1 ", "+1", "1.5", "١", "1-١", f"{U64 + 1}",
     f"1-{U64 + 1}", f"{U64}-{U64}", "9" * 5000],
)  # fmt: skip
def test_what_redis_would_refuse_is_no_stream_id(value: str) -> None:
    assert stream_id(value) is None
    assert not history_cursor(value)


def test_0_0_is_a_stream_id_but_no_page_is_before_it() -> None:
    assert stream_id("0-0") == (0, 0)
    assert not history_cursor("0-0") and not history_cursor("0")


@pytest.mark.parametrize("value", ["١", "99999999999999999999999-0", "0-0"])
async def test_the_engines_history_refuses_them_before_asking_redis(value: str) -> None:
    """str.isdigit() let other scripts' digits and ids past 64 bits through to XREVRANGE
    (found by an audit of the API); no Redis is given here: none is asked."""
    with pytest.raises(InvalidCursor):
        await read_page(None, HistoryKeys("h", "m"), before=value)
