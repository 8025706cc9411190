"""shared/retry_after.py: HTTP `Retry-After` as seconds or an HTTP date, and the product's
clients reading it through the one parser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx

from engine.waha_client import WahaClient, WahaRetryable
from shared.retry_after import parse_retry_after, retry_after_of

NOW = 1445412470.0  # Wed, 21 Oct 2015 07:27:50 GMT


def test_seconds() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0  # never negative


def test_an_http_date_is_the_seconds_until_it() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=NOW) == 10.0
    # A date already past means "now".
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now=NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "Wed, 99 Foo 2015", "1e999x"])
def test_absent_or_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_headers_are_read_case_insensitively() -> None:
    assert retry_after_of(httpx.Headers({"Retry-After": "7"})) == 7.0
    assert retry_after_of(httpx.Headers({})) is None
    assert retry_after_of(None) is None


@respx.mock
async def test_the_waha_client_honours_an_http_date_retry_after() -> None:
    # Before the toolkit, engine/waha_client.py read only seconds: a date gave no floor.
    when = datetime.now(UTC) + timedelta(seconds=120)
    respx.post("http://waha.test/api/sendText").mock(
        return_value=httpx.Response(
            503, headers={"retry-after": format_datetime(when, usegmt=True)}, json={}
        )
    )
    waha = WahaClient("http://waha.test")
    with pytest.raises(WahaRetryable) as raised:
        await waha.send_text("default", "1@c.us", "oi")
    await waha.aclose()
    assert raised.value.retry_after is not None
    assert 60 < raised.value.retry_after <= 120
