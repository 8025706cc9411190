"""Canned replies: short texts admins keep, inserted in the reply box by typing `/shortcut`."""

from __future__ import annotations

import re

from shared.keys import ConsoleKeys
from shared.redis_client import RedisClient
from shared.text import as_text

SHORTCUT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,29}$")
MAX_TEXT = 4096


class CannedError(ValueError):
    pass


class CannedReplies:
    def __init__(self, redis: RedisClient, keys: ConsoleKeys) -> None:
        self._redis = redis
        self.keys = keys

    async def all(self) -> list[tuple[str, str]]:
        raw = await self._redis.hgetall(self.keys.canned)
        return sorted((as_text(k), as_text(v)) for k, v in raw.items())

    async def put(self, shortcut: str, text: str) -> None:
        shortcut = shortcut.strip().lstrip("/").lower()
        text = text.strip()
        if not SHORTCUT.match(shortcut):
            raise CannedError("shortcut: 1-30 of a-z 0-9 _ -")
        if not text or len(text) > MAX_TEXT:
            raise CannedError(f"text: 1-{MAX_TEXT} characters")
        await self._redis.hset(self.keys.canned, shortcut, text)

    async def remove(self, shortcut: str) -> None:
        await self._redis.hdel(self.keys.canned, shortcut)
