"""Conversation identity: chat id forms, ignored chats, and lid -> phone through WAHA, cached."""

from __future__ import annotations

import httpx
import respx

from engine.identity import ChatKind, PhoneResolver, chat_kind, is_ignored, phone_of, send_target
from engine.waha_client import WahaClient
from shared.keys import WahaSessionKeys

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
