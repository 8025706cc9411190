"""What one conversation may cost: agent turns per minute, model tokens per day, and bursts.

- **Turns.** At most WSM_AGENT_TURNS_PER_MINUTE agent turns start per conversation in any 60 s
  (a sliding window: a sorted set of the turns' start times), so a customer flooding the chat
  cannot make the model run for every message.
- **Tokens.** At most WSM_AGENT_TOKENS_PER_DAY model tokens per conversation per UTC day,
  counted from every response's `usage` (failed turns included: they cost too). The turn that
  crosses the budget finishes; the next one goes to the menu.
- **Bursts.** `customer_messages_behind` peeks at the conversation's queue: consecutive
  customer messages already waiting behind the one being handled. The fallback brain answers
  only the last of them, so "oi" / "quero marcar" / "amanhã" queued together get one answer
  (the earlier ones reach the model as history). No timer: only what is already queued.

Past a limit the fallback brain answers on the menu (engine/agent/fallback.py), counts it in
`wsm_llm_fallbacks_total{reason="turn_limit"|"token_limit"}` and records the limit in the
conversation's collected data (`agent_limit`), which the operator API shows with its state.
The menu is shown for it once a minute (`quiet`, `agent_limit_told`), not once a message: the
rest of a flood is recorded and goes unanswered, but for the menu's own steps (a number, a
confirmation), which it answers as ever.

The counters are plain keys outside the conversation's hash tag, written without the commit:
they expire on their own (a minute, two days), and the LGPD erase deletes them (`limit_keys`:
they are named after a digest of the conversation, a pseudonym of the customer). A message
handled twice after a crash counts its turn twice, which errs on the cheap side. One
conversation is handled by one worker at a time (the queue's lease), so the read-then-add
below does not race with itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime

from engine.identity import Conversation
from shared import clock
from shared.envelope import InvalidRecord, decode_record
from shared.keys import AgentLimitKeys, keys_for_conversation
from shared.redis_client import RedisClient

TURN_WINDOW_MS = 60_000
TOKENS_KEY_SECONDS = 2 * 24 * 3600
# How far behind the current message a burst is looked for (one LRANGE, one HMGET).
BURST_PEEK = 50
# Events that may sit between two customer messages without ending their burst: delivery
# statuses, and `message.any` repeating a customer's `message`.
_TRANSPARENT_EVENTS = {"message.ack", "message.ack.group"}

TURN_LIMIT = "turn_limit"
TOKEN_LIMIT = "token_limit"
# In the conversation's collected data while it is on the menu because of its own limits: which
# limit (one of the two above), cleared when the model answers again.
AGENT_LIMIT = "agent_limit"
# Beside it: when the customer was last shown the menu for that limit (epoch ms).
AGENT_LIMIT_TOLD = "agent_limit_told"


def _utc_day(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y%m%d")


def limit_keys(prefix: str, token: str, now_ms: int) -> list[str]:
    """Every limit key of a conversation that may exist at `now_ms` (what the LGPD erase
    deletes): its turns and transcriptions windows, and its token count of each UTC day whose
    key may not have expired yet (TOKENS_KEY_SECONDS after its day's last count), and of the
    next day (another process's clock may run ahead)."""
    keys = AgentLimitKeys(prefix)
    days = {
        _utc_day(now_ms + offset)
        for offset in range(-TOKENS_KEY_SECONDS * 1000, 2 * clock.DAY_MS, clock.DAY_MS)
    }
    return [
        keys.turns(token),
        keys.transcriptions(token),
        *(keys.tokens(token, day) for day in sorted(days)),
    ]


@dataclass(eq=False)
class ConversationLimits:
    redis: RedisClient
    _: KW_ONLY
    prefix: str
    shards: int
    turns_per_minute: int
    tokens_per_day: int
    clock_ms: Callable[[], int] = clock.now_ms

    def __post_init__(self) -> None:
        self._keys = AgentLimitKeys(self.prefix)

    # --- keys (shared/keys.py, AgentLimitKeys) ---------------------------------------------
    def turns_key(self, token: str) -> str:
        return self._keys.turns(token)

    def tokens_key(self, token: str, now_ms: int | None = None) -> str:
        at = self.clock_ms() if now_ms is None else now_ms
        return self._keys.tokens(token, _utc_day(at))

    # --- turns and tokens ------------------------------------------------------------------
    async def admit(self, token: str) -> str | None:
        """None when an agent turn may start now (and counts it); else the limit reached."""
        now = self.clock_ms()
        if self.tokens_per_day > 0:
            used = await self.redis.get(self.tokens_key(token, now))
            if used is not None and int(used) >= self.tokens_per_day:
                return TOKEN_LIMIT
        if not await self._take_minute_slot(self.turns_key(token), now):
            return TURN_LIMIT
        return None

    def quiet(self, collected: Mapping[str, str], limit: str) -> bool:
        """Whether a message past `limit` goes unanswered: the customer was shown the menu for
        this limit less than a minute ago (a flood gets one answer a minute, not one each)."""
        told = collected.get(AGENT_LIMIT_TOLD, "")
        if collected.get(AGENT_LIMIT) != limit or not told.isdigit():
            return False
        return self.clock_ms() - int(told) < TURN_WINDOW_MS

    def told(self, limit: str) -> dict[str, str]:
        """The collected data of a message past `limit` answered with the menu now."""
        return {AGENT_LIMIT: limit, AGENT_LIMIT_TOLD: str(self.clock_ms())}

    async def admit_transcription(self, token: str) -> bool:
        """Whether a voice note of this conversation may be transcribed now (and counts it):
        as many a minute as agent turns (WSM_AGENT_TURNS_PER_MINUTE), in a window of their own,
        so that a voice note's transcription and its agent turn are not counted twice against
        one budget, and a flood of voice notes cannot run up Groq's bill."""
        return await self._take_minute_slot(self._keys.transcriptions(token), self.clock_ms())

    async def _take_minute_slot(self, key: str, now: int) -> bool:
        """One more in the last minute's window at `key`, unless turns_per_minute are used."""
        if self.turns_per_minute <= 0:
            return True
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(key, 0, now - TURN_WINDOW_MS)
        pipe.zcard(key)
        _, started = await pipe.execute()
        if int(started) >= self.turns_per_minute:
            return False
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(key, {f"{now}:{uuid.uuid4().hex[:8]}": now})
        pipe.pexpire(key, TURN_WINDOW_MS)
        await pipe.execute()
        return True

    async def add_tokens(self, token: str, tokens: int) -> None:
        if self.tokens_per_day <= 0 or tokens <= 0:
            return
        key = self.tokens_key(token)
        pipe = self.redis.pipeline(transaction=False)
        pipe.incrby(key, tokens)
        pipe.expire(key, TOKENS_KEY_SECONDS)
        await pipe.execute()

    async def tokens_used(self, token: str) -> int:
        used = await self.redis.get(self.tokens_key(token))
        return int(used) if used is not None else 0

    # --- bursts ----------------------------------------------------------------------------
    async def customer_messages_behind(self, conversation: Conversation) -> int:
        """How many customer messages wait in the queue right behind the one being handled
        (the queue's head), before anything else the conversation must see first."""
        keys = keys_for_conversation(
            conversation.session, conversation.chat_id, self.shards, self.prefix
        )
        # Oldest at the right: -1 is the head (the message being handled), -2 the next.
        ids = await self.redis.lrange(keys.messages, -(BURST_PEEK + 1), -2)
        if not ids:
            return 0
        ids = list(reversed(ids))
        records = await self.redis.hmget(keys.bodies, ids)
        behind = 0
        for record in records:
            if record is None:
                break
            try:
                event = decode_record(record if isinstance(record, bytes) else record.encode())
            except InvalidRecord:
                break
            if event.event in _TRANSPARENT_EVENTS:
                continue
            payload = event.document().get("payload") or {}
            if event.event == "message.any" and payload.get("fromMe") is not True:
                continue
            if event.event != "message" or payload.get("fromMe") is True:
                break
            behind += 1
        return behind
