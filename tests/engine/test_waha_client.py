"""The WAHA client: requests as WAHA expects them, answers mapped to typed failures."""

from __future__ import annotations

import httpx
import orjson
import pytest
import respx

from engine.waha_client import (
    WahaClient,
    WahaRetryable,
    WahaSessionNotWorking,
    WahaTerminal,
    message_id_from_answer,
    short_message_id,
)

WAHA = "http://waha.test"


@respx.mock
async def test_send_sequence_requests_and_the_sent_id() -> None:
    seen = respx.post(f"{WAHA}/api/sendSeen").mock(return_value=httpx.Response(201, json={}))
    start = respx.post(f"{WAHA}/api/startTyping").mock(return_value=httpx.Response(201))
    stop = respx.post(f"{WAHA}/api/stopTyping").mock(return_value=httpx.Response(201))
    send = respx.post(f"{WAHA}/api/sendText").mock(
        return_value=httpx.Response(
            201, json={"id": "true_5511987650052@c.us_3EB0C767D26A1D5B7A2F", "body": "Olá"}
        )
    )
    waha = WahaClient(WAHA + "/", api_key="secret")
    await waha.send_seen("default", "5511987650052@c.us")
    await waha.start_typing("default", "5511987650052@c.us")
    await waha.stop_typing("default", "5511987650052@c.us")
    sent = await waha.send_text("default", "5511987650052@c.us", "Olá, ação! 😊")
    assert sent.id == "true_5511987650052@c.us_3EB0C767D26A1D5B7A2F"
    assert sent.short_id == "3EB0C767D26A1D5B7A2F"
    for route in (seen, start, stop, send):
        request = route.calls[0].request
        assert request.headers["x-api-key"] == "secret"
        body = orjson.loads(request.content)
        assert body["session"] == "default" and body["chatId"] == "5511987650052@c.us"
    assert orjson.loads(send.calls[0].request.content)["text"] == "Olá, ação! 😊"
    await waha.aclose()


@respx.mock
@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, WahaRetryable),
        (502, WahaRetryable),
        (429, WahaRetryable),
        (422, WahaSessionNotWorking),
        (400, WahaTerminal),
        (401, WahaTerminal),
        (404, WahaTerminal),
    ],
)
async def test_status_codes_map_to_typed_failures(status: int, error: type[Exception]) -> None:
    answer = {"statusCode": status, "message": "Session status is not as expected", "error": "x"}
    respx.post(f"{WAHA}/api/sendText").mock(return_value=httpx.Response(status, json=answer))
    waha = WahaClient(WAHA)
    with pytest.raises(error) as raised:
        await waha.send_text("default", "1@c.us", "oi")
    assert raised.value.status == status  # type: ignore[attr-defined]
    assert "Session status is not as expected" in raised.value.answer  # type: ignore[attr-defined]
    await waha.aclose()


@respx.mock
async def test_network_error_is_retryable_and_retry_after_is_read() -> None:
    respx.post(f"{WAHA}/api/sendText").mock(side_effect=httpx.ConnectError("refused"))
    waha = WahaClient(WAHA)
    with pytest.raises(WahaRetryable) as raised:
        await waha.send_text("default", "1@c.us", "oi")
    assert raised.value.status is None
    respx.post(f"{WAHA}/api/sendSeen").mock(
        return_value=httpx.Response(429, headers={"retry-after": "7"}, json={})
    )
    with pytest.raises(WahaRetryable) as limited:
        await waha.send_seen("default", "1@c.us")
    assert limited.value.retry_after == 7.0
    await waha.aclose()


def test_message_ids_in_every_engine_shape() -> None:
    assert message_id_from_answer({"id": "true_1@c.us_AAA"}) == "true_1@c.us_AAA"
    assert message_id_from_answer({"id": {"_serialized": "true_1@c.us_BBB"}}) == "true_1@c.us_BBB"
    assert message_id_from_answer({"key": {"id": "CCC", "fromMe": True}}) == "CCC"
    assert message_id_from_answer({"nothing": 1}) is None
    assert short_message_id("true_1@c.us_AAA") == "AAA"
    assert short_message_id("false_1203@g.us_AAA_5511@c.us") == "AAA"
    assert short_message_id("AAA") == "AAA"
