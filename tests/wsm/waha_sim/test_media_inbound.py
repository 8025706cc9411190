"""A customer's file through the simulator, as WAHA delivers one: `POST /_sim/inbound` with
`media` keeps the bytes, serves them at WAHA's `GET /api/files/<session>/<name>` behind the
API key with their content type, and sends a `message` whose payload is WAHA GOWS's (the keys of
message-media-voice.json, `_data.Message.<type>Message`), which the engine's
engine/media/kinds.py reads as the kind that was sent. Every refusal keeps nothing. Also
`wsm chat`'s `/arquivo <path> [legenda]`, which sends a file through this route."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from engine.media.kinds import describe
from tests.support.waha import load_fixture
from tests.wsm.waha_sim.conftest import Receiver, Sim, SimFactory
from tests.wsm.waha_sim.support import assert_same_keys
from wsm.chat import ChatClient, LineNotSent, file_command, run_piped
from wsm.waha_sim.config import SimConfig
from wsm.waha_sim.errors import ControlError
from wsm.waha_sim.faults import Faults
from wsm.waha_sim.simulator import Simulator
from wsm.waha_sim.store import SimStore
from wsm.waha_sim.webhooks import WebhookDispatcher

KEY = "waha-key-0123456789abcdef0123456789ab"
PHONE = "5511987650052"
CHAT = f"{PHONE}@c.us"
JPEG = b"\xff\xd8\xff\xe0" + os.urandom(2048) + b"\xff\xd9"
VOICE = b"OggS" + os.urandom(3000)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def send(sim: Sim, **body: Any) -> dict[str, Any]:
    return await sim.inbound(phone=PHONE, **body)


async def payload_of(receiver: Receiver, message_id: str) -> dict[str, Any]:
    [request] = [
        r for r in await receiver.wait_for("message") if r.json["payload"]["id"] == message_id
    ]
    payload: dict[str, Any] = request.json["payload"]
    return payload


def file_path(url: str) -> str:
    """The path the engine fetches (engine/media/fetch.py: WAHA's path on WAHA_URL)."""
    return urlsplit(url).path


async def test_an_image_with_caption_is_served_behind_the_api_key_as_the_event_says(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    async with make_sim(api_key=KEY, webhook_urls=(receiver.url,)) as sim:
        media = {"data": b64(JPEG), "mimetype": "image/jpeg", "filename": "pix.jpg"}
        answer = await send(sim, text="Comprovante do Pix", media=media)
        payload = await payload_of(receiver, answer["message_id"])

        assert payload["hasMedia"] is True
        assert payload["body"] == "Comprovante do Pix"
        assert list(payload["media"]) == ["url", "mimetype", "filename", "error"]
        url = payload["media"]["url"]
        # WAHA's name for a downloaded file: the message id and mime-db's extension.
        assert file_path(url) == f"/api/files/default/{answer['message_id']}.jpeg"
        assert payload["media"]["mimetype"] == "image/jpeg"
        assert payload["media"]["filename"] is None  # WhatsApp keeps names of documents only
        image = payload["_data"]["Message"]["imageMessage"]
        assert (image["caption"], image["mimetype"], image["fileLength"]) == (
            "Comprovante do Pix",
            "image/jpeg",
            len(JPEG),
        )
        ref = describe(payload)
        assert ref is not None
        assert (ref.kind, ref.caption, ref.url, ref.downloaded) == (
            "image",
            "Comprovante do Pix",
            url,
            True,
        )

        # WAHA's files are behind its key, like every /api/ route.
        for headers in ({}, {"X-Api-Key": "wrong"}):
            refused = await sim.client.get(file_path(url), headers=headers)
            assert refused.status_code == 401
            assert refused.json() == {"message": "Unauthorized", "statusCode": 401}
            assert refused.content != JPEG
        served = await sim.client.get(file_path(url), headers={"X-Api-Key": KEY})
        assert served.status_code == 200
        assert served.content == JPEG
        assert served.headers["content-type"] == "image/jpeg"
        by_query = await sim.client.get(file_path(url), params={"x-api-key": KEY})
        assert by_query.content == JPEG

        # The simulator's own view of the chat shows the file.
        [message] = (await sim.chat(CHAT))["messages"]
        assert message["text"] == "Comprovante do Pix"
        assert message["media"] == {
            "kind": "image",
            "size": len(JPEG),
            "url": url,
            "mimetype": "image/jpeg",
            "filename": None,
        }


async def test_a_voice_note_has_the_keys_of_the_waha_capture_and_reads_as_voice(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    fixture = load_fixture("message-media-voice.json")["payload"]
    async with make_sim(api_key=KEY, webhook_urls=(receiver.url,)) as sim:
        media = {"data": b64(VOICE), "kind": "voice"}
        answer = await send(sim, text="", media=media)
        payload = await payload_of(receiver, answer["message_id"])

        assert_same_keys(payload, fixture, ordered=True)
        audio = payload["_data"]["Message"]["audioMessage"]
        assert audio["PTT"] is True
        assert payload["_data"]["Info"]["MediaType"] == "ptt"
        assert payload["_data"]["Info"]["Chat"] == f"{PHONE}@s.whatsapp.net"
        assert payload["media"]["mimetype"] == "audio/ogg; codecs=opus"
        assert payload["media"]["url"].endswith(".oga")  # as in the capture
        ref = describe(payload)
        assert ref is not None and (ref.kind, ref.caption, ref.downloaded) == ("voice", "", True)

        served = await sim.client.get(
            file_path(payload["media"]["url"]), headers={"X-Api-Key": KEY}
        )
        assert served.content == VOICE
        # WAHA's static file server types a file by its extension, without parameters.
        assert served.headers["content-type"] == "audio/ogg"


@pytest.mark.parametrize(
    ("media", "caption", "kind", "filename"),
    [
        ({"mimetype": "image/jpeg"}, "foto", "image", None),
        ({"mimetype": "video/mp4"}, "vídeo", "video", None),
        ({"mimetype": "audio/mpeg"}, "", "audio", None),
        ({"mimetype": "audio/ogg; codecs=opus"}, "", "voice", None),
        ({"mimetype": "image/webp"}, "", "sticker", None),
        ({"filename": "exame-sangue.pdf"}, "Resultado do exame", "document", "exame-sangue.pdf"),
        ({"mimetype": "audio/ogg; codecs=opus", "kind": "audio"}, "", "audio", None),
    ],
)
async def test_every_kind_reads_as_that_kind_in_the_engine(
    make_sim: SimFactory,
    receiver: Receiver,
    media: dict[str, str],
    caption: str,
    kind: str,
    filename: str | None,
) -> None:
    data = os.urandom(512)
    async with make_sim(webhook_urls=(receiver.url,)) as sim:
        answer = await send(sim, text=caption, media={"data": b64(data), **media})
        payload = await payload_of(receiver, answer["message_id"])
        ref = describe(payload)
        assert ref is not None
        assert (ref.kind, ref.caption, ref.filename, ref.downloaded) == (
            kind,
            caption,
            filename,
            True,
        )
        served = await sim.client.get(file_path(payload["media"]["url"]))
        assert served.content == data


async def test_a_location_reads_as_a_location(make_sim: SimFactory, receiver: Receiver) -> None:
    fixture = load_fixture("message-media-location.json")["payload"]
    async with make_sim(webhook_urls=(receiver.url,)) as sim:
        place = {"latitude": -23.5613496, "longitude": -46.6563297, "name": "Clínica Paulista"}
        answer = await send(sim, location=place)
        payload = await payload_of(receiver, answer["message_id"])
        assert list(payload["location"]) == list(fixture["location"])
        assert (payload["hasMedia"], payload["media"], payload["body"]) == (False, None, "")
        raw = payload["_data"]["Message"]["locationMessage"]
        assert (raw["degreesLatitude"], raw["degreesLongitude"]) == (-23.5613496, -46.6563297)
        ref = describe(payload)
        assert ref is not None and ref.kind == "location" and ref.location is not None
        assert ref.location.public() == place
        [message] = (await sim.chat(CHAT))["messages"]
        assert message["location"]["name"] == "Clínica Paulista"


async def test_a_text_message_keeps_the_shape_of_the_waha_capture(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    async with make_sim(webhook_urls=(receiver.url,)) as sim:
        answer = await send(sim, text="Oi")
        payload = await payload_of(receiver, answer["message_id"])
        assert_same_keys(payload, load_fixture("message-text.json")["payload"], ordered=True)
        assert describe(payload) is None


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"media": "pix.jpg"}, "media must be an object"),
        ({"media": {"mimetype": "image/jpeg"}}, "base64"),
        ({"media": {"data": "not base64!", "mimetype": "image/jpeg"}}, "not valid base64"),
        ({"media": {"data": "", "mimetype": "image/jpeg"}}, "base64"),
        ({"media": {"data": b64(b"x"), "mimetype": "image/jpeg", "kind": "gif"}}, "media.kind"),
        ({"media": {"data": b64(b"x")}}, "mimetype"),
        ({"media": {"data": b64(b"x"), "mimetype": "jpeg"}}, "mimetype"),
        ({"media": {"data": b64(b"x"), "filename": ""}}, "filename"),
        ({"media": {"data": b64(b"x"), "kind": "voice"}, "text": "ouve"}, "no caption"),
        ({"location": {"latitude": 1, "longitude": 2}, "text": "aqui"}, "no caption"),
        ({"location": {"latitude": 91, "longitude": 2}}, "latitude"),
        ({"location": {"latitude": True, "longitude": 2}}, "latitude"),
        ({"location": {"latitude": 1}}, "longitude"),
        ({"location": [1, 2]}, "location must be an object"),
        (
            {"media": {"data": b64(b"x"), "mimetype": "image/png"}, "location": {}},
            "not both",
        ),
        ({"media": {"data": b64(b"x"), "mimetype": "image/png"}, "text": 5}, "text"),
    ],
)
async def test_a_bad_media_or_location_is_refused_and_nothing_is_kept(
    make_sim: SimFactory, receiver: Receiver, body: dict[str, Any], error: str
) -> None:
    async with make_sim(api_key=KEY, webhook_urls=(receiver.url,)) as sim:
        message_id = "AC3C8D12E04F5A6B7C8D9E0F1A2B3C4D"
        response = await sim.client.post(
            "/_sim/inbound", json={"phone": PHONE, "message_id": message_id, **body}
        )
        assert response.status_code == 400
        assert error in response.json()["error"]
        assert await sim.control("GET", "/chats") == []
        # No file under any name WAHA would have given it.
        for ext in ("jpeg", "png", "oga", "bin"):
            path = f"/api/files/default/false_{CHAT}_{message_id}.{ext}"
            missing = await sim.client.get(path, headers={"X-Api-Key": KEY})
            assert missing.status_code == 404
        assert (await sim.control("GET", "/webhooks"))["events"] == 0
        assert receiver.requests == []


async def test_an_unknown_file_is_nestjs_404_and_needs_the_key_first(make_sim: SimFactory) -> None:
    async with make_sim(api_key=KEY) as sim:
        path = f"/api/files/default/false_{CHAT}_NOPE.jpeg"
        assert (await sim.client.get(path)).status_code == 401
        missing = await sim.client.get(path, headers={"X-Api-Key": KEY})
        assert missing.status_code == 404
        assert missing.json() == {
            "message": f"Cannot GET {path}",
            "error": "Not Found",
            "statusCode": 404,
        }


async def test_api_faults_reach_the_files_route(make_sim: SimFactory, receiver: Receiver) -> None:
    async with make_sim(webhook_urls=(receiver.url,)) as sim:
        answer = await send(sim, text="", media={"data": b64(JPEG), "mimetype": "image/jpeg"})
        path = file_path(answer["media"]["url"])
        await sim.control(
            "POST",
            "/faults",
            json={"fail_next": {"count": 1, "status": 503, "paths": ["/api/files"]}},
        )
        assert (await sim.client.get(path)).status_code == 503
        assert (await sim.client.get(path)).content == JPEG


async def test_a_file_sent_while_the_session_is_down_is_delivered_and_served_later(
    make_sim: SimFactory, receiver: Receiver
) -> None:
    async with make_sim(webhook_urls=(receiver.url,), initial_status="STOPPED") as sim:
        answer = await send(sim, text="pix", media={"data": b64(JPEG), "mimetype": "image/jpeg"})
        assert answer["held"] is True and receiver.of("message") == []
        await sim.set_status("WORKING")
        payload = await payload_of(receiver, answer["message_id"])
        served = await sim.client.get(file_path(payload["media"]["url"]))
        assert served.content == JPEG


async def test_a_reset_forgets_the_files(make_sim: SimFactory, receiver: Receiver) -> None:
    async with make_sim(webhook_urls=(receiver.url,)) as sim:
        answer = await send(sim, text="", media={"data": b64(VOICE), "kind": "voice"})
        payload = await payload_of(receiver, answer["message_id"])
        await sim.control("POST", "/reset")
        gone = await sim.client.get(file_path(payload["media"]["url"]))
        assert gone.status_code == 404


async def test_a_file_above_the_cap_is_refused_before_anything_is_kept() -> None:
    config = SimConfig(announce=False)
    store = SimStore(max_file_bytes=1024)
    simulator = Simulator(config, store, WebhookDispatcher(config, Faults()))
    await simulator.start()
    try:
        for size in (1025, 4096):  # just above (decoded), far above (refused undecoded)
            media = {"data": b64(b"x" * size), "mimetype": "image/jpeg"}
            with pytest.raises(ControlError, match="larger than 1024 bytes"):
                await simulator.inbound({"phone": PHONE, "text": "", "media": media})
        assert store.files == {} and store.chats == {}
        answer, _ = await simulator.inbound(
            {
                "phone": PHONE,
                "text": "",
                "media": {"data": b64(b"x" * 1024), "kind": "image", "mimetype": "image/png"},
            }
        )
        assert answer["media"]["size"] == 1024 and len(store.files) == 1
    finally:
        await simulator.aclose()


def test_the_oldest_files_go_when_the_budget_is_full() -> None:
    store = SimStore(files_max_bytes=10)
    for name in ("a", "b", "c"):
        store.add_file("default", name, name.encode() * 4, "image/png")
    assert store.file("default", "a") is None
    assert [store.file("default", n) is not None for n in ("b", "c")] == [True, True]
    assert store.files_bytes == 8


def test_the_served_type_drops_parameters() -> None:
    store = SimStore()
    store.add_file("default", "x.oga", b"OggS", "audio/ogg; codecs=opus")
    stored = store.file("default", "x.oga")
    assert stored is not None and stored.content_type == "audio/ogg"


# --- wsm chat: /arquivo <path> [legenda] ---------------------------------------------------


def test_file_command_reads_the_path_and_the_caption(tmp_path: Path) -> None:
    assert file_command("oi") is None
    assert file_command("/arquivos de hoje") is None
    assert file_command("/arquivo pix.jpg") == (Path("pix.jpg"), "")
    assert file_command("/file pix.jpg  my receipt ") == (Path("pix.jpg"), "my receipt")
    assert file_command('/ARQUIVO "meu pix.jpg" comprovante d\'água') == (
        Path("meu pix.jpg"),
        "comprovante d'água",
    )
    assert file_command("/arquivo ~/a.pdf") == (Path.home() / "a.pdf", "")
    for line in ("/arquivo", "/arquivo   ", '/arquivo "sem fim.jpg'):
        with pytest.raises(LineNotSent):
            file_command(line)


async def as_typed(lines: list[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def test_chat_sends_a_file_as_the_customer_from_a_pipe(
    make_sim: SimFactory, receiver: Receiver, tmp_path: Path
) -> None:
    photo = tmp_path / "meu pix.jpg"
    photo.write_bytes(JPEG)
    voice = tmp_path / "nota.ogg"
    voice.write_bytes(VOICE)
    out = io.StringIO()
    async with make_sim(webhook_urls=(receiver.url,)) as sim:
        client = ChatClient(sim.client, PHONE, "default", out)
        lines = [
            f'/arquivo "{photo}" comprovante do Pix',
            f"/arquivo {tmp_path / 'missing.pdf'}",
            f"/file {voice} with a caption",  # a voice note has none: refused, not sent
            f"/file {voice}",
            "oi",
        ]
        # No bot answers here: every line times out quickly (3), a line not sent wins (4).
        code = await run_piped(client, as_typed(lines), timeout=0.05, quiet=0.01)
        assert code == 4

        messages = (await sim.chat(CHAT))["messages"]
        assert [(m["text"], (m["media"] or {}).get("kind")) for m in messages] == [
            ("comprovante do Pix", "image"),
            ("", "voice"),
            ("oi", None),
        ]
        first = await payload_of(receiver, messages[0]["id"])
        served = await sim.client.get(file_path(first["media"]["url"]))
        assert hashlib.sha256(served.content).digest() == hashlib.sha256(JPEG).digest()
        voice_payload = await payload_of(receiver, messages[1]["id"])
        assert voice_payload["_data"]["Message"]["audioMessage"]["PTT"] is True
