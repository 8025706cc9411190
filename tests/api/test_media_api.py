"""Stored media over the operator API, and agents sending files: real Redis, the API app, the
engine handling what the API queues (tests/engine/harness.py) and respx as WAHA, answering
with WAHA's shapes (tests/fixtures/waha/api/).

Every refusal is checked to leave nothing behind: no file in the store, no media index entry,
no command queued."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from fastapi import FastAPI

from api.app import create_app
from engine import parts as engine_parts
from engine.media.store import MediaKeys
from engine.sender import WAHA_PLUS_REQUIRED
from shared.keys import WahaSessionKeys, conversation_token, engine_keys_for
from tests.api.conftest import API_AUTH, API_TOKEN
from tests.conftest import keys_with_prefix
from tests.engine.harness import FakeWaha, Harness, settings_for
from tests.engine.media_send_support import PDF, PNG, MediaWaha
from tests.support.asgi import served

ANA = "5511987650001@c.us"
BIA = "5511987650002@c.us"
MEDIA = f"/api/conversations/default/{ANA}/media"


@pytest.fixture
def wahas() -> Iterator[tuple[FakeWaha, MediaWaha]]:
    with respx.mock(assert_all_called=False) as router:
        yield FakeWaha(router), MediaWaha(router)


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    return tmp_path / "media"


@pytest.fixture
def settings(key_prefix: str, redis_url: str, media_dir: Path) -> Any:
    return settings_for(key_prefix, redis_url, api_token=API_TOKEN, media_dir=media_dir)


@pytest.fixture
async def harness(aredis: Any, settings: Any) -> AsyncIterator[Harness]:
    harness = Harness(aredis, settings)
    yield harness
    await harness.aclose()


@pytest.fixture
def app(aredis: Any, settings: Any) -> FastAPI:
    return create_app(settings, aredis)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with served(app) as http:
        yield http


async def while_the_fleet_works(harness: Harness, request: Any) -> httpx.Response:
    """Run an API request while the engine handles what is queued (as the worker fleet would),
    until the request is answered."""
    task = asyncio.ensure_future(request)
    while not task.done():
        await harness.drain()
        await asyncio.sleep(0.01)
    return task.result()


def upload(data: bytes, mimetype: str, name: str = "pix.png", **fields: str) -> dict[str, Any]:
    return {
        "files": {"file": (name, data, mimetype)},
        "data": {"agent_id": "maria", **fields},
    }


def stored_files(media_dir: Path) -> list[Path]:
    return sorted(p for p in media_dir.rglob("*") if p.is_file()) if media_dir.exists() else []


def media_keys(sync_redis: Any, prefix: str) -> list[bytes]:
    return sorted(sync_redis.scan_iter(match=f"{MediaKeys(prefix).tag}:*", count=1000))


def queued(sync_redis: Any, prefix: str) -> list[bytes]:
    """Every message queued to a conversation (commands included), by its id."""
    found: list[bytes] = []
    for key in sync_redis.scan_iter(match=f"{prefix}:*:c:*:msgs", count=1000):
        found += sync_redis.lrange(key, 0, -1)
    return found


async def test_an_image_is_sent_and_served_back_with_its_bytes_and_type(
    harness: Harness, client: httpx.AsyncClient, wahas: tuple[FakeWaha, MediaWaha],
    media_dir: Path,
) -> None:  # fmt: skip
    _, files = wahas
    await harness.say(ANA, "oi")
    answer = await while_the_fleet_works(harness, client.post(
        MEDIA, headers=API_AUTH, **upload(PNG, "image/png", caption="Seu comprovante")
    ))  # fmt: skip
    assert answer.status_code == 201, answer.text
    sent = answer.json()
    assert sent["status"] == "sent" and sent["kind"] == "image"
    [body] = files.bodies("sendImage")
    assert body["caption"] == "Seu comprovante" and body["file"]["mimetype"] == "image/png"
    assert len(stored_files(media_dir)) == 1

    # The history names the file; the API serves the same bytes with the same type.
    page = (await client.get(f"/api/conversations/default/{ANA}/messages", headers=API_AUTH)).json()
    [item] = [m for m in page["messages"] if m["kind"] == "image"]
    assert item["media"]["id"] == sent["media_id"] and item["status"] == "sent"
    for path in (f"/api/media/{sent['media_id']}", f"{MEDIA}/{sent['media_id']}"):
        served = await client.get(path, headers=API_AUTH)
        assert served.status_code == 200
        assert served.content == PNG
        assert served.headers["content-type"] == "image/png"
        assert served.headers["x-content-type-options"] == "nosniff"
        assert served.headers["content-disposition"].startswith("inline")
        # Without the token: 401, before anything is read.
        assert (await client.get(path)).status_code == 401
        assert (
            await client.get(path, headers={"Authorization": "Bearer wrong"})
        ).status_code == 401
    # Another conversation's route does not reach it; unknown and malformed ids.
    other = await client.get(f"/api/conversations/default/{BIA}/media/{sent['media_id']}",
                             headers=API_AUTH)  # fmt: skip
    assert other.status_code == 404
    assert (await client.get(f"/api/media/{'0' * 32}", headers=API_AUTH)).status_code == 404
    assert (await client.get("/api/media/..%2Fetc", headers=API_AUTH)).status_code in (404, 422)
    assert (await client.get("/api/media/NOT-AN-ID", headers=API_AUTH)).status_code == 422


async def test_a_document_is_served_as_a_download_with_its_name(
    harness: Harness, client: httpx.AsyncClient, wahas: tuple[FakeWaha, MediaWaha]
) -> None:
    _, files = wahas
    await harness.say(ANA, "oi")
    answer = await while_the_fleet_works(harness, client.post(
        MEDIA, headers=API_AUTH, **upload(PDF, "application/pdf", "Exame de sangue.pdf")
    ))  # fmt: skip
    assert answer.status_code == 201, answer.text
    [body] = files.bodies("sendFile")
    assert body["file"]["filename"] == "Exame de sangue.pdf"
    served = await client.get(f"/api/media/{answer.json()['media_id']}", headers=API_AUTH)
    assert served.content == PDF and served.headers["content-type"] == "application/pdf"
    assert served.headers["content-disposition"].startswith('attachment; filename="Exame de')


@pytest.mark.parametrize(
    ("filename", "mimetype", "served_type"),
    [
        ("exame\r\nX-Injected: 1.pdf", "application/pdf", "application/pdf"),
        ("laudo.pdf", "application/pdf\r\nX-Injected: 1", "application/octet-stream"),
    ],
)
async def test_a_name_or_type_with_a_line_break_is_served_safely(
    aredis: Any, settings: Any, client: httpx.AsyncClient,
    filename: str, mimetype: str, served_type: str,
) -> None:  # fmt: skip
    """A customer's file keeps the name and type WAHA gave it; one with a line break must
    neither break the answer's headers (the server would refuse to send them: the attendant
    could not download it) nor add a header of its own (found by an audit)."""
    library = engine_parts.media_library(aredis, settings)
    stored = await library.save(
        conversation_token("default", ANA), PDF, mimetype, filename, message_id="M1"
    )
    served = await client.get(f"/api/media/{stored.id}", headers=API_AUTH)
    assert served.status_code == 200 and served.content == PDF
    assert served.headers["content-type"] == served_type
    assert "x-injected" not in served.headers
    for value in served.headers.values():
        assert "\r" not in value and "\n" not in value
    disposition = served.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="')
    assert "filename*=UTF-8''" in disposition


async def test_a_player_gets_the_byte_ranges_it_asks_for(
    aredis: Any, settings: Any, client: httpx.AsyncClient
) -> None:
    """Audio and video players ask for parts of the file (Safari plays nothing without 206
    answers, and seeking needs them everywhere: found by an audit)."""
    library = engine_parts.media_library(aredis, settings)
    data = bytes(range(256)) * 4
    stored = await library.save(
        conversation_token("default", ANA), data, "audio/ogg", None, message_id="M2"
    )
    path = f"/api/media/{stored.id}"

    async def get(range_: str | None) -> httpx.Response:
        headers = {**API_AUTH, **({"Range": range_} if range_ else {})}
        return await client.get(path, headers=headers)

    whole = await get(None)
    assert (whole.status_code, whole.content) == (200, data)
    assert whole.headers["accept-ranges"] == "bytes"
    for asked, first, last in (
        ("bytes=0-1", 0, 1),
        ("bytes=100-", 100, 1023),
        ("bytes=-24", 1000, 1023),
        ("bytes=1000-5000", 1000, 1023),
    ):
        part = await get(asked)
        assert part.status_code == 206, asked
        assert part.content == data[first : last + 1], asked
        assert part.headers["content-range"] == f"bytes {first}-{last}/1024", asked
        assert part.headers["content-type"] == "audio/ogg"
    for past in ("bytes=1024-", "bytes=-0", "bytes=5-2"):
        refused = await get(past)
        assert refused.status_code == 416, past
        assert refused.headers["content-range"] == "bytes */1024"
    # Several ranges, or one we do not read: the whole file, as a server may always answer.
    for ignored in ("bytes=0-1,5-6", "items=0-1", "bytes=-"):
        assert (await get(ignored)).content == data, ignored
    # Without the token a range changes nothing: 401.
    assert (await client.get(path, headers={"Range": "bytes=0-1"})).status_code == 401


async def test_a_console_session_reads_media_too(
    harness: Harness, app: FastAPI, client: httpx.AsyncClient, wahas: tuple[FakeWaha, MediaWaha]
) -> None:
    await harness.say(ANA, "oi")
    answer = await while_the_fleet_works(
        harness, client.post(MEDIA, headers=API_AUTH, **upload(PNG, "image/png"))
    )
    media_id = answer.json()["media_id"]
    path = f"/api/media/{media_id}"
    conversation_path = f"/api/conversations/default/{ANA}/media/{media_id}"
    console = app.state.console

    async def logged_in(agent_id: str, role: str) -> str:
        account = await console.accounts.add(agent_id, agent_id.title(), role, "a long pass 123")
        cookie = console.sessions.cookie_value(await console.sessions.create(account))
        client.cookies.set("wsm_console", cookie)
        return cookie

    # Maria sent the file, so Ana's conversation is hers: she reads it by either route.
    cookie = await logged_in("maria", "agent")
    served = await client.get(path)
    assert served.status_code == 200 and served.content == PNG
    assert (await client.get(conversation_path)).content == PNG
    # The console shows Joana neither Ana's conversation nor, then, its files (404, as for an
    # unknown id); an admin sees every conversation.
    await logged_in("joana", "agent")
    assert (await client.get(path)).status_code == 404
    assert (await client.get(conversation_path)).status_code == 404
    await logged_in("chefe", "admin")
    assert (await client.get(path)).content == PNG
    client.cookies.set("wsm_console", cookie[:-2] + "00")  # tampered: no session
    assert (await client.get(path)).status_code == 401
    await console.sessions.end(console.sessions.sid_from(cookie) or "", "maria")
    client.cookies.set("wsm_console", cookie)  # logged out
    assert (await client.get(path)).status_code == 401


async def test_waha_core_is_told_clearly_and_the_next_file_is_refused_at_once(
    harness: Harness, client: httpx.AsyncClient, wahas: tuple[FakeWaha, MediaWaha],
    media_dir: Path, sync_redis: Any, key_prefix: str,
) -> None:  # fmt: skip
    _, files = wahas
    files.core = True
    await harness.say(ANA, "oi")
    first = await while_the_fleet_works(
        harness, client.post(MEDIA, headers=API_AUTH, **upload(PNG, "image/png"))
    )
    assert first.status_code == 422
    assert first.json()["error"] == WAHA_PLUS_REQUIRED
    assert first.json()["detail"] == "this WAHA does not send files (WAHA Plus feature)"
    assert len(files.bodies()) == 1
    flag = WahaSessionKeys("default", key_prefix).files_refused
    assert sync_redis.exists(flag)

    files_before, index_before = stored_files(media_dir), media_keys(sync_redis, key_prefix)
    queued_before = queued(sync_redis, key_prefix)
    second = await client.post(MEDIA, headers=API_AUTH, **upload(PDF, "application/pdf", "a.pdf"))
    assert second.status_code == 422
    assert second.json() == {
        "error": "waha_plus_required",
        "detail": "this WAHA does not send files (WAHA Plus feature)",
    }
    await harness.drain()
    assert len(files.bodies()) == 1  # nothing more asked of WAHA
    assert stored_files(media_dir) == files_before
    assert media_keys(sync_redis, key_prefix) == index_before
    assert queued(sync_redis, key_prefix) == queued_before == []


async def test_no_outcome_in_time_answers_202_and_the_file_still_goes_once(
    aredis: Any, harness: Harness, wahas: tuple[FakeWaha, MediaWaha], key_prefix: str,
    redis_url: str, media_dir: Path,
) -> None:  # fmt: skip
    _, files = wahas
    settings = settings_for(key_prefix, redis_url, api_token=API_TOKEN, media_dir=media_dir,
                            media_send_wait_seconds=0)  # fmt: skip
    app = create_app(settings, aredis)
    await harness.say(ANA, "oi")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api.test") as client:  # fmt: skip
        key = {"Idempotency-Key": "upload-1"}
        answer = await client.post(MEDIA, headers=API_AUTH | key, **upload(PNG, "image/png"))
        assert answer.status_code == 202 and answer.json()["status"] == "queued"
        # A retry with the same key is the same command: queued once, same ids.
        again = await client.post(MEDIA, headers=API_AUTH | key, **upload(PNG, "image/png"))
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["message_id"] == answer.json()["message_id"]
        await harness.drain()
        assert len(files.bodies("sendImage")) == 1
        done = await client.post(MEDIA, headers=API_AUTH | key, **upload(PNG, "image/png"))
        assert done.status_code == 201 and done.json()["status"] == "sent"


BIG = b"\xff\xd8\xff" + b"\x00" * 2048


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "error"),
    [
        ("too big", upload(BIG, "image/jpeg", "big.jpg"), 413, "file_too_large"),
        ("bad type", upload(b"<svg onload=alert(1)>", "image/svg+xml", "x.svg"), 415,
         "unsupported_type"),
        ("type mismatch", upload(b"MZ\x90\x00 not a png", "image/png"), 415, "type_mismatch"),
        ("empty", upload(b"", "image/png"), 422, "empty_file"),
        ("no file", {"data": {"agent_id": "maria"}, "files": {"other": ("a", b"a", "text/plain")}},
         422, "no_file"),
        ("not multipart", {"json": {"agent_id": "maria"}}, 422, "no_file"),
        ("no agent", {"files": {"file": ("pix.png", PNG, "image/png")}}, 422, "invalid_agent_id"),
        # Found by an audit: a field the form does not take (a typo) was dropped unseen.
        ("unknown field", upload(PNG, "image/png", captoin="Seu comprovante"), 422,
         "unknown_field"),
    ],
)  # fmt: skip
async def test_a_refused_file_leaves_nothing_behind(
    aredis: Any, harness: Harness, wahas: tuple[FakeWaha, MediaWaha], key_prefix: str,
    redis_url: str, media_dir: Path, sync_redis: Any, case: str,
    request_kwargs: dict[str, Any], status: int, error: str,
) -> None:  # fmt: skip
    _, files = wahas
    settings = settings_for(key_prefix, redis_url, api_token=API_TOKEN, media_dir=media_dir,
                            media_max_bytes=1024)  # fmt: skip
    await harness.say(ANA, "oi")
    index_before = media_keys(sync_redis, key_prefix)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings, aredis)),
                                 base_url="http://api.test") as client:  # fmt: skip
        answer = await client.post(MEDIA, headers=API_AUTH, **request_kwargs)
    assert answer.status_code == status, (case, answer.text)
    assert answer.json()["error"] == error
    await harness.drain()
    assert stored_files(media_dir) == []
    assert media_keys(sync_redis, key_prefix) == index_before == []
    assert queued(sync_redis, key_prefix) == []
    assert files.bodies() == []


async def test_an_unknown_conversation_or_no_token_stores_nothing(
    client: httpx.AsyncClient, harness: Harness, media_dir: Path, sync_redis: Any,
    key_prefix: str, wahas: tuple[FakeWaha, MediaWaha],
) -> None:  # fmt: skip
    await harness.say(ANA, "oi")
    before = keys_with_prefix(sync_redis, key_prefix)
    unknown = await client.post(f"/api/conversations/default/{BIA}/media", headers=API_AUTH,
                                **upload(PNG, "image/png"))  # fmt: skip
    assert unknown.status_code == 404
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = await client.post(MEDIA, headers=headers, **upload(PNG, "image/png"))
        assert refused.status_code == 401
    malformed = await client.post("/api/conversations/default/not-a-chat/media",
                                  headers=API_AUTH, **upload(PNG, "image/png"))  # fmt: skip
    assert malformed.status_code == 422
    assert stored_files(media_dir) == []
    assert keys_with_prefix(sync_redis, key_prefix) == before
    keys = engine_keys_for("default", BIA, harness.settings.queue_shards, key_prefix)
    assert not sync_redis.exists(keys.state)


async def test_erasing_the_customer_through_the_api_removes_her_files(
    harness: Harness, client: httpx.AsyncClient, wahas: tuple[FakeWaha, MediaWaha],
    media_dir: Path, sync_redis: Any, key_prefix: str,
) -> None:  # fmt: skip
    # DELETE /api/contacts/... hands the media library to the erase (LGPD): her stored files
    # and their index go; another customer's stay.
    for chat in (ANA, BIA):
        await harness.say(chat, "oi")
        answer = await while_the_fleet_works(harness, client.post(
            f"/api/conversations/default/{chat}/media", headers=API_AUTH,
            **upload(PNG if chat == ANA else PDF,
                     "image/png" if chat == ANA else "application/pdf"),
        ))  # fmt: skip
        assert answer.status_code == 201, answer.text
    page = (await client.get(f"/api/conversations/default/{ANA}/messages", headers=API_AUTH)).json()
    [ana_media] = [m["media"]["id"] for m in page["messages"] if m["kind"] == "image"]
    assert len(stored_files(media_dir)) == 2
    erased = await client.delete(f"/api/contacts/default/{ANA}", headers=API_AUTH)
    assert erased.status_code == 200, erased.text
    assert len(stored_files(media_dir)) == 1  # Bia's document
    assert (await client.get(f"/api/media/{ana_media}", headers=API_AUTH)).status_code == 404
    assert len(media_keys(sync_redis, key_prefix)) > 0  # Bia's index entries


async def test_a_key_reused_for_another_file_is_refused_and_nothing_is_stored(
    harness: Harness, client: httpx.AsyncClient, wahas: tuple[FakeWaha, MediaWaha],
    media_dir: Path, sync_redis: Any, key_prefix: str,
) -> None:  # fmt: skip
    """Found by an audit: a second file under the key of a first was stored and indexed under
    the conversation, never sent, and answered 201 "sent" with its own media id. It is refused
    before anything is stored; the first file's retries answer as before."""
    _, files = wahas
    await harness.say(ANA, "oi")
    headers = API_AUTH | {"Idempotency-Key": "pix-42"}
    first = await while_the_fleet_works(
        harness, client.post(MEDIA, headers=headers, **upload(PNG, "image/png"))
    )
    assert first.status_code == 201, first.text
    files_before, keys_before = stored_files(media_dir), keys_with_prefix(sync_redis, key_prefix)
    dumps_before = {k: sync_redis.dump(k) for k in keys_before}
    for other in (
        upload(PDF, "application/pdf", "boleto.pdf"),
        upload(PNG, "image/png", caption="outra legenda"),
    ):
        refused = await client.post(MEDIA, headers=headers, **other)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"] == "idempotency_key_reused"
        await harness.drain()
        assert stored_files(media_dir) == files_before
        assert {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)} == (
            dumps_before
        )
    again = await client.post(MEDIA, headers=headers, **upload(PNG, "image/png"))
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert len(files.bodies("sendImage")) == 1 and files.bodies("sendFile") == []


def multipart(*parts: tuple[str, tuple[str | None, bytes, str | None]]) -> tuple[bytes, str]:
    """A multipart body of `parts` in this order (httpx's encoder), and its Content-Type."""
    request = httpx.Request("POST", "http://api.test", files=list(parts))
    return request.read(), request.headers["content-type"]


FILE_FIRST, FORM_TYPE = multipart(
    ("file", ("pix.png", PNG, "image/png")),
    ("agent_id", (None, b"maria", None)),
    ("caption", (None, b"Seu comprovante", None)),
)
BOUNDARY = FORM_TYPE.split("boundary=", 1)[1]
TWO_FILES = multipart(("file", ("a.png", PNG, "image/png")), ("file", ("b.png", PNG, "image/png")))


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        pytest.param(FILE_FIRST, FORM_TYPE.replace(BOUNDARY, "another-boundary"),
                     "its parts are not separated by the boundary", id="wrong boundary"),
        pytest.param(FILE_FIRST, "multipart/form-data", "names no multipart boundary",
                     id="no boundary"),
        # Cut inside the caption: the file and agent_id before it are whole; it would have
        # been sent without its caption.
        pytest.param(FILE_FIRST[: FILE_FIRST.index(b"Seu comprovante") + 3], FORM_TYPE,
                     "ends before its closing boundary", id="truncated in a field"),
        pytest.param(FILE_FIRST[:-4], FORM_TYPE, "ends before its closing boundary",
                     id="truncated in the closing boundary"),
        pytest.param(b"not a form at all", FORM_TYPE, "not separated by the boundary",
                     id="not multipart"),
        pytest.param(FILE_FIRST.replace(b'name="caption"', b'filename="x.txt"'), FORM_TYPE,
                     "the content-disposition header field", id="a part without a name"),
        pytest.param(*TWO_FILES, "too many files", id="two files"),
    ],
)  # fmt: skip
async def test_a_broken_multipart_body_is_refused_in_the_apis_shape_and_stores_nothing(
    harness: Harness, client: httpx.AsyncClient, wahas: tuple[FakeWaha, MediaWaha],
    media_dir: Path, sync_redis: Any, key_prefix: str, body: bytes, content_type: str,
    reason: str,
) -> None:  # fmt: skip
    """Found by an audit: a body Starlette could not parse got its own 400 `{"detail": …}`, not
    the API's `{"error", "detail"}`; and a body cut short was read as the whole form (a file
    sent without the caption that came after it). 422 `invalid_form`, nothing stored: no file,
    no index entry, no command, no history or outbox entry, nothing sent."""
    _, files = wahas
    await harness.say(ANA, "oi")
    before = {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)}
    answer = await client.post(
        MEDIA, headers=API_AUTH | {"Content-Type": content_type}, content=body
    )
    assert answer.status_code == 422, answer.text
    refusal = answer.json()
    assert refusal["error"] == "invalid_form", refusal
    assert refusal["detail"].startswith("not a readable multipart form: ")
    assert reason in refusal["detail"].lower()
    await harness.drain()
    assert stored_files(media_dir) == []
    assert media_keys(sync_redis, key_prefix) == []
    assert queued(sync_redis, key_prefix) == []
    assert {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)} == before
    assert files.bodies() == []


async def test_a_whole_form_with_its_file_first_is_sent_with_its_caption(
    harness: Harness, client: httpx.AsyncClient, wahas: tuple[FakeWaha, MediaWaha],
) -> None:  # fmt: skip
    """The same body as above, not cut: parts in any order are one form."""
    _, files = wahas
    await harness.say(ANA, "oi")
    answer = await while_the_fleet_works(harness, client.post(
        MEDIA, headers=API_AUTH | {"Content-Type": FORM_TYPE}, content=FILE_FIRST
    ))  # fmt: skip
    assert answer.status_code == 201, answer.text
    [sent] = files.bodies("sendImage")
    assert sent["caption"] == "Seu comprovante"
