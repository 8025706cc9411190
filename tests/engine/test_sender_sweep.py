"""What brings a conversation's outbox back to a sender: the sweeper, which must not starve
orphans behind conversations other senders hold, and the park after a 422, which must not
outlive the session's trouble (issue 11, item 6)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import respx

from shared.keys import WahaSessionKeys, engine_keys_for
from tests.engine.harness import WAHA, mock_courtesy, texts_sent
from tests.engine.support import CHAT, commit_replies, make_sender, sent_answer

TOKEN = f"default|{CHAT}"


@respx.mock
async def test_an_orphan_behind_many_locked_conversations_is_swept(aredis, key_prefix) -> None:
    mock_courtesy()
    send = respx.post(f"{WAHA}/api/sendText").mock(return_value=sent_answer(1))
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    # 250 conversations due earlier than the orphan, each held by a live sender elsewhere.
    held = [f"default|55119{n:08d}@c.us" for n in range(250)]
    for n, token in enumerate(held):
        other = engine_keys_for("default", token.split("|")[1], 1, key_prefix)
        await aredis.set(other.sending, "another-process", px=60_000)
        await aredis.zadd(keys.outbox_pending, {token: n})
    # The orphan: its sender died; its lock has expired.
    await commit_replies(aredis, key_prefix, "órfã")
    await aredis.zadd(keys.outbox_pending, {TOKEN: 1000})
    sender, waha = make_sender(aredis, key_prefix)
    started = await sender.sweep_once(limit=200)
    await sender.drain()
    assert texts_sent(send) == ["órfã"]
    assert started == 1  # the held ones are left to their senders
    assert await aredis.llen(keys.outbox) == 0
    assert await aredis.zcard(keys.outbox_pending) == 250
    await waha.aclose()


def session_info(status: str) -> dict[str, Any]:
    """GET /api/sessions/{session}: WAHA's SessionInfo (as wsm/waha_sim serves it)."""
    return {
        "name": "default",
        "status": status,
        "config": None,
        "me": {"id": "5511930000002@c.us", "pushName": "Clínica"},
        "presence": None,
        "timestamps": {"activity": None},
        "engine": {"engine": "GOWS", "grpc": {"client": "READY", "stream": "READY"}},
    }


@respx.mock
async def test_a_parked_session_is_probed_and_resumes_when_it_works(aredis, key_prefix) -> None:
    mock_courtesy()
    down = httpx.Response(
        422, json={"statusCode": 422, "message": "Session status is not as expected: STARTING"}
    )
    send = respx.post(f"{WAHA}/api/sendText").mock(side_effect=[down, sent_answer(1)])
    status = respx.get(f"{WAHA}/api/sessions/default").mock(
        side_effect=[
            httpx.Response(200, json=session_info("STARTING")),
            httpx.Response(200, json=session_info("WORKING")),
        ]
    )
    await commit_replies(aredis, key_prefix, "olá")
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    parked = WahaSessionKeys("default", key_prefix).parked
    sender, waha = make_sender(aredis, key_prefix, parked_recheck_ms=1)
    await sender.deliver(TOKEN)
    assert send.call_count == 1
    # The park does not outlive WAHA's own retry of a lost session.status by much.
    assert 0 < await aredis.pttl(parked) <= sender.config.parked_ttl_ms
    # session.status WORKING was handled before the park landed: no webhook will wake it.
    # Its recheck comes due (made due now here instead of waiting for it).
    await aredis.zadd(keys.outbox_pending, {TOKEN: 0})
    await sender.deliver(TOKEN)  # the probe: still STARTING
    assert status.call_count == 1 and send.call_count == 1
    assert await aredis.exists(parked) == 1 and await aredis.llen(keys.outbox) == 1
    # Probes are spaced by parked_recheck_ms (1 ms here) on the monotonic clock: three
    # loopback round trips since the last probe can take less than that on a fast machine.
    await asyncio.sleep(10 * sender.config.parked_recheck_ms / 1000)
    await aredis.zadd(keys.outbox_pending, {TOKEN: 0})
    await sender.deliver(TOKEN)  # the probe: WORKING
    await sender.drain()
    assert status.call_count == 2
    assert texts_sent(send) == ["olá", "olá"]  # refused once (422), then delivered
    assert await aredis.exists(parked) == 0
    assert await aredis.llen(keys.outbox) == 0
    await waha.aclose()


@respx.mock
async def test_a_failed_probe_keeps_the_park_and_probes_are_spaced(aredis, key_prefix) -> None:
    mock_courtesy()
    send = respx.post(f"{WAHA}/api/sendText").mock(return_value=sent_answer(1))
    status = respx.get(f"{WAHA}/api/sessions/default").mock(
        return_value=httpx.Response(500, json={"statusCode": 500, "message": "boom"})
    )
    await commit_replies(aredis, key_prefix, "olá")
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    parked = WahaSessionKeys("default", key_prefix).parked
    await aredis.set(parked, "422", px=60_000)
    sender, waha = make_sender(aredis, key_prefix)  # probes at most every 5 s
    for _ in range(3):
        await aredis.zadd(keys.outbox_pending, {TOKEN: 0})
        await sender.deliver(TOKEN)
    assert status.call_count == 1
    assert send.call_count == 0
    assert await aredis.exists(parked) == 1 and await aredis.llen(keys.outbox) == 1
    assert await aredis.zscore(keys.outbox_pending, TOKEN) > 0  # looked at again later
    await waha.aclose()
