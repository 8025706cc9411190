"""Who a conversation is with.

A conversation is (WAHA session, chat id), exactly as the gateway routed it: the queue, the
state and the history all hang off that pair, so they share one hash tag. WhatsApp names a
person three ways: `<phone>@c.us` (WAHA's usual form), `<phone>@s.whatsapp.net` (the raw jid
some engines show) and `<n>@lid` (a privacy id that hides the number). A lid is mapped to a phone
number with WAHA's `GET /api/{session}/lids/{lid}` when WAHA knows it, and the answer is cached
in Redis, so the operator sees a number and the lookup is made once per lid, not per message.

Groups (`@g.us`), `status@broadcast`, broadcast lists and channels are not conversations with a
customer; they are ignored by default (settings WSM_IGNORE_GROUPS, WSM_IGNORE_BROADCASTS).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Protocol

from shared.keys import WahaSessionKeys, conversation_token
from shared.redis_client import RedisClient
from shared.text import as_text

log = logging.getLogger("wsm.engine.identity")


class ChatKind(enum.StrEnum):
    PHONE = "phone"  # @c.us, @s.whatsapp.net
    LID = "lid"  # @lid
    GROUP = "group"  # @g.us
    BROADCAST = "broadcast"  # status@broadcast, lists (@broadcast), channels (@newsletter)
    OTHER = "other"


def chat_kind(chat_id: str) -> ChatKind:
    _, _, server = chat_id.rpartition("@")
    if server in {"c.us", "s.whatsapp.net"}:
        return ChatKind.PHONE
    if server == "lid":
        return ChatKind.LID
    if server == "g.us":
        return ChatKind.GROUP
    if server in {"broadcast", "newsletter"}:
        return ChatKind.BROADCAST
    return ChatKind.OTHER


def phone_of(chat_id: str) -> str | None:
    """The digits of a phone-number chat id (`5511...@c.us` -> `5511...`); None otherwise.

    A jid may carry a device suffix (`5511...:22@s.whatsapp.net`): it is not part of the number.
    """
    if chat_kind(chat_id) is not ChatKind.PHONE:
        return None
    user = chat_id.rpartition("@")[0].partition(":")[0]
    return user if user.isdigit() else None


def send_target(chat_id: str) -> str:
    """The chat id to send to: WAHA's canonical `@c.us` for a raw `@s.whatsapp.net` jid."""
    phone = phone_of(chat_id)
    return f"{phone}@c.us" if phone else chat_id


@dataclass(frozen=True, slots=True)
class Conversation:
    session: str
    chat_id: str

    @property
    def token(self) -> str:
        return conversation_token(self.session, self.chat_id)

    @property
    def kind(self) -> ChatKind:
        return chat_kind(self.chat_id)


def is_ignored(chat_id: str, *, ignore_groups: bool, ignore_broadcasts: bool) -> bool:
    kind = chat_kind(chat_id)
    if kind is ChatKind.GROUP:
        return ignore_groups
    if kind is ChatKind.BROADCAST:
        return ignore_broadcasts
    # `_session` (session-level events) and unknown servers are never customer conversations.
    return kind is ChatKind.OTHER


class LidLookup(Protocol):
    async def phone_for_lid(self, session: str, lid: str) -> str | None: ...


class PhoneResolver:
    """The phone number behind a chat id, with lid answers cached in Redis.

    A failed lookup (WAHA down, lid unknown) is not an error for the conversation: the customer
    is still answered on the chat id they wrote from. Only definite answers are cached: a known
    number for WSM_LID_CACHE_SECONDS, "WAHA does not know" for a tenth of that (WAHA may learn it).
    """

    _UNKNOWN = "-"

    def __init__(
        self, redis: RedisClient, lookup: LidLookup, *, prefix: str, ttl_seconds: int
    ) -> None:
        self._redis = redis
        self._lookup = lookup
        self._prefix = prefix
        self._ttl = ttl_seconds

    async def phone(self, session: str, chat_id: str) -> str | None:
        kind = chat_kind(chat_id)
        if kind is ChatKind.PHONE:
            return phone_of(chat_id)
        if kind is not ChatKind.LID:
            return None
        key = WahaSessionKeys(session, self._prefix).lid(chat_id)
        cached = await self._redis.get(key)
        if cached is not None:
            value = as_text(cached)
            return None if value == self._UNKNOWN else value
        try:
            pn = await self._lookup.phone_for_lid(session, chat_id)
        except Exception as exc:  # any WAHA failure: answer without the number, retry next time
            log.warning("lid lookup failed", extra={"session": session, "error": repr(exc)})
            return None
        phone = phone_of(pn) if pn else None
        if phone:
            await self._redis.set(key, phone, ex=self._ttl)
        else:
            await self._redis.set(key, self._UNKNOWN, ex=max(60, self._ttl // 10))
        return phone
