"""A captured webhook cannot be replayed (issue 12, section 2): a correctly signed event whose
`timestamp` is outside WSM_WEBHOOK_MAX_AGE_SECONDS (default 3600) in the past or 300 s in the
future is answered 200 `stale`, counted, and leaves no trace in Redis; the same event with a
fresh timestamp is queued; events replayed from the gateway's own spool are exempt."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from gateway.spool import Spool
from shared.settings import Settings
from tests.gateway.conftest import inprocess_gateway, queued_events
from tests.support.polling import async_wait_until
from tests.support.waha import compact, text_message, webhook_headers

# 32 characters or more: the gateway refuses shorter keys.
KEY = "replay-window-test-key-0123456789abcdef"
CHAT = "5511987650061@c.us"
HOUR_MS = 3600 * 1000
# A Redis deadline no load reaches: these tests are about the window, not the deadline.
STEADY_REDIS_TIMEOUT_MS = 5000


def settings_for(redis_url: str, key_prefix: str, spool_dir: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        REDIS_URL=redis_url,
        WSM_KEY_PREFIX=key_prefix,
        WEBHOOK_HMAC_KEY=KEY,
        WSM_SPOOL_DIR=spool_dir,
        WSM_WEBHOOK_REDIS_TIMEOUT_MS=STEADY_REDIS_TIMEOUT_MS,
    )


def event_at(timestamp_ms: int, **options: Any) -> dict[str, Any]:
    document = text_message(CHAT, "oi", **options)
    document["timestamp"] = timestamp_ms
    return document


def stale_count() -> float:
    value = REGISTRY.get_sample_value("wsm_webhook_requests_total", {"outcome": "stale"})
    return value or 0.0


def all_keys(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter(count=1000))


@pytest.mark.parametrize(
    "offset_ms", [-2 * HOUR_MS, -HOUR_MS - 5000, 301_000, 24 * HOUR_MS], ids=str
)
async def test_a_signed_event_outside_the_window_is_stale_and_leaves_no_trace(
    offset_ms: int, redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    document = event_at(int(time.time() * 1000) + offset_ms)
    body = compact(document)
    async with inprocess_gateway(settings_for(redis_url, key_prefix, tmp_path / "spool")) as c:
        before_keys = all_keys(sync_redis)
        before = stale_count()
        response = await c.post("/webhook", content=body, headers=webhook_headers(body, KEY))
        assert response.status_code == 200
        assert response.json() == {"status": "stale"}
        assert stale_count() == before + 1
        # Nothing stored anywhere: not queued, no dedupe marker, nothing else.
        assert all_keys(sync_redis) == before_keys
        assert queued_events(sync_redis, key_prefix, "default", CHAT) == []
    assert not list((tmp_path / "spool").glob("*.wal")) or all(
        f.stat().st_size == 0 for f in (tmp_path / "spool").glob("*.wal")
    )


async def test_the_same_event_with_a_fresh_timestamp_is_handled(
    redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    old = event_at(int(time.time() * 1000) - 2 * HOUR_MS, message_id="3EB0REPLAY0001")
    fresh = dict(old, timestamp=int(time.time() * 1000))
    async with inprocess_gateway(settings_for(redis_url, key_prefix, tmp_path / "spool")) as c:
        stale_body, fresh_body = compact(old), compact(fresh)
        answer = await c.post(
            "/webhook", content=stale_body, headers=webhook_headers(stale_body, KEY)
        )
        assert answer.json() == {"status": "stale"}
        answer = await c.post(
            "/webhook", content=fresh_body, headers=webhook_headers(fresh_body, KEY)
        )
        assert answer.status_code == 200
        assert answer.json() == {"status": "queued"}
    [queued] = queued_events(sync_redis, key_prefix, "default", CHAT)
    assert queued.body == fresh_body


async def test_an_event_within_the_window_is_queued(
    redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    # 59 minutes old, and 4 minutes ahead (clock skew between WAHA and us): both accepted.
    now = int(time.time() * 1000)
    async with inprocess_gateway(settings_for(redis_url, key_prefix, tmp_path / "spool")) as c:
        for stamp in (now - 59 * 60 * 1000, now + 240_000):
            body = compact(event_at(stamp))
            answer = await c.post("/webhook", content=body, headers=webhook_headers(body, KEY))
            assert answer.json() == {"status": "queued"}
    assert len(queued_events(sync_redis, key_prefix, "default", CHAT)) == 2


async def test_events_replayed_from_the_spool_are_exempt(
    redis_url: str, key_prefix: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """An event accepted (spooled) while Redis was away may be replayed hours later: the
    window applies at the door, not to what was already accepted."""
    spool_dir = tmp_path / "spool"
    body = compact(event_at(int(time.time() * 1000) - 3 * HOUR_MS))
    # A spool left behind by an earlier gateway process: accepted 3 hours ago.
    spool_dir.mkdir()
    earlier = Spool(spool_dir, max_bytes=1 << 20, write_timeout_s=5)
    await earlier.append(body, int(time.time() * 1000) - 3 * HOUR_MS)
    await earlier.close()

    async def replayed() -> bool:
        return len(queued_events(sync_redis, key_prefix, "default", CHAT)) == 1

    async with inprocess_gateway(settings_for(redis_url, key_prefix, spool_dir)):
        await async_wait_until(replayed, timeout=20, what="the spooled event replayed")
    [queued] = queued_events(sync_redis, key_prefix, "default", CHAT)
    assert queued.body == body


@pytest.mark.parametrize(
    "document",
    [
        {"timestamp": 1},
        {"timestamp": 1, "event": 5},
        {"timestamp": 1, "event": "message"},  # no session
        {"timestamp": 1, "event": "message", "session": "a|b"},
    ],
    ids=["no event", "event not a string", "no session", "session with a bar"],
)
async def test_an_old_body_that_is_not_an_event_is_invalid_not_stale(
    document: dict[str, Any],
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
    sync_redis: redis.Redis,
) -> None:
    """What is not an event is answered 400 `invalid` whatever its timestamp (issue 2): the
    window judges events, and a malformed body must not pass as a merely old one (found by an
    audit: these were answered 200 `stale`). Nothing is stored."""
    body = compact(document)
    async with inprocess_gateway(settings_for(redis_url, key_prefix, tmp_path / "spool")) as c:
        before_keys = all_keys(sync_redis)
        before = stale_count()
        response = await c.post("/webhook", content=body, headers=webhook_headers(body, KEY))
        assert response.status_code == 400
        assert response.json()["status"] == "invalid"
        assert stale_count() == before
        assert all_keys(sync_redis) == before_keys
