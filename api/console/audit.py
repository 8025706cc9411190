"""The audit trail of a conversation: who took, sent, closed or handed back what, and when.

One Redis stream per conversation (`{console}:audit:<conv>`), kept as long as the
conversation's history (WSM_HISTORY_RETENTION_DAYS after its last entry) and shown on the
conversation's page. Only what was actually queued is recorded (a repeated form is not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.clock import now_ms
from shared.keys import ConsoleKeys
from shared.redis_client import RedisClient
from shared.text import as_text

ACTIONS = ("took", "sent", "closed", "handed_back")
# Most entries kept per conversation (the stream is trimmed past it).
MAX_ENTRIES = 2000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    at: int  # epoch ms
    actor: str
    action: str
    detail: str


class Audit:
    def __init__(self, redis: RedisClient, keys: ConsoleKeys, retention_seconds: int) -> None:
        self._redis = redis
        self.keys = keys
        self.retention_seconds = retention_seconds

    async def record(self, token: str, actor: str, action: str, detail: str = "") -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        key = self.keys.audit(token)
        await self._redis.xadd(
            key,
            {"at": str(now_ms()), "actor": actor, "action": action, "detail": detail},
            maxlen=MAX_ENTRIES,
            approximate=True,
        )
        await self._redis.expire(key, self.retention_seconds)

    async def entries(self, token: str, count: int = 200) -> list[AuditEntry]:
        # Any: redis-py's stubs type stream replies as optional, entries' fields too.
        raw: Any = await self._redis.xrevrange(self.keys.audit(token), count=count)
        out = []
        for entry_id, values in reversed(raw):
            fields = {as_text(k): as_text(v) for k, v in values.items()}
            out.append(
                AuditEntry(
                    as_text(entry_id),
                    int(fields.get("at") or 0),
                    fields.get("actor", ""),
                    fields.get("action", ""),
                    fields.get("detail", ""),
                )
            )
        return out
