"""The media tests' stand-ins and readers, shared by tests/engine/media/ and the agent's media
turns (tests/engine/agent/test_media_turns.py): WAHA's /api/files/ behind its API key, Groq's
transcription endpoint answering as Groq does, WAHA's media bodies and the history they end in."""

from __future__ import annotations

import copy
import email.parser
import email.policy
import uuid
from typing import Any

import httpx
import respx

from engine.history import HistoryEntry, HistoryKeys, read_page
from shared.keys import engine_keys_for
from tests.engine.harness import WAHA
from tests.support.waha import load_fixture

KEY = "waha-test-api-key"
JPEG = b"\xff\xd8\xff\xe0" + b"pix" * 400
OGG = b"OggS" + b"\x00voice" * 300
GROQ = "https://groq.test"
TRANSCRIPTIONS_URL = f"{GROQ}/openai/v1/audio/transcriptions"
VOICE_MIME = "audio/ogg; codecs=opus"
# The first bytes of a real Opus-in-Ogg voice note (an Ogg page header, then OpusHead): the
# stand-in does not decode it, but it checks that these exact bytes arrive.
VOICE = (
    b"OggS\x00\x02" + b"\x00" * 20 + b"\x01\x13OpusHead\x01\x01\x38\x01\x80\xbb" + bytes(range(256))
)


def groq_text(text: str) -> httpx.Response:
    return httpx.Response(
        200, json={"text": text, "x_groq": {"id": f"req_{uuid.uuid4().hex[:26]}"}}
    )


def groq_error(status: int, message: str, type_: str, code: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"message": message, "type": type_}
    if code is not None:
        body["code"] = code
    return httpx.Response(status, json={"error": body})


def form_of(request: httpx.Request) -> dict[str, tuple[str | None, str, bytes]]:
    """The multipart form Groq received: field -> (filename, content type, bytes)."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.content)
    assert message.is_multipart()
    form: dict[str, tuple[str | None, str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(name, str) and isinstance(payload, bytes)
        form[name] = (part.get_filename(), part.get_content_type(), payload)
    return form


class FakeWhisper:
    """The transcription endpoint: answers queued with `then`, in order."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.requests: list[httpx.Request] = []
        self.answers: list[httpx.Response | Exception] = []
        router.post(TRANSCRIPTIONS_URL).mock(side_effect=self._handle)

    def then(self, *answers: httpx.Response | Exception) -> FakeWhisper:
        self.answers.extend(answers)
        return self

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            raise AssertionError("unexpected transcription request")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class WahaFiles:
    """WAHA's /api/files/: the bytes of downloaded media, behind its API key."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.timeouts = False
        self.requests: list[httpx.Request] = []
        router.get(url__startswith=f"{WAHA}/api/files/").mock(side_effect=self._serve)

    def _serve(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.timeouts:
            raise httpx.ReadTimeout("WAHA did not answer", request=request)
        if request.headers.get("x-api-key") != KEY:
            return httpx.Response(401, json={"message": "Unauthorized"})
        found = self.files.get(request.url.path)
        if found is None:
            return httpx.Response(404, json={"message": "Not Found"})
        return httpx.Response(200, content=found[0], headers={"content-type": found[1]})


def served(files: WahaFiles, document: dict[str, Any], data: bytes, mimetype: str) -> str:
    """Point the body's media at WAHA's files (as WAHA_BASE_URL names them) and serve it."""
    payload = document["payload"]
    path = f"/api/files/{document['session']}/{payload['id']}.bin"
    payload["media"]["url"] = f"http://localhost:3000{path}"
    files.files[path] = (data, mimetype)
    return path


def image() -> dict[str, Any]:
    return copy.deepcopy(load_fixture("message-media-image.json"))


def served_image(files: WahaFiles) -> dict[str, Any]:
    """WAHA's body of a customer's photo, its file served as a JPEG."""
    document = image()
    served(files, document, JPEG, "image/jpeg")
    return document


def voice() -> dict[str, Any]:
    return copy.deepcopy(load_fixture("message-media-voice.json"))


def chat_of(document: dict[str, Any]) -> tuple[str, str]:
    return document["session"], document["payload"]["from"]


async def history(aredis, prefix: str, document: dict[str, Any]) -> list[HistoryEntry]:
    session, chat = chat_of(document)
    keys = engine_keys_for(session, chat, 1, prefix)
    page, _ = await read_page(aredis, HistoryKeys(keys.history, keys.history_meta))
    return page
