"""POST /webhook against a real Redis: signatures, WAHA's bodies, duplicates, rejections.

The gateway runs in-process (httpx over ASGI) with a Redis deadline load cannot hit
(tests/gateway/conftest.py: STEADY_REDIS_TIMEOUT_MS), so `queued` and `duplicate` are exact;
every rejection asserts its status code and that Redis holds no key under the test's prefix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import httpx
import pytest
import redis

from gateway.signature import SignatureRejected, sign, verify_signature
from tests.conftest import keys_with_prefix
from tests.gateway.conftest import (
    HMAC_KEY,
    inprocess_gateway,
    queued_events,
    signed,
    steady_settings,
    waiting_count,
    when_ready,
)
from tests.support.waha import FIXTURES, compact, fixture_names, load_fixture, text_message

# Where each fixture must be queued: (WAHA session, chat), worked out by hand from the bodies.
QUEUED_IN = {
    ("default", "11111111111@c.us"): ["message-ack.json", "message-any-fromme.json"],
    ("default", "120363000000000002@g.us"): ["message-group.json"],
    ("chatwoot", "5511987650053@c.us"): [
        f"message-media-{kind}.json"
        for kind in ("audio", "contact", "document", "image", "location", "sticker", "video")
    ],
    ("mysession_waha", "5511987650052@c.us"): ["message-media-voice.json", "message-text.json"],
    ("default", "_session"): ["session-status.json"],
    ("session_frwq9b", "5511987650054@c.us"): ["message-call.json"],
}
EXPECTED_CONVERSATION = {name: where for where, names in QUEUED_IN.items() for name in names}


def test_every_fixture_has_an_expected_conversation() -> None:
    assert sorted(EXPECTED_CONVERSATION) == fixture_names()


# --- signatures -----------------------------------------------------------------------------


def vector() -> dict[str, str]:
    value: dict[str, str] = json.loads((FIXTURES / "hmac-test-vector.json").read_text())
    return value


def test_waha_hmac_test_vector_signs_as_documented() -> None:
    v = vector()
    assert sign(v["raw_body"].encode(), v["key"].encode()) == v["X-Webhook-Hmac"]


def test_waha_hmac_test_vector_passes_the_gateways_check() -> None:
    """WAHA's documented vector passes the check the gateway runs, alone and during a rotation.
    (Its 13-character key is below the 32 characters settings require, so the vector is
    checked at the signature layer; the webhook tests cover the route with a long key.)"""
    v = vector()
    body, key = v["raw_body"].encode(), v["key"].encode()
    signature, algorithm = v["X-Webhook-Hmac"].encode(), v["X-Webhook-Hmac-Algorithm"].encode()
    verify_signature(body, signature, algorithm, [key])
    verify_signature(body, signature, algorithm, [b"k" * 32, key])
    with pytest.raises(SignatureRejected):
        verify_signature(body, signature, algorithm, [b"k" * 32])


@pytest.mark.parametrize("algorithm", [b"SHA512", b"Sha512", b" sha512 "])
def test_the_algorithm_is_named_in_any_case(algorithm: bytes) -> None:
    """WAHA sends `sha512`; a proxy or a WAHA version that writes the name in capitals (or
    pads the header) names the same algorithm, and is not told its signature is unsupported.
    Kills: `.lower()` (or `.strip()`) dropped from verify_signature's algorithm check."""
    v = vector()
    body, key, signature = v["raw_body"].encode(), v["key"].encode(), v["X-Webhook-Hmac"].encode()
    verify_signature(body, signature, algorithm, [key])
    with pytest.raises(SignatureRejected, match="unsupported"):
        verify_signature(body, signature, b"SHA256", [key])


def one_byte_changed(body: bytes) -> bytes:
    index = body.index(b"Oi")
    return body[:index] + b"Ou" + body[index + 2 :]


@pytest.mark.parametrize(
    "case",
    [
        "changed_byte",
        "missing_header",
        "wrong_algorithm",
        "algorithm_without_signature",
        "uppercase_hex",
        "empty_signature",
        "truncated_by_one",
        "truncated_to_half",
        "one_hex_digit",
        "signature_plus_extra",
    ],
)
async def test_bad_signature_is_401_and_nothing_is_stored(
    case: str, app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    body = compact(load_fixture("message-text.json"))
    headers = signed(body)
    if case == "changed_byte":
        body = one_byte_changed(body)
    elif case == "missing_header":
        del headers["x-webhook-hmac"]
    elif case == "wrong_algorithm":
        # The signature is right; only the algorithm header is not WAHA's sha512.
        headers["x-webhook-hmac-algorithm"] = "sha256"
    elif case == "algorithm_without_signature":
        del headers["x-webhook-hmac"]
        headers["x-webhook-hmac-algorithm"] = "sha512"
    elif case == "uppercase_hex":
        headers["x-webhook-hmac"] = headers["x-webhook-hmac"].upper()
    elif case == "empty_signature":
        headers["x-webhook-hmac"] = ""
    elif case == "truncated_by_one":
        # A prefix of the right signature: a comparison that stopped at the shorter length
        # would accept it.
        headers["x-webhook-hmac"] = headers["x-webhook-hmac"][:-1]
    elif case == "truncated_to_half":
        headers["x-webhook-hmac"] = headers["x-webhook-hmac"][:64]
    elif case == "one_hex_digit":
        headers["x-webhook-hmac"] = headers["x-webhook-hmac"][:1]
    elif case == "signature_plus_extra":
        headers["x-webhook-hmac"] = headers["x-webhook-hmac"] + "0"
    response = await app_client.post("/webhook", content=body, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"status": "unauthorized"}
    assert keys_with_prefix(sync_redis, key_prefix) == []


# Keys as the settings require them (at least 32 characters).
NEW_KEY = "new-key-" + "n" * 32
OLD_KEY = "old-key-" + "o" * 32


async def post_signed(client: httpx.AsyncClient, body: bytes, key: str) -> httpx.Response:
    return await client.post("/webhook", content=body, headers=signed(body, key))


async def test_during_a_rotation_both_keys_are_accepted(
    redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """`WEBHOOK_HMAC_KEY=new,old`: WAHA may sign with either while it is switched over. Each key
    is checked on its own body, so a check that let only one of the keys count (the first or
    the last) refuses one of them."""
    chat = "5511900000001@c.us"
    with_new = compact(text_message(chat, "com a chave nova"))
    with_old = compact(text_message(chat, "com a chave antiga"))
    rotating = steady_settings(
        redis_url, key_prefix, tmp_path, WEBHOOK_HMAC_KEY=f"{NEW_KEY}, {OLD_KEY}"
    )
    async with inprocess_gateway(rotating) as client:
        assert (await post_signed(client, with_new, NEW_KEY)).json() == {"status": "queued"}
        assert (await post_signed(client, with_old, OLD_KEY)).json() == {"status": "queued"}
        refused = compact(text_message(chat, "com outra chave"))
        assert (await post_signed(client, refused, "other-key-" + "x" * 32)).status_code == 401
    texts = [
        e.document()["payload"]["body"]
        for e in queued_events(sync_redis, key_prefix, "default", chat)
    ]
    assert texts == ["com a chave nova", "com a chave antiga"]
    assert waiting_count(sync_redis, key_prefix) == 2


async def test_after_the_rotation_the_old_key_is_refused_and_nothing_stored(
    redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    chat = "5511900000001@c.us"
    rotated = steady_settings(redis_url, key_prefix, tmp_path, WEBHOOK_HMAC_KEY=NEW_KEY)
    async with inprocess_gateway(rotated) as client:
        late_old = await post_signed(client, compact(text_message(chat, "antiga")), OLD_KEY)
        assert late_old.status_code == 401
        assert late_old.json() == {"status": "unauthorized"}
        assert keys_with_prefix(sync_redis, key_prefix) == []
        accepted = await post_signed(client, compact(text_message(chat, "nova")), NEW_KEY)
        assert accepted.json() == {"status": "queued"}
    [queued] = queued_events(sync_redis, key_prefix, "default", chat)
    assert queued.document()["payload"]["body"] == "nova"


# --- WAHA's bodies --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED_CONVERSATION))
async def test_every_waha_fixture_is_queued_in_its_conversation(
    name: str, app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    document = load_fixture(name)
    if "timestamp" in document:
        # The captured bodies are from 2025: outside the replay window they would be `stale`
        # (tests/gateway/test_replay_window.py). A fresh delivery of the same shape is queued.
        document["timestamp"] = int(time.time() * 1000)
    body = compact(document)
    response = await app_client.post("/webhook", content=body, headers=signed(body))
    assert response.status_code == 200
    assert response.json() == {"status": "queued"}

    session, chat = EXPECTED_CONVERSATION[name]
    [queued] = queued_events(sync_redis, key_prefix, session, chat)
    assert (queued.session, queued.chat_id, queued.event) == (session, chat, document["event"])
    assert queued.body == body  # byte for byte as signed: accents, emoji, key order
    # WAHA's envelope id, or for bodies without one (older WAHA) the documented substitute:
    # a hash of the raw body, so a retry of the same bytes dedupes.
    expected_id = document.get("id") or "sha256_" + hashlib.sha256(body).hexdigest()[:32]
    assert queued.id == expected_id
    assert queued.document() == document


async def test_accents_and_emoji_arrive_intact(
    app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    text = "Olá! Vocês atendem amanhã às 9h? Preciso de orçamento 😀🇧🇷 — obrigado"
    body = compact(text_message("5511900000002@c.us", text))
    assert "😀".encode() in body  # raw UTF-8, as WAHA's JSON.stringify sends it
    response = await app_client.post("/webhook", content=body, headers=signed(body))
    assert response.json() == {"status": "queued"}
    [queued] = queued_events(sync_redis, key_prefix, "default", "5511900000002@c.us")
    assert queued.body == body
    assert queued.document()["payload"]["body"] == text
    assert queued.document()["me"]["pushName"] == "Clínica"


async def test_a_text_cut_inside_an_emoji_is_queued_not_refused(
    app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    """WAHA's Node writes half of a surrogate pair as a lone escape ("\\ud83d") when WhatsApp
    text is cut inside an emoji: valid JSON that orjson refuses. Found by an audit: answered
    400, retried by WAHA and then lost. Queued byte for byte; read as U+FFFD."""
    chat = "5511900000003@c.us"
    body = compact(text_message(chat, "cortado XEMOJI")).replace(b"XEMOJI", b"\\ud83d")
    assert b"\\ud83d" in body
    response = await app_client.post("/webhook", content=body, headers=signed(body))
    assert response.json() == {"status": "queued"}
    [queued] = queued_events(sync_redis, key_prefix, "default", chat)
    assert queued.body == body
    assert queued.document()["payload"]["body"] == "cortado \ufffd"


# --- duplicates -----------------------------------------------------------------------------


async def test_same_event_twice_is_queued_once(
    app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    body = compact(text_message("5511900000003@c.us", "oi"))
    first = await app_client.post("/webhook", content=body, headers=signed(body))
    again = await app_client.post("/webhook", content=body, headers=signed(body))
    assert first.json() == {"status": "queued"}
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate"}
    assert len(queued_events(sync_redis, key_prefix, "default", "5511900000003@c.us")) == 1
    assert waiting_count(sync_redis, key_prefix) == 1


async def test_same_message_under_a_new_envelope_id_is_queued_once(
    app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    chat = "5511900000004@c.us"
    first = text_message(chat, "oi", message_id="3EB0C767D26A1D2D5F39", event_id="evt_first")
    second = dict(first, id="evt_second")
    for document, expected in ((first, "queued"), (second, "duplicate")):
        body = compact(document)
        response = await app_client.post("/webhook", content=body, headers=signed(body))
        assert response.json() == {"status": expected}
    [queued] = queued_events(sync_redis, key_prefix, "default", chat)
    assert queued.id == "evt_first"


# --- rejections -----------------------------------------------------------------------------


def huge_body() -> bytes:
    document = text_message("5511900000005@c.us", "x" * (2 * 1024 * 1024))
    return compact(document)


async def test_body_over_the_cap_with_content_length_is_413(
    app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    body = huge_body()
    response = await app_client.post("/webhook", content=body, headers=signed(body))
    assert response.status_code == 413
    assert keys_with_prefix(sync_redis, key_prefix) == []


async def test_body_over_the_cap_without_content_length_is_413(
    app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    body = huge_body()

    async def chunks():  # type: ignore[no-untyped-def]
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    headers = signed(body)
    response = await app_client.post("/webhook", content=chunks(), headers=headers)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert keys_with_prefix(sync_redis, key_prefix) == []


@pytest.mark.parametrize(
    ("body", "status", "answer"),
    [
        (b"not json{", 400, "invalid"),
        (b'[{"event":"message","session":"default"}]', 400, "invalid"),
        (b'{"session":"default","payload":{}}', 400, "invalid"),
        (b'{"event":"message","payload":{"id":"x"}}', 400, "invalid"),  # queued event, no session
        (b"", 400, "invalid"),
        # A used event without a payload object, or whose payload names no chat, used to be
        # queued as the session's event (and a list payload failed the worker's turn).
        (b'{"event":"message","session":"default"}', 400, "invalid"),
        (b'{"event":"message","session":"default","payload":[{"id":"x"}]}', 400, "invalid"),
        (b'{"event":"session.status","session":"default","payload":null}', 400, "invalid"),
        (b'{"event":"message","session":"default","payload":{"body":"oi"}}', 400, "invalid"),
        (b'{"event":"presence.update","session":"default","payload":{}}', 200, "ignored"),
        (b'{"event":"chat.archive","session":"default","payload":{}}', 200, "ignored"),
        (b'{"event":"call.received","session":"default"}', 200, "ignored"),
    ],
    ids=[
        "not-json",
        "array",
        "no-event",
        "no-session",
        "empty",
        "no-payload",
        "list-payload",
        "null-payload",
        "no-chat",
        "presence",
        "unknown",
        "unused-without-payload",
    ],
)
async def test_unusable_bodies_are_answered_and_nothing_is_stored(
    body: bytes,
    status: int,
    answer: str,
    app_client: httpx.AsyncClient,
    sync_redis: redis.Redis,
    key_prefix: str,
) -> None:
    response = await app_client.post("/webhook", content=body, headers=signed(body))
    assert response.status_code == status
    assert response.json() == {"status": answer}
    assert keys_with_prefix(sync_redis, key_prefix) == []


async def test_only_post_is_allowed(
    app_client: httpx.AsyncClient, sync_redis: redis.Redis, key_prefix: str
) -> None:
    response = await app_client.get("/webhook")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert keys_with_prefix(sync_redis, key_prefix) == []


async def test_unsigned_webhooks_are_accepted_only_when_allowed(
    redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    from gateway.app import create_app
    from gateway.signature import UnsignedRefused

    with pytest.raises(UnsignedRefused):
        create_app(steady_settings(redis_url, key_prefix, tmp_path, WEBHOOK_HMAC_KEY=None))
    allowed = steady_settings(
        redis_url, key_prefix, tmp_path, WEBHOOK_HMAC_KEY=None, WSM_ALLOW_UNSIGNED=True
    )
    body = compact(text_message("5511900000006@c.us", "sem assinatura"))
    async with inprocess_gateway(allowed) as client:
        response = await client.post("/webhook", content=body, headers=signed(body, key=None))
    assert response.json() == {"status": "queued"}
    assert waiting_count(sync_redis, key_prefix) == 1


# --- operator endpoints ---------------------------------------------------------------------


async def test_health_readiness_and_metrics(app_client: httpx.AsyncClient) -> None:
    from prometheus_client import REGISTRY

    def count(outcome: str) -> float:
        return REGISTRY.get_sample_value("wsm_webhook_requests_total", {"outcome": outcome}) or 0.0

    before = {outcome: count(outcome) for outcome in ("queued", "unauthorized", "ignored")}
    body = compact(text_message("5511900000007@c.us", "métricas"))
    await app_client.post("/webhook", content=body, headers=signed(body))
    await app_client.post("/webhook", content=body, headers=signed(body, "wrong-key"))
    ignored = b'{"event":"presence.update","session":"default"}'
    await app_client.post("/webhook", content=ignored, headers=signed(ignored))

    assert (await app_client.get("/healthz")).json() == {"status": "alive"}
    ready = await when_ready(app_client)
    assert ready.status_code == 200
    assert ready.json()["spool"] == {"in_use": False, "events": 0, "writable": True}
    text = (await app_client.get("/metrics")).text
    assert 'wsm_webhook_duration_seconds_bucket{le="0.0005"}' in text
    assert "wsm_spool_events" in text
    assert {outcome: count(outcome) - before[outcome] for outcome in before} == {
        "queued": 1.0,
        "unauthorized": 1.0,
        "ignored": 1.0,
    }


async def test_logs_carry_the_event_id_never_the_body_or_the_key(
    app_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    from shared.logs import JsonLineFormatter

    document = text_message("5511900000008@c.us", "segredo-do-corpo-4711")
    body = compact(document)
    with caplog.at_level(logging.DEBUG, logger="wsm.gateway"):
        await app_client.post("/webhook", content=body, headers=signed(body))
        await app_client.post("/webhook", content=body, headers=signed(body, "wrong-key-0815"))
    lines = "\n".join(JsonLineFormatter().format(record) for record in caplog.records)
    assert document["id"] in lines
    for secret in (
        "segredo-do-corpo-4711",
        HMAC_KEY,
        "wrong-key-0815",
        signed(body)["x-webhook-hmac"],
    ):
        assert secret not in lines
