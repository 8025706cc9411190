"""Broadcast chats with WSM_IGNORE_BROADCASTS=false: kept in the history, never answered.

`status@broadcast` carries the statuses the business's contacts post, `<n>@broadcast` a
broadcast list and `<n>@newsletter` a channel. Anything sent back there (the menu, a greeting,
even a read receipt) would be public, not a reply to one customer."""

from __future__ import annotations

import pytest
import respx

from engine.history import read_page
from engine.outbox import history_keys
from shared.keys import engine_keys_for
from tests.engine.harness import WAHA, FakeWaha
from tests.support.waha import text_message

ANA = "5511987650072@c.us"


def posted(chat: str, text: str, message_id: str) -> dict:
    """A message in a broadcast chat, as WAHA gives one: the chat in `from`, the person who
    posted it in `participant`."""
    document = text_message(chat, text, message_id=message_id)
    document["payload"]["participant"] = ANA
    return document


@pytest.mark.parametrize("chat", ["status@broadcast", "120363041234567890@newsletter"])
async def test_not_ignored_broadcasts_are_recorded_and_never_answered(
    aredis, key_prefix, make_harness, chat
) -> None:
    with respx.mock(assert_all_called=False) as router:
        waha = FakeWaha(router)
        harness = make_harness(ignore_broadcasts=False)
        assert await harness.webhook(posted(chat, "Promoção de hoje!", "BCAST1"))
        await harness.drain()
        seen = router.post(f"{WAHA}/api/sendSeen").call_count  # before the control
        # The same engine still answers a customer (the test's control).
        await harness.say(ANA, "oi")
    assert waha.to(chat) == [] and seen == 0
    assert waha.to(ANA)
    keys = engine_keys_for("default", chat, 1, key_prefix)
    entries, _ = await read_page(aredis, history_keys(keys))
    assert [(e.direction, e.text) for e in entries] == [("in", "Promoção de hoje!")]
    assert await aredis.llen(keys.outbox) == 0


async def test_ignored_broadcasts_are_not_even_recorded(aredis, key_prefix, make_harness) -> None:
    with respx.mock(assert_all_called=False) as router:
        waha = FakeWaha(router)
        harness = make_harness()  # the default: WSM_IGNORE_BROADCASTS=true
        assert await harness.webhook(posted("status@broadcast", "Promoção", "BCAST2"))
        await harness.drain()
    assert waha.sent == []
    keys = engine_keys_for("default", "status@broadcast", 1, key_prefix)
    assert await aredis.exists(keys.history, keys.state) == 0
