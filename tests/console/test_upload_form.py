"""The console's file upload reads its form as the API's media route does (api/forms.py): a body
cut short before its closing boundary is refused, not read as the whole form (a file sent
without the caption that came after it). With the CSRF token in the form rather than in the
header (a form sent without the console's script), the token check reads the form first and
the upload reads it again. On the real app and a real Redis, no browser; the engine handles
what is queued (tests/engine/harness.py), respx is WAHA."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from api.app import create_app
from tests.api.test_media_api import media_keys, multipart, queued, stored_files
from tests.conftest import keys_with_prefix
from tests.console.support import app_login
from tests.engine.harness import FakeWaha, Harness, settings_for
from tests.engine.media_send_support import PNG, MediaWaha
from tests.support.asgi import served

TOKEN = "console-test-token-" + "x" * 32
CHAT = "5511901200079@c.us"
PAGE = f"/c/default/{CHAT}"


@pytest.fixture
def wahas() -> Iterator[tuple[FakeWaha, MediaWaha]]:
    with respx.mock(assert_all_called=False, using="httpx") as router:
        router.route(host__in=("console.test",)).pass_through()
        yield FakeWaha(router), MediaWaha(router)


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    return tmp_path / "media"


@pytest.fixture
async def harness(
    aredis: Any, redis_url: str, key_prefix: str, media_dir: Path
) -> AsyncIterator[Harness]:
    settings = settings_for(key_prefix, redis_url, api_token=TOKEN, media_dir=media_dir)
    harness = Harness(aredis, settings)
    yield harness
    await harness.aclose()


async def console_upload(
    harness: Harness, aredis: Any, body_of: Any, *, csrf_header: bool
) -> tuple[int, str]:
    """Log in, open the conversation, post the body `body_of(csrf)` gives to its upload route
    while the engine works; the answer's status and the refusal's reason ("" for none)."""
    app = create_app(harness.settings, aredis)
    await app.state.console.accounts.add("chefe", "Chefe", "admin", "a long password")
    async with served(app, "http://console.test") as client:
        assert (await app_login(client, "chefe", "a long password")).status_code == 303
        page = (await client.get(PAGE)).text
        found = re.search(r'"X-CSRF-Token": ?"([^"]+)"', page)
        assert found, page
        body, content_type = body_of(found[1])
        headers = {"Content-Type": content_type}
        if csrf_header:
            headers["X-CSRF-Token"] = found[1]
        task = asyncio.ensure_future(client.post(f"{PAGE}/media", content=body, headers=headers))
        while not task.done():
            await harness.drain()
            await asyncio.sleep(0.01)
        answer: httpx.Response = task.result()
    reason = re.search(r'data-testid="media-upload-error" data-reason="([^"]*)"', answer.text)
    return answer.status_code, reason[1] if reason else ""


def form(csrf: str) -> tuple[bytes, str]:
    return multipart(
        ("csrf", (None, csrf.encode(), None)),
        ("nonce", (None, b"n-upload-1", None)),
        ("file", ("pix.png", PNG, "image/png")),
        ("caption", (None, b"Seu comprovante", None)),
    )


def cut_in_the_caption(csrf: str) -> tuple[bytes, str]:
    body, content_type = form(csrf)
    return body[: body.index(b"Seu comprovante") + 3], content_type


@pytest.mark.parametrize("csrf_header", [True, False], ids=["token in header", "token in form"])
async def test_an_upload_cut_short_is_refused_and_stores_nothing(
    harness: Harness, wahas: tuple[FakeWaha, MediaWaha], aredis: Any, sync_redis: Any,
    key_prefix: str, media_dir: Path, csrf_header: bool,
) -> None:  # fmt: skip
    _, files = wahas
    await harness.say(CHAT, "oi")
    before = {
        k: sync_redis.dump(k)
        for k in keys_with_prefix(sync_redis, key_prefix)
        if b"{console}" not in k
    }
    status, reason = await console_upload(
        harness, aredis, cut_in_the_caption, csrf_header=csrf_header
    )
    assert (status, reason) == (200, "invalid_form")
    await harness.drain()
    assert stored_files(media_dir) == [] and media_keys(sync_redis, key_prefix) == []
    assert queued(sync_redis, key_prefix) == []
    after = {
        k: sync_redis.dump(k)
        for k in keys_with_prefix(sync_redis, key_prefix)
        if b"{console}" not in k
    }
    assert after == before
    assert files.bodies() == []


async def test_a_whole_upload_with_its_token_in_the_form_is_sent_with_its_caption(
    harness: Harness, wahas: tuple[FakeWaha, MediaWaha], aredis: Any
) -> None:
    """Control, and the token check's own read: the form is read twice, whole both times."""
    _, files = wahas
    await harness.say(CHAT, "oi")
    status, reason = await console_upload(harness, aredis, form, csrf_header=False)
    assert (status, reason) == (200, "")
    [sent] = files.bodies("sendImage")
    assert sent["caption"] == "Seu comprovante"
