"""Conversation identity: chat id forms, ignored chats, and lid -> phone through WAHA, cached."""

from __future__ import annotations

import httpx
import respx

from engine.identity import ChatKind, PhoneResolver, chat_kind, is_ignored, phone_of, send_target
from engine.state import load_state
from engine.waha_client import WahaClient
from shared.keys import WahaSessionKeys, conversation_token, engine_keys_for
from tests.support.waha import text_message

WAHA = "http://waha.test"


def test_chat_kinds_and_phone_numbers() -> None:
    assert chat_kind("5511987650052@c.us") is ChatKind.PHONE
    assert chat_kind("5511987650052@s.whatsapp.net") is ChatKind.PHONE
    assert chat_kind("200000000000002@lid") is ChatKind.LID
    assert chat_kind("120363000000000002@g.us") is ChatKind.GROUP
    assert chat_kind("status@broadcast") is ChatKind.BROADCAST
    assert chat_kind("123@newsletter") is ChatKind.BROADCAST
    assert chat_kind("_session") is ChatKind.OTHER
    assert phone_of("5511987650052@c.us") == "5511987650052"
    assert phone_of("5511930000002:22@s.whatsapp.net") == "5511930000002"
    assert phone_of("200000000000002@lid") is None
    assert send_target("5511987650052@s.whatsapp.net") == "5511987650052@c.us"
    assert send_target("200000000000002@lid") == "200000000000002@lid"


def test_groups_and_broadcasts_ignored_by_default_but_configurable() -> None:
    default = {"ignore_groups": True, "ignore_broadcasts": True}
    assert is_ignored("120363000000000002@g.us", **default)
    assert is_ignored("status@broadcast", **default)
    assert not is_ignored("5511987650052@c.us", **default)
    assert not is_ignored("200000000000002@lid", **default)
    assert not is_ignored("120363000000000002@g.us", ignore_groups=False, ignore_broadcasts=True)
    assert not is_ignored("status@broadcast", ignore_groups=True, ignore_broadcasts=False)


@respx.mock
async def test_lid_is_resolved_through_waha_once_and_cached(aredis, key_prefix) -> None:
    route = respx.get(f"{WAHA}/api/default/lids/123456789%40lid").mock(
        return_value=httpx.Response(200, json={"lid": "123456789@lid", "pn": "5511987650052@c.us"})
    )
    waha = WahaClient(WAHA, api_key="k")
    resolver = PhoneResolver(aredis, waha, prefix=key_prefix, ttl_seconds=60)
    assert await resolver.phone("default", "123456789@lid") == "5511987650052"
    assert await resolver.phone("default", "123456789@lid") == "5511987650052"
    assert route.call_count == 1
    assert route.calls[0].request.headers["x-api-key"] == "k"
    key = WahaSessionKeys("default", key_prefix).lid("123456789@lid")
    assert await aredis.get(key) == b"5511987650052"
    assert 0 < await aredis.ttl(key) <= 60
    # A phone chat id needs no lookup at all.
    assert await resolver.phone("default", "5511900000001@c.us") == "5511900000001"
    assert route.call_count == 1
    await waha.aclose()


@respx.mock
async def test_unknown_lid_is_cached_briefly_and_waha_failure_is_not_cached(
    aredis, key_prefix
) -> None:
    unknown = respx.get(f"{WAHA}/api/default/lids/111%40lid").mock(
        return_value=httpx.Response(200, json={"lid": "111@lid", "pn": None})
    )
    broken = respx.get(f"{WAHA}/api/default/lids/222%40lid").mock(
        return_value=httpx.Response(500, json={"statusCode": 500, "message": "boom"})
    )
    waha = WahaClient(WAHA)
    resolver = PhoneResolver(aredis, waha, prefix=key_prefix, ttl_seconds=36000)
    assert await resolver.phone("default", "111@lid") is None
    assert await resolver.phone("default", "111@lid") is None
    assert unknown.call_count == 1
    assert 0 < await aredis.ttl(WahaSessionKeys("default", key_prefix).lid("111@lid")) <= 3600
    assert await resolver.phone("default", "222@lid") is None
    assert await resolver.phone("default", "222@lid") is None
    assert broken.call_count == 2
    assert await aredis.exists(WahaSessionKeys("default", key_prefix).lid("222@lid")) == 0
    await waha.aclose()


def test_a_raw_phone_jid_is_the_same_conversation_as_its_c_us_form() -> None:
    """One person, one conversation: WAHA sends to and echoes our replies as `@c.us`, so a
    conversation keyed by the raw `@s.whatsapp.net` jid never saw its replies' echoes (found
    by an audit: after a crash its reply was sent twice)."""
    assert conversation_token("default", "5511987650001@s.whatsapp.net") == (
        "default|5511987650001@c.us"
    )
    assert conversation_token("default", "5511987650001:22@s.whatsapp.net") == (
        "default|5511987650001@c.us"
    )
    for other in ("5511987650001@c.us", "200000000000001@lid", "1203630@g.us", "x@s.whatsapp.net"):
        assert conversation_token("default", other) == f"default|{other}"


async def test_a_message_written_with_the_raw_jid_joins_the_c_us_conversation(
    aredis, key_prefix, waha, make_harness
) -> None:
    harness = make_harness()
    await harness.webhook(text_message("5511987650001@c.us", "oi"))
    await harness.drain()
    await harness.webhook(text_message("5511987650001@s.whatsapp.net", "Ana"))
    await harness.drain()
    # One conversation: the name answers the greeting, and the replies go to @c.us.
    state = await load_state(
        aredis, engine_keys_for("default", "5511987650001@c.us", 1, key_prefix).state
    )
    assert state.collected.get("name") == "Ana"
    assert len(waha.to("5511987650001@c.us")) == 2
    # No conversation of the raw form (the dedupe of its message id names it, as any id).
    assert await aredis.keys(f"{key_prefix}:*default|5511987650001@c.us*")
    assert await aredis.keys(f"{key_prefix}:*default|5511987650001@s.whatsapp.net*") == []
