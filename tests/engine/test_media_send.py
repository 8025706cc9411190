"""Agents' files through the engine: the `wsm.agent_media` command puts a file reply in the
outbox, the sender reads its bytes from the media store and sends it with WAHA's sendImage /
sendFile / sendVoice exactly once; WAHA Core's 422 AvailableInPlusVersion fails the reply
(history `failed`, reason waha_plus_required) without retries or a dead letter, counts it and
remembers the session. WAHA is a respx stand-in answering with WAHA's shapes
(tests/fixtures/waha/api/)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx

from engine import commands
from engine.history import HistoryKeys, read_page
from engine.metrics import OUTBOX_SENDS
from engine.outbox import OutboxEntry
from engine.sender import WAHA_PLUS_REQUIRED
from engine.waha_client import OutboundFile, WahaClient, WahaPlusRequired, WahaSessionNotWorking
from shared.keys import WahaSessionKeys, all_shards, engine_keys_for, outbox_pending_key
from tests.engine.harness import WAHA, FakeWaha, Harness, settings_for
from tests.engine.media_send_support import PDF, PNG, MediaWaha, waha_answer
from wsm.waha_sim import create_app as create_sim
from wsm.waha_sim.config import SimConfig

ANA = "5511987650001@c.us"
OGG = b"OggS" + b"\x00" * 64


@pytest.fixture
def wahas() -> Iterator[tuple[FakeWaha, MediaWaha]]:
    with respx.mock(assert_all_called=False) as router:
        yield FakeWaha(router), MediaWaha(router)


@pytest.fixture
async def harness(aredis, redis_url, key_prefix, tmp_path: Path) -> Any:
    harness = Harness(aredis, settings_for(key_prefix, redis_url, media_dir=tmp_path / "media"))
    yield harness
    await harness.aclose()


async def queue_file(
    harness: Harness, data: bytes, mimetype: str, filename: str, kind: str, caption: str = ""
) -> tuple[str, str]:
    """What api/media_send.py does after its checks: store, then queue the command. Returns
    (media id, reply mid)."""
    media = await harness.service.media.save(f"default|{ANA}", data, mimetype, filename)
    mid = hashlib.sha256(filename.encode()).hexdigest()[:32]
    payload = {
        "agent_id": "maria",
        "agent_name": "Maria",
        "kind": kind,
        "mid": mid,
        "caption": caption,
        "media": media.public(),
    }
    queue = harness.service.coordinator.queue
    assert await queue.send("default", ANA, commands.AGENT_MEDIA, payload, event_id=f"t:{mid}")
    return media.id, mid


async def history(harness: Harness) -> list[dict[str, Any]]:
    keys = engine_keys_for(
        "default", ANA, harness.settings.queue_shards, harness.settings.key_prefix
    )
    entries, _ = await read_page(harness.redis, HistoryKeys(keys.history, keys.history_meta))
    return [e.public() for e in entries]


def plus_refusals() -> float:
    return OUTBOX_SENDS.labels(WAHA_PLUS_REQUIRED)._value.get()


async def outbox_dead_letters(harness: Harness) -> int:
    shards = all_shards(harness.settings.queue_shards, harness.settings.key_prefix)
    return sum([await harness.redis.llen(f"{shard.tag}:outbox:dlq") for shard in shards])


async def test_an_agents_image_document_and_voice_note_go_out_once_with_their_bytes(
    harness: Harness, wahas: tuple[FakeWaha, MediaWaha]
) -> None:
    _, files = wahas
    await harness.say(ANA, "oi")
    image_id, image_mid = await queue_file(
        harness, PNG, "image/png", "pix.png", "image", "Seu comprovante"
    )
    await queue_file(harness, PDF, "application/pdf", "exame.pdf", "document", "O exame")
    await queue_file(harness, OGG, "audio/ogg; codecs=opus", "voz.ogg", "voice")
    await harness.drain()
    await harness.drain()  # nothing is sent a second time

    [image] = files.bodies("sendImage")
    assert image["chatId"] == ANA and image["session"] == "default"
    assert image["caption"] == "Seu comprovante"
    assert image["file"] == {"mimetype": "image/png", "filename": "pix.png",
                             "data": base64.b64encode(PNG).decode()}  # fmt: skip
    [document] = files.bodies("sendFile")
    assert base64.b64decode(document["file"]["data"]) == PDF
    assert document["file"]["filename"] == "exame.pdf" and document["caption"] == "O exame"
    [voice] = files.bodies("sendVoice")
    assert voice["file"]["mimetype"] == "audio/ogg; codecs=opus" and voice["convert"] is False
    assert base64.b64decode(voice["file"]["data"]) == OGG and "caption" not in voice

    items = [m for m in await history(harness) if m["kind"] != "text"]
    assert [(m["kind"], m["status"], m["author"]) for m in items] == [
        ("image", "sent", "agent:maria"),
        ("document", "sent", "agent:maria"),
        ("voice", "sent", "agent:maria"),
    ]
    assert items[0]["media"]["id"] == image_id and items[0]["caption"] == "Seu comprovante"
    assert items[0]["waha_id"].startswith(f"true_{ANA}_")
    # The conversation became the agent's, as with a text from them.
    state = await harness.redis.hgetall(
        engine_keys_for("default", ANA, harness.settings.queue_shards,
                        harness.settings.key_prefix).state
    )  # fmt: skip
    assert state[b"state"] == b"agent" and state[b"agent_id"] == b"maria"
    # The reply is the one the command named (the API follows its outcome by this id).
    keys = engine_keys_for("default", ANA, harness.settings.queue_shards,
                           harness.settings.key_prefix)  # fmt: skip
    assert await harness.redis.hget(keys.history_meta, f"{image_mid}:status") == b"sent"


async def test_waha_core_refusing_a_file_fails_it_once_without_retry_or_dead_letter(
    harness: Harness, wahas: tuple[FakeWaha, MediaWaha]
) -> None:
    texts, files = wahas
    files.core = True
    await harness.say(ANA, "oi")
    before = plus_refusals()
    _, mid = await queue_file(harness, PNG, "image/png", "pix.png", "image", "Seu comprovante")
    await harness.drain()
    for _ in range(3):  # sweeps later find nothing to retry
        await harness.service.sender.sweep_once()
        await harness.service.sender.drain()

    assert len(files.bodies()) == 1  # asked once, never again
    [item] = [m for m in await history(harness) if m["kind"] == "image"]
    assert item["status"] == "failed"
    keys = engine_keys_for(
        "default", ANA, harness.settings.queue_shards, harness.settings.key_prefix
    )
    assert (
        await harness.redis.hget(keys.history_meta, f"{mid}:error") == WAHA_PLUS_REQUIRED.encode()
    )
    assert await harness.redis.llen(keys.outbox) == 0
    pending = outbox_pending_key(all_shards(1, harness.settings.key_prefix)[0])
    assert await harness.redis.zscore(pending, f"default|{ANA}") is None
    assert await outbox_dead_letters(harness) == 0
    assert plus_refusals() == before + 1
    # The session is remembered as one that cannot send files, for a while.
    flag = WahaSessionKeys("default", harness.settings.key_prefix).files_refused
    assert 0 < await harness.redis.ttl(flag) <= harness.settings.media_files_refused_seconds
    # Texts still go out: the refusal is the file's, not the session's.
    await harness.say(ANA, "e agora?")
    assert texts.to(ANA)[-1]


async def test_a_file_gone_from_the_store_is_a_dead_letter_not_a_crash(
    harness: Harness, wahas: tuple[FakeWaha, MediaWaha], tmp_path: Path
) -> None:
    _, files = wahas
    await harness.say(ANA, "oi")
    await queue_file(harness, PNG, "image/png", "pix.png", "image")
    await harness.service.media.forget_conversation(f"default|{ANA}")  # erased meanwhile
    await harness.drain()
    assert files.bodies() == []
    [item] = [m for m in await history(harness) if m["kind"] == "image"]
    assert item["status"] == "failed"
    assert await outbox_dead_letters(harness) == 1


def test_a_file_reply_keeps_its_kind_and_media_through_the_outbox_encoding() -> None:
    entry = OutboxEntry("a" * 32, ANA, "legenda", 1, kind="image",
                        media={"id": "b" * 32, "mimetype": "image/png"})  # fmt: skip
    assert OutboxEntry.decode(entry.encode()) == entry
    text = OutboxEntry("c" * 32, ANA, "oi", 1)
    assert "kind" not in orjson.loads(text.encode())  # a text keeps the old shape


@respx.mock
async def test_the_client_tells_a_plus_refusal_from_a_session_that_is_not_working() -> None:
    client = WahaClient(WAHA)
    file = OutboundFile(PNG, "image/png", "pix.png")
    respx.post(f"{WAHA}/api/sendImage").mock(
        return_value=httpx.Response(422, json=waha_answer("send-image-plus-required.json"))
    )
    with pytest.raises(WahaPlusRequired):
        await client.send_media("default", ANA, "image", file, "")
    # The 422 of a session that is not WORKING (SessionManager.waitUntilStatus) still parks.
    respx.post(f"{WAHA}/api/sendFile").mock(
        return_value=httpx.Response(422, json={
            "error": "Session status is not as expected. Try again later or restart the session",
            "session": "default", "status": "SCAN_QR_CODE", "expected": ["WORKING"],
        })
    )  # fmt: skip
    with pytest.raises(WahaSessionNotWorking):
        await client.send_media("default", ANA, "document", file, "")
    await client.aclose()


@pytest.mark.parametrize("tier", ["PLUS", "CORE"])
async def test_the_simulator_sends_files_as_plus_and_refuses_them_as_core(tier: str) -> None:
    """wsm waha-sim --tier: the stand-in WAHA the dev stack and the load test run."""
    config = dataclasses.replace(SimConfig(), tier=tier, announce=False, api_key="k" * 32,
                                 ack_delay=0.0, read_delay=0.0)  # fmt: skip
    app = create_sim(config)
    async with app.router.lifespan_context(app):
        client = WahaClient("http://sim", api_key="k" * 32, transport=httpx.ASGITransport(app=app))
        file = OutboundFile(PNG, "image/png", "pix.png")
        if tier == "CORE":
            with pytest.raises(WahaPlusRequired):
                await client.send_media("default", ANA, "image", file, "legenda")
        else:
            sent = await client.send_media("default", ANA, "image", file, "legenda")
            assert sent.id.startswith(f"true_{ANA}_")
            [message] = app.state.sim.store.chat(ANA).messages
            assert message.text == "legenda" and message.direction == "out"
        await client.aclose()
