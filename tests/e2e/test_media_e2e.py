"""A customer's photo and voice note through the whole product, real processes end to end:
the WAHA simulator (behind an API key, as WAHA) posts WAHA GOWS's `message` with `media.url`,
the gateway queues it, the worker fetches the file from the simulator's `/api/files/...` with
`X-Api-Key` and stores it in WSM_MEDIA_DIR, the operator API serves the history and the file,
and erasing the customer removes the files. No GROQ_API_KEY (the stack drops it): the menu
answers the voice note with its "cannot listen to audio yet" text.

The stack is wsm/load/product.py's, the one `wsm loadtest` and tests/fleet run, with the WAHA
key set on both sides; tests/fleet's `Fleet` is the test's view of it."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.texts import load_texts
from tests.fleet.conftest import SESSION, Fleet
from tests.support.polling import async_wait_until
from tests.support.product import started_product
from wsm.load.product import ProductStack

pytestmark = pytest.mark.slow

WAHA_KEY = "e2e-waha-key-" + os.urandom(12).hex()
# A JPEG's markers around random bytes, a voice note's Ogg magic: content the engine never
# decodes, unique per run so a match proves the bytes came through the simulator.
JPEG = b"\xff\xd8\xff\xe0" + os.urandom(4096) + b"\xff\xd9"
VOICE = b"OggS" + os.urandom(6000)
CAPTION = "Comprovante do Pix"


@pytest.fixture(scope="module")
def media_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductStack]:
    home: Path = tmp_path_factory.mktemp("media-e2e")
    env = {"WAHA_API_KEY": WAHA_KEY, "WSM_MEDIA_DIR": str(home / "media")}
    with started_product(
        home, concurrency=4, env=env, sim_args=(f"--api-key={WAHA_KEY}",)
    ) as product:
        yield product


@pytest.fixture
async def fleet(media_stack: ProductStack) -> AsyncIterator[Fleet]:
    view = Fleet(media_stack)
    try:
        yield view
    finally:
        await view.aclose()


def media_dir(fleet: Fleet) -> Path:
    return fleet.product.options.home / "media"


def stored_files(fleet: Fleet) -> dict[str, bytes]:
    """Every file under WSM_MEDIA_DIR: its name (the SHA-256) -> bytes."""
    root = media_dir(fleet)
    return {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


async def send_file(fleet: Fleet, phone: str, media: dict[str, str], text: str) -> dict[str, Any]:
    response = await fleet.sim.post(
        "/_sim/inbound", json={"phone": phone, "text": text, "media": media, "wait": True}
    )
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


async def history_entry(fleet: Fleet, phone: str, waha_id: str) -> dict[str, Any]:
    async def recorded() -> dict[str, Any] | None:
        entries = await fleet.history(phone)
        return next((e for e in entries if e.get("waha_id") == waha_id), None)

    found: dict[str, Any] = await async_wait_until(
        recorded, timeout=30, interval=0.05, what=f"{waha_id} in the history"
    )
    return found


async def test_photo_and_voice_note_reach_history_media_api_and_erase(fleet: Fleet) -> None:
    phone = fleet.new_phone()
    b64 = base64.b64encode

    # --- the photo: fetched from the simulator, stored, in the history with its caption ----
    photo = await send_file(
        fleet, phone, {"data": b64(JPEG).decode(), "mimetype": "image/jpeg"}, CAPTION
    )
    [delivery] = [d for d in photo["deliveries"] if d["event"] == "message"]
    assert delivery["delivered"], delivery  # the gateway took it (HMAC, replay window)
    image = await history_entry(fleet, phone, photo["message_id"])
    assert image["direction"] == "in" and image["kind"] == "image"
    assert image["caption"] == CAPTION
    media = image["media"]
    assert media is not None, image.get("media_reason")
    assert (media["sha256"], media["size"], media["mimetype"]) == (
        hashlib.sha256(JPEG).hexdigest(),
        len(JPEG),
        "image/jpeg",
    )
    await fleet.wait_replies(phone, 1, timeout=30)  # the menu's "we got it"

    # GET /api/media/{id}: the same bytes and type with the operator's token, 401 without.
    served = await fleet.api.get(f"/api/media/{media['id']}")
    assert served.status_code == 200
    assert served.content == JPEG
    assert served.headers["content-type"].split(";")[0] == "image/jpeg"
    async with httpx.AsyncClient(base_url=fleet.product.api_url, timeout=30) as anonymous:
        refused = await anonymous.get(f"/api/media/{media['id']}")
        assert refused.status_code == 401
        assert refused.content != JPEG

    # --- the voice note: stored too, answered with the menu's audio text (no Groq key) ---
    replies_before = len(await fleet.replies(phone))
    voice = await send_file(fleet, phone, {"data": b64(VOICE).decode(), "kind": "voice"}, "")
    note = await history_entry(fleet, phone, voice["message_id"])
    assert note["kind"] == "voice" and note["transcript"] is None
    assert note["media"] is not None, note.get("media_reason")
    assert (note["media"]["sha256"], note["media"]["size"]) == (
        hashlib.sha256(VOICE).hexdigest(),
        len(VOICE),
    )
    assert note["media"]["mimetype"].startswith("audio/ogg")
    answer = (await fleet.wait_replies(phone, replies_before + 1, timeout=30))[replies_before]
    texts = load_texts()
    heard_not = [texts.render("audio_unsupported", number=n) for n in range(1, 10)]
    assert any(answer["text"].startswith(t) for t in heard_not), answer["text"]
    served_voice = await fleet.api.get(f"/api/media/{note['media']['id']}")
    assert served_voice.content == VOICE

    # Both files are in WSM_MEDIA_DIR under their hashes: the worker fetched them through the
    # simulator's key-protected route (the bytes exist nowhere else).
    files = stored_files(fleet)
    assert files.get(media["sha256"]) == JPEG
    assert files.get(note["media"]["sha256"]) == VOICE

    # --- erasing the customer removes the files and their index ---------------------------
    await fleet.quiet()

    async def erased() -> httpx.Response | None:
        response = await fleet.api.delete(f"/api/contacts/{SESSION}/{phone}@c.us")
        return None if response.status_code == 409 else response  # 409: her turn under way

    response = await async_wait_until(erased, timeout=30, what="the erase")
    assert response.status_code == 200 and response.json()["erased"] is True
    left = stored_files(fleet)
    assert media["sha256"] not in left and note["media"]["sha256"] not in left
    for media_id in (media["id"], note["media"]["id"]):
        assert (await fleet.api.get(f"/api/media/{media_id}")).status_code == 404
