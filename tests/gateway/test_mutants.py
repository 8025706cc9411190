"""Tests written to kill mutants that survived the mutation runs (docs/testing.md lists each one
and the mutant it kills): the gateway's dedupe and what it answers, against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from gateway.batcher import EnqueueBatcher
from gateway.intake import QUEUED, SPOOLED, Intake
from gateway.redis_link import RedisStatus
from gateway.replay import SpoolReplayer
from gateway.spool import Spool
from gateway.webhook import WebhookEndpoint
from shared.enqueue import EnqueueRequest, enqueue
from shared.events import route_event
from shared.keys import ShardKeys, conversation_token
from shared.queue_consumer import QueueConsumer
from shared.redis_client import connect
from tests.gateway.conftest import (
    enqueue_request,
    frozen,
    gateway_settings,
    inprocess_gateway,
    queued_events,
    signed,
    steady_settings,
    when_ready,
)
from tests.support.waha import compact, text_message

# --- shared/scripts/enqueue_event.lua -----------------------------------------------------


async def test_an_event_without_a_message_id_is_a_duplicate_after_it_was_handled(
    aredis, key_prefix
) -> None:
    """An event with no WhatsApp message id is deduplicated by its envelope id alone (its
    "message" marker is the event marker). Delivered again within the dedupe window after the
    first copy was handled and left the queue, it is a duplicate: nothing is queued again.
    Kills: the `return 0` of enqueue_event.lua's envelope-id guard (the repeat would then pass
    the message check, which is off, and the "still queued" check, since it was handled)."""
    chat = "5511999990101@c.us"
    document = text_message(chat, "oi", event_id="evt_no_message_id")
    del document["payload"]["id"]
    body = compact(document)
    routed = route_event(orjson.loads(body), body)
    assert routed is not None and routed.message_key is None
    request = EnqueueRequest.for_event(
        routed, body, received_at_ms=1, shards=1, dedupe_ttl_seconds=60, prefix=key_prefix
    )
    assert await enqueue(aredis, request) is True

    # The worker handles it: claimed, leased, acked (the real protocol).
    shard = ShardKeys(0, key_prefix)
    consumer = QueueConsumer(
        aredis, lease_ms=30_000, batch=10, max_attempts=3, backoff_ms=1000, backoff_max_ms=8000
    )
    token = await consumer.pop_ready(shard)
    assert token == conversation_token("default", chat)
    lease = await consumer.claim(shard, token, "w")
    assert lease is not None and [m.id for m in lease.messages] == ["evt_no_message_id"]
    await consumer.ack(lease, "evt_no_message_id")

    assert await enqueue(aredis, request) is False
    conv = shard.conversation(token)
    assert await aredis.llen(conv.messages) == 0
    assert await aredis.hlen(conv.bodies) == 0
    assert int(await aredis.hget(shard.stats, "waiting")) == 0


# --- gateway/intake.py: an event never overtakes events already answered "spooled" --------


@contextlib.asynccontextmanager
async def _intake(
    redis_url: str, spool_dir: Path, redis_timeout_s: float
) -> AsyncIterator[tuple[Intake, Spool, RedisStatus, Any]]:
    """The webhook's intake wired as the runtime wires it, on the real Redis and a real spool,
    with no replayer running unless the test starts one."""
    client = connect(redis_url)
    status = RedisStatus()
    spool = Spool(spool_dir, max_bytes=1 << 30, write_timeout_s=5)
    batcher = EnqueueBatcher(client, status, timeout_s=5)
    try:
        yield Intake(batcher, spool, status, redis_timeout_s=redis_timeout_s), spool, status, client
    finally:
        await spool.close()
        await client.aclose()


async def _second_event_joins_the_spool(
    chat: str,
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
    sync_redis: Any,
    *,
    redis_timeout_s: float,
    marked_down: bool = False,
) -> None:
    """A chat's first event spooled and not replayed; its second must be answered "spooled",
    join the spool behind the first, and leave Redis without either."""
    async with _intake(redis_url, tmp_path / "spool", redis_timeout_s) as (
        intake,
        spool,
        status,
        _,
    ):
        first, _ = enqueue_request(chat, "first", key_prefix)
        await spool.append(first, 1)
        if marked_down:
            status.mark_unreachable("test")  # the last round trip failed
        second, request = enqueue_request(chat, "second", key_prefix)

        assert await intake.accept(request, second, 2) == SPOOLED
        assert spool.events == 2
    assert queued_events(sync_redis, key_prefix, "default", chat) == []


async def test_an_event_behind_a_spool_nobody_replays_joins_the_spool(
    redis_url, key_prefix, tmp_path, sync_redis
) -> None:
    """Redis answers, but an event answered "spooled" earlier is still waiting (nothing
    replays it here): the next event of the same chat must not reach Redis before it. It
    waits for the replay (bounded by the Redis deadline), then joins the spool behind it.
    Kills: intake's `if not has_backlog: return True` negated (would go straight to Redis)."""
    await _second_event_joins_the_spool(
        "5511999990102@c.us", redis_url, key_prefix, tmp_path, sync_redis, redis_timeout_s=0.05
    )


async def test_an_event_behind_a_spool_joins_it_at_once_while_redis_is_marked_down(
    redis_url, key_prefix, tmp_path, sync_redis
) -> None:
    """While the last round trip failed (the replayer cannot make progress), an event behind
    spooled ones joins the spool at once, even should Redis answer again meanwhile (a long
    deadline here: the answer must not come from waiting it out).
    Kills: intake's `if not reachable: return False` answering True instead."""
    await _second_event_joins_the_spool(
        "5511999990103@c.us",
        redis_url,
        key_prefix,
        tmp_path,
        sync_redis,
        redis_timeout_s=5,
        marked_down=True,
    )


async def test_an_event_behind_a_spool_waits_for_the_replay_then_follows_it_into_redis(
    redis_url, key_prefix, tmp_path, sync_redis
) -> None:
    """The preferred path: Redis answers and the replayer is running, so the event waits for
    the spooled one to reach Redis, then goes to Redis itself, behind it.
    Kills: intake's `if not reachable` negated (would spool without waiting)."""
    chat = "5511999990104@c.us"
    settings = gateway_settings(redis_url, key_prefix, tmp_path / "spool")
    async with _intake(redis_url, tmp_path / "spool", 5) as (intake, spool, status, client):
        first, _ = enqueue_request(chat, "first", key_prefix)
        await spool.append(first, 1)
        second, request = enqueue_request(chat, "second", key_prefix)
        accepting = asyncio.ensure_future(intake.accept(request, second, 2))
        await asyncio.sleep(0)  # the event is waiting before the replayer starts
        replayer = asyncio.ensure_future(SpoolReplayer(spool, client, status, settings).run())
        try:
            assert await accepting == QUEUED
        finally:
            replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replayer
        assert not spool.has_backlog
    queued = queued_events(sync_redis, key_prefix, "default", chat)
    assert [q.document()["payload"]["body"] for q in queued] == ["first", "second"]


# --- gateway/webhook.py -------------------------------------------------------------------


def _body_of_exactly(size: int) -> bytes:
    """A signed-able WAHA message whose compact JSON is exactly `size` bytes."""
    document = text_message("5511999990105@c.us", "")
    short = len(compact(document))
    document["payload"]["body"] = "x" * (size - short)
    body = compact(document)
    assert len(body) == size
    return body


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "streamed"])
async def test_a_body_of_exactly_the_cap_is_accepted(
    redis_url, key_prefix, tmp_path, sync_redis, streamed
) -> None:
    """WSM_MAX_BODY_BYTES is the largest body accepted (413 only above it), announced with a
    content-length or streamed without one. Kills: `>` -> `>=` in the content-length check
    and in each of _read_body's size checks."""
    body = _body_of_exactly(4096)
    settings = steady_settings(redis_url, key_prefix, tmp_path, WSM_MAX_BODY_BYTES=len(body))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    async with inprocess_gateway(settings) as client:
        content: Any = chunks() if streamed else body
        response = await client.post("/webhook", content=content, headers=signed(body))
    assert ("content-length" in response.request.headers) is not streamed
    assert response.status_code == 200
    assert response.json() == {"status": "queued"}
    [queued] = queued_events(sync_redis, key_prefix, "default", "5511999990105@c.us")
    assert queued.body == body


async def test_an_event_without_an_envelope_id_is_deduplicated_by_its_bytes(
    app_client, sync_redis, key_prefix
) -> None:
    """Older WAHA versions send no envelope id: the event's id is then a hash of the body, so
    WAHA's retry (the same bytes) is a duplicate. Kills: route_event given None for the body."""
    document = text_message("5511999990106@c.us", "oi")
    del document["id"]
    body = compact(document)
    first = await app_client.post("/webhook", content=body, headers=signed(body))
    again = await app_client.post("/webhook", content=body, headers=signed(body))
    assert (first.json(), again.json()) == ({"status": "queued"}, {"status": "duplicate"})
    [queued] = queued_events(sync_redis, key_prefix, "default", "5511999990106@c.us")
    assert queued.id == "sha256_" + hashlib.sha256(body).hexdigest()[:32]


# --- gateway/webhook.py at the ASGI level: what a server may leave out ---------------------


async def asgi_post(
    app: Any, messages: list[dict[str, Any]], headers: dict[str, str]
) -> tuple[int | None, bytes, int]:
    """POST /webhook straight through the ASGI interface, the request's body given as these
    `http.request` messages (the ASGI spec makes `body` and `more_body` optional: a server may
    leave either out). Returns (status, body, messages received); status None if the app
    answered nothing. After the given messages, `receive` reports a disconnect."""
    pending = list(messages)
    received = 0
    answer: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        answer.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": "/webhook",
        "raw_path": b"/webhook",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    await app(scope, receive, send)
    if not answer:
        return None, b"", received
    return answer[0]["status"], answer[1]["body"], received


@pytest.mark.parametrize(
    "split",
    ["one message, no more_body", "no body in the first", "no body in the last"],
)
async def test_a_body_is_read_whatever_optional_keys_the_server_leaves_out(
    app_client, sync_redis, key_prefix, split
) -> None:
    """ASGI's `body` defaults to b"" and `more_body` to False. Kills, in _read_body: the
    `more_body` default True (waits for more, the client hangs up), the `body` default
    dropped (None joined into the body) in the first message and in later ones."""
    chat = "5511999990107@c.us"
    body = compact(text_message(chat, "partes"))
    messages: list[dict[str, Any]] = {
        "one message, no more_body": [{"type": "http.request", "body": body}],
        "no body in the first": [
            {"type": "http.request", "more_body": True},
            {"type": "http.request", "body": body},
        ],
        "no body in the last": [
            {"type": "http.request", "body": body, "more_body": True},
            {"type": "http.request"},
        ],
    }[split]
    status, answer, _ = await asgi_post(app_client.app, messages, signed(body))  # type: ignore[attr-defined]
    assert (status, orjson.loads(answer)) == (200, {"status": "queued"})
    [queued] = queued_events(sync_redis, key_prefix, "default", chat)
    assert queued.body == body


async def test_the_webhook_answers_say_their_type_and_length(app_client) -> None:
    """The prebuilt answers (gateway/webhook._answer, built once at import) carry a JSON
    content type and the exact content length, for a success and for a refusal. Kills, in
    _answer: the header names or the media type replaced, the length computed from None.
    (Built at import: these mutants only show in a fresh process, `--recheck`'s "new" stage.)"""
    body = compact(text_message("5511999990110@c.us", "tipos"))
    for headers in (signed(body), signed(body, "wrong-key")):
        response = await app_client.post("/webhook", content=body, headers=headers)
        assert response.headers["content-type"] == "application/json"
        assert response.headers["content-length"] == str(len(response.content))
        assert response.json()["status"] in ("queued", "unauthorized")


@pytest.mark.parametrize("sent", ["nothing", "the whole body, more announced"])
async def test_a_client_that_hangs_up_mid_body_gets_no_answer_and_nothing_is_stored(
    app_client, sync_redis, key_prefix, sent
) -> None:
    """WAHA gave up on the request (its timeout) before the body was complete: the gateway
    stores nothing and answers nobody; WAHA's retry brings the event again. Kills, in
    _read_body: the `http.disconnect` checks' type names replaced or re-cased (the hang-up
    read as an empty last chunk: a 401 sent into the void, or the body queued although
    more of it was announced)."""
    chat = "5511999990109@c.us"
    body = compact(text_message(chat, "desisti"))
    messages: list[dict[str, Any]] = {
        "nothing": [],
        "the whole body, more announced": [
            {"type": "http.request", "body": body, "more_body": True}
        ],
    }[sent]
    status, _, _ = await asgi_post(app_client.app, messages, signed(body))  # type: ignore[attr-defined]
    assert status is None
    assert not queued_events(sync_redis, key_prefix, "default", chat)


async def test_a_body_of_exactly_the_cap_in_one_message_is_accepted(
    redis_url, key_prefix, tmp_path, sync_redis
) -> None:
    """A server hands a small body over in one message (uvicorn does): the cap is checked
    there too, and a body of exactly the cap passes. Kills: `>` -> `>=` in _read_body's
    one-message branch (httpx's in-process transport always streams, so the other cap test
    never reaches it)."""
    body = _body_of_exactly(2048)
    settings = steady_settings(redis_url, key_prefix, tmp_path, WSM_MAX_BODY_BYTES=len(body))
    async with inprocess_gateway(settings) as client:
        message = {"type": "http.request", "body": body, "more_body": False}
        status, answer, _ = await asgi_post(client.app, [message], signed(body))  # type: ignore[attr-defined]
        over, _, _ = await asgi_post(client.app, [{**message, "body": body + b" "}], signed(body))  # type: ignore[attr-defined]
    assert (status, orjson.loads(answer)) == (200, {"status": "queued"})
    assert over == 413
    [queued] = queued_events(sync_redis, key_prefix, "default", "5511999990105@c.us")
    assert queued.body == body


async def test_a_content_length_over_the_cap_is_refused_before_reading_the_body(
    app_client, sync_redis, key_prefix
) -> None:
    """A body announced over the cap is refused on its header: nothing of it is read (a
    client cannot make the gateway take in a large body first), nothing stored. Kills:
    the content-length header ignored (`length = None`)."""
    body = compact(text_message("5511999990108@c.us", "grande"))
    headers = {**signed(body), "content-length": str(10**9)}
    message = {"type": "http.request", "body": body}
    status, answer, received = await asgi_post(app_client.app, [message], headers)  # type: ignore[attr-defined]
    assert (status, orjson.loads(answer)) == (413, {"status": "too_large"})
    assert received == 0
    assert not queued_events(sync_redis, key_prefix, "default", "5511999990108@c.us")


@pytest.mark.parametrize(
    ("offset_ms", "stale"),
    [
        (-3_600_000, False),  # exactly the oldest accepted
        (-3_600_001, True),
        (300_000, False),  # exactly the furthest ahead accepted
        (300_001, True),
    ],
)
def test_the_replay_window_edges_are_exact(offset_ms: int, stale: bool) -> None:
    """WSM_WEBHOOK_MAX_AGE_SECONDS back and 300 s ahead, to the millisecond, both edges
    inside. Kills, in _outside_window: `<` -> `<=` and `>` -> `>=`, the seconds-to-ms factors
    1000 -> 1001 (each would move an edge by seconds)."""
    endpoint = WebhookEndpoint(
        intake=cast(Intake, None),
        hmac_keys=[b"k" * 32],
        max_body_bytes=1,
        shards=1,
        dedupe_ttl_seconds=1,
        key_prefix="p",
        max_age_seconds=3600,
    )
    now = 1_800_000_000_000
    assert endpoint._outside_window({"timestamp": now + offset_ms}, now) is stale


# --- gateway/app.py and health.py: what the gateway serves besides /webhook ---------------


async def test_the_gateway_serves_no_api_documents_and_answers_json(app_client) -> None:
    """The gateway faces WAHA (and, through nginx, the internet's edge): no OpenAPI schema
    or docs pages to map it. Its own answers say they are JSON. Kills, in create_app:
    `docs_url`, `redoc_url`, `openapi_url` dropped (FastAPI's defaults serve them); in
    health._json: the media type dropped."""
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert (await app_client.get(path)).status_code == 404, path
    alive = await app_client.get("/healthz")
    assert alive.headers["content-type"] == "application/json"
    assert alive.json() == {"status": "alive"}


# --- gateway/runtime.py: /readyz says why ------------------------------------------------


async def test_readyz_names_the_redis_version_when_ready(app_client, sync_redis) -> None:
    """Kills, in readiness(): the status word forced to "unavailable", the version dropped.
    The mutant never answers ready."""
    response = await when_ready(app_client)
    assert response.status_code == 200
    document = response.json()
    assert document["status"] == "ready"
    assert document["redis"] == {"ok": True, "version": sync_redis.info()["redis_version"]}


@pytest.mark.parametrize("failure", ["down", "frozen"])
async def test_readyz_says_why_redis_is_not_ready(
    private_redis, key_prefix, tmp_path, failure
) -> None:
    """Redis refusing connections and Redis not answering in time are told apart (an
    operator's first question). Kills, in readiness(): the error always or never "timeout",
    the error's name replaced, the ping deadline dropped (a frozen Redis would hang it)."""
    settings = gateway_settings(private_redis.url, key_prefix, tmp_path / "spool")
    async with inprocess_gateway(settings) as client:
        assert (await when_ready(client)).status_code == 200
        if failure == "down":
            private_redis.kill()
        with frozen(private_redis) if failure == "frozen" else contextlib.nullcontext():
            response = await client.get("/readyz")
    assert response.status_code == 503
    document = response.json()
    assert document["status"] == "unavailable"
    assert document["redis"]["ok"] is False
    expected = "timeout" if failure == "frozen" else "ConnectionError"
    assert document["redis"]["error"] == expected
