"""What the console's pages do with input found by an audit: a history cursor or a live-channel
id Redis cannot take (it reached Redis, whose error made the page a 500), and a reply form sent
again with another text (dropped as a repeat of the first). On the real app and a real Redis,
no browser; the engine handles what is queued (tests/engine/harness.py), respx is WAHA."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import respx

from api.app import create_app
from api.console.channel import _valid_id
from engine.state import ConversationState, State, state_writes
from shared.keys import engine_keys_for
from tests.conftest import keys_with_prefix
from tests.console.support import app_login
from tests.engine.harness import FakeWaha, Harness, settings_for
from tests.support.asgi import served

TOKEN = "console-test-token-" + "x" * 32
CHAT = "5511901200078@c.us"
UNUSABLE = [
    "99999999999999999999999-0",  # past a 64-bit id
    "1-18446744073709551616",
    "18446744073709551615-18446744073709551615",  # nothing comes after it
    "\u0661-0",  # a digit, but not 0-9
]


@pytest.mark.parametrize("before", [*UNUSABLE, "0-0"])
async def test_a_history_cursor_redis_cannot_take_shows_the_newest_page(
    aredis: Any, redis_url: str, key_prefix: str, sync_redis: Any, before: str
) -> None:
    settings = settings_for(key_prefix, redis_url, api_token=TOKEN)
    key = engine_keys_for("default", CHAT, settings.queue_shards, key_prefix).state
    for write in state_writes(key, ConversationState(state=State.BOT), 3600):
        await aredis.execute_command(*write)
    app = create_app(settings, aredis)
    await app.state.console.accounts.add("chefe", "Chefe", "admin", "a long password")
    async with served(app, "http://console.test") as client:
        assert (await app_login(client, "chefe", "a long password")).status_code == 303
        newest = await client.get(f"/c/default/{CHAT}")
        stored = {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)}
        answer = await client.get(f"/c/default/{CHAT}", params={"before": before})
    assert answer.status_code == newest.status_code == 200
    # The conversation as it was: only the console's own bookkeeping of an opened page moves.
    after = {k: sync_redis.dump(k) for k in keys_with_prefix(sync_redis, key_prefix)}
    assert {k for k in after if after[k] != stored.get(k) and b"{console}" not in k} == set()


@pytest.mark.parametrize("value", UNUSABLE)
def test_a_live_channel_id_redis_cannot_take_is_none(value: str) -> None:
    # `since`, `last`, Last-Event-ID: an unusable one resumes from now (no backlog) instead of
    # failing the stream in Redis.
    assert _valid_id(value) == ""


@pytest.mark.parametrize("value", ["0-0", "1700000000000-3", "18446744073709551615-0"])
def test_a_live_channel_id_redis_takes_is_kept(value: str) -> None:
    assert _valid_id(value) == value


@pytest.fixture
def waha() -> Iterator[FakeWaha]:
    with respx.mock(assert_all_called=False, using="httpx") as router:
        router.route(host__in=("console.test",)).pass_through()
        yield FakeWaha(router)


@pytest.fixture
async def harness(aredis: Any, redis_url: str, key_prefix: str) -> AsyncIterator[Harness]:
    harness = Harness(aredis, settings_for(key_prefix, redis_url, api_token=TOKEN))
    yield harness
    await harness.aclose()


async def test_a_reply_form_sent_again_with_another_text_is_not_dropped(
    harness: Harness, waha: FakeWaha, aredis: Any
) -> None:
    """A reply's command is named after its form's nonce, so a double click sends once. A form
    sent again with another text (a failed request left it on the page; the agent edited the
    text) was answered like a sent one and never sent: it is a message of its own."""
    await harness.say(CHAT, "oi")
    app = create_app(harness.settings, aredis)
    await app.state.console.accounts.add("chefe", "Chefe", "admin", "a long password")
    before = len(waha.to(CHAT))
    async with served(app, "http://console.test") as client:
        assert (await app_login(client, "chefe", "a long password")).status_code == 303
        page = (await client.get(f"/c/default/{CHAT}")).text
        found = re.search(r'"X-CSRF-Token": ?"([^"]+)"', page)
        assert found, page
        csrf = {"X-CSRF-Token": found[1]}
        for text in ("Oi, tudo bem?", "Oi, tudo bem?", "Oi Carla, tudo bem?"):
            sent = await client.post(
                f"/c/default/{CHAT}/reply", data={"text": text, "nonce": "n1"}, headers=csrf
            )
            assert sent.status_code == 200, sent.text
    await harness.drain()
    assert waha.to(CHAT)[before:] == ["Oi, tudo bem?", "Oi Carla, tudo bem?"]
