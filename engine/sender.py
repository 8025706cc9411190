"""The sender: delivers each conversation's outbox in order through the outbound API, the way
WAHA advises against bans: mark seen, type for a while (longer for longer texts, capped by
WSM_TYPING_DELAY_MAX_MS), then send.

- One sender at a time per conversation: a delivery lock (`...:sending`, SET NX PX) keeps two
  processes from sending the same reply; order inside a chat is the outbox's order.
- A reply leaves the outbox only after WAHA's 201 (outbox_sent.lua), so a crash before that
  sends it again later: at least once. The residual duplicate window is a crash (or a lost
  answer: timeout) after WAHA accepted the request and before outbox_sent.lua ran; see
  docs/conversations.md.
- Network errors, 5xx, 429: retried with exponential backoff and jitter (outbox_retry.lua),
  dead-lettered after WSM_SEND_MAX_ATTEMPTS. 422: the session's outbox is parked until a
  session.status WORKING. Any other 4xx: dead letter with WAHA's answer (outbox_dead.lua).
- Sends per WAHA session are rate limited (send_rate_take.lua, a token bucket in Redis).
- The id WAHA gives each send is kept, so its echo on `message.any` is known to be ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.metrics import OUTBOX_SENDS
from engine.outbox import OutboxEntry
from engine.waha_client import (
    Outbound,
    SentMessage,
    WahaError,
    WahaRetryable,
    WahaSessionNotWorking,
    WahaTerminal,
)
from shared.keys import (
    EngineConversationKeys,
    ShardKeys,
    WahaSessionKeys,
    all_shards,
    outbox_pending_key,
    shard_of,
    split_conversation_token,
)
from shared.lua import LuaScript

log = logging.getLogger(__name__)

OUTBOX_SENT = LuaScript.named("outbox_sent")
OUTBOX_RETRY = LuaScript.named("outbox_retry")
OUTBOX_DEAD = LuaScript.named("outbox_dead")
OUTBOX_SETTLE = LuaScript.named("outbox_settle")
SEND_RATE_TAKE = LuaScript.named("send_rate_take")

# How long our own send ids are remembered to recognise their echoes (message.any).
OURS_TTL_SECONDS = 24 * 3600
# A parked session's conversations are looked at again this often (WORKING also wakes them).
PARKED_RECHECK_MS = 5000
# How long a reply WAHA accepted is kept trying to be recorded while Redis is away (longer than
# any outage the product rides out: WAHA's own retry window is about 30 s).
RECORD_SENT_PATIENCE_SECONDS = 300.0
# Redis cannot be reached right now (BusyLoadingError, replaying the append-only file after a
# restart, is a ConnectionError); not the builtin TimeoutError, which means something else.
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)


@dataclass(frozen=True, slots=True)
class SenderConfig:
    prefix: str
    shards: int
    typing_delay_max_ms: int = 3000
    typing_ms_per_char: int = 35
    sends_per_second: float = 20.0
    burst: int = 10
    max_attempts: int = 12
    retry_base_ms: int = 500
    retry_max_ms: int = 60_000
    # Longer than one reply's worst case (typing pause + four WAHA calls at their timeout).
    lock_ms: int = 60_000


@dataclass(frozen=True, slots=True)
class InflightSend:
    """What `…:inflight:<chat>` holds while a reply is being sent: which reply, its text and
    when the attempt began."""

    mid: str
    text: str
    at_ms: int

    def encode(self) -> str:
        return orjson.dumps({"mid": self.mid, "text": self.text, "at": self.at_ms}).decode()

    @classmethod
    def decode(cls, raw: bytes | str) -> InflightSend:
        """A marker; one written before markers named their reply (plain text) has no mid."""
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            return cls("", text, 0)
        return cls(str(value.get("mid", "")), str(value.get("text", "")), int(value.get("at", 0)))


def typing_pause_ms(text: str, per_char_ms: int, cap_ms: int) -> int:
    if cap_ms <= 0:
        return 0
    return min(cap_ms, 300 + per_char_ms * len(text))


def backoff_ms(attempt: int, base_ms: int, max_ms: int, retry_after: float | None = None) -> int:
    """Exponential backoff with "equal jitter": half fixed, half random, so retries of many
    conversations after one WAHA outage do not arrive together."""
    ceiling = min(max_ms, base_ms * 2 ** max(0, attempt - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, retry_after * 1000)
    return int(delay)


def now_ms() -> int:
    return int(time.time() * 1000)


class Sender:
    def __init__(self, redis: Any, outbound: Outbound, config: SenderConfig) -> None:
        self._redis = redis
        self._out = outbound
        self.config = config
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: set[str] = set()

    # --- waking ----------------------------------------------------------------------------
    def kick(self, token: str) -> None:
        """Deliver a conversation's outbox soon, in this process (after a handler's commit)."""
        if token in self._active:
            return
        task = asyncio.get_running_loop().create_task(self.deliver(token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def sweep_once(self, limit: int = 200) -> int:
        """Start deliveries for every due conversation (after a crash, a backoff, a park)."""
        started = 0
        for shard in all_shards(self.config.shards, self.config.prefix):
            due = await self._redis.zrangebyscore(
                outbox_pending_key(shard), "-inf", now_ms(), start=0, num=limit
            )
            for raw in due:
                token = raw.decode() if isinstance(raw, bytes) else str(raw)
                if token not in self._active:
                    self.kick(token)
                    started += 1
        return started

    async def wake_session(self, session: str) -> None:
        """A session is WORKING again: make its parked conversations due now."""
        await self._redis.delete(WahaSessionKeys(session, self.config.prefix).parked)
        for shard in all_shards(self.config.shards, self.config.prefix):
            key = outbox_pending_key(shard)
            members = await self._redis.zrange(key, 0, -1)
            tokens = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
            mine = [t for t in tokens if split_conversation_token(t)[0] == session]
            if mine:
                await self._redis.zadd(key, dict.fromkeys(mine, now_ms()))
        await self.sweep_once()

    async def drain(self) -> None:
        """Wait for the deliveries under way in this process (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- one conversation ------------------------------------------------------------------
    async def deliver(self, token: str) -> None:
        if token in self._active:
            return
        self._active.add(token)
        try:
            await self._deliver(token)
        except Exception:
            # Redis trouble: the pending index still has this conversation; a sweep retries.
            log.exception("delivery failed", extra={"conversation": token})
        finally:
            self._active.discard(token)

    def _keys(self, token: str) -> EngineConversationKeys:
        shard = ShardKeys(shard_of(token, self.config.shards), self.config.prefix)
        return EngineConversationKeys(shard.conversation(token))

    async def _deliver(self, token: str) -> None:
        keys = self._keys(token)
        session, _ = split_conversation_token(token)
        session_keys = WahaSessionKeys(session, self.config.prefix)
        lock = uuid.uuid4().hex
        if not await self._redis.set(keys.sending, lock, nx=True, px=self.config.lock_ms):
            return  # another process is delivering this conversation
        seen_marked = False
        try:
            while True:
                head = await self._redis.lindex(keys.outbox, 0)
                if head is None:
                    return
                if await self._redis.exists(session_keys.parked):
                    await self._redis.zadd(
                        keys.outbox_pending, {token: now_ms() + PARKED_RECHECK_MS}
                    )
                    return
                wait = await self._rate_wait(session_keys)
                if wait > 0:
                    await asyncio.sleep(wait / 1000)
                    continue
                entry = OutboxEntry.decode(head)
                outcome = await self._send_one(keys, session_keys, token, entry, seen_marked)
                if outcome == "stop":
                    return
                seen_marked = seen_marked or entry.mark_seen
                # Still ours for another reply's worth of time.
                await self._redis.pexpire(keys.sending, self.config.lock_ms)
        finally:
            await OUTBOX_SETTLE(
                self._redis, [keys.sending, keys.outbox, keys.outbox_pending], [lock, token]
            )

    async def _rate_wait(self, session_keys: WahaSessionKeys) -> int:
        if self.config.sends_per_second <= 0:
            return 0
        return int(
            await SEND_RATE_TAKE(
                self._redis,
                [session_keys.rate],
                [self.config.sends_per_second, self.config.burst],
            )
        )

    async def _send_one(
        self,
        keys: EngineConversationKeys,
        session_keys: WahaSessionKeys,
        token: str,
        entry: OutboxEntry,
        seen_marked: bool,
    ) -> str:
        session = session_keys.session
        try:
            if entry.mark_seen and not seen_marked:
                await self._courtesy(self._out.send_seen(session, entry.chat_id))
            pause = typing_pause_ms(
                entry.text, self.config.typing_ms_per_char, self.config.typing_delay_max_ms
            )
            if pause > 0:
                await self._courtesy(self._out.start_typing(session, entry.chat_id))
                await asyncio.sleep(pause / 1000)
                await self._courtesy(self._out.stop_typing(session, entry.chat_id))
            # Marks a send under way: an echo that overtakes WAHA's answer is still ours, and
            # one that arrives after this sender died records the send (see settle_echo).
            await self._redis.set(
                session_keys.inflight(entry.chat_id),
                InflightSend(entry.mid, entry.text, now_ms()).encode(),
                px=self.config.lock_ms,
            )
            sent = await self._out.send_text(session, entry.chat_id, entry.text)
        except WahaSessionNotWorking as exc:
            await self._redis.set(session_keys.parked, exc.answer or "422")
            await self._redis.zadd(keys.outbox_pending, {token: now_ms() + PARKED_RECHECK_MS})
            OUTBOX_SENDS.labels("parked").inc()
            log.warning("session not working: outbox parked", extra={"session": session})
            return "stop"
        except WahaRetryable as exc:
            attempt = entry.attempts + 1
            if attempt >= self.config.max_attempts:
                await self._dead(keys, token, entry, exc)
                return "next"
            due = now_ms() + backoff_ms(
                attempt, self.config.retry_base_ms, self.config.retry_max_ms, exc.retry_after
            )
            await OUTBOX_RETRY(
                self._redis,
                [keys.outbox, keys.outbox_pending],
                [entry.mid, due, token, str(exc)[:500]],
            )
            OUTBOX_SENDS.labels("retry").inc()
            return "stop"
        except WahaTerminal as exc:
            await self._dead(keys, token, entry, exc)
            return "next"
        await self._record_sent(keys, session_keys, token, entry, sent)
        OUTBOX_SENDS.labels("sent").inc()
        return "next"

    async def _record_sent(
        self,
        keys: EngineConversationKeys,
        session_keys: WahaSessionKeys,
        token: str,
        entry: OutboxEntry,
        sent: SentMessage,
    ) -> None:
        """WAHA accepted the reply: take it off the outbox, retrying while Redis is away (a
        restart, an outage). Giving up would leave it at the head of the outbox, to be sent a
        second time; both steps are safe to repeat (outbox_sent.lua answers 0 to a repeat)."""
        deadline = time.monotonic() + RECORD_SENT_PATIENCE_SECONDS
        delay = 0.05
        while True:
            try:
                await self._mark_sent(keys, session_keys, token, entry, sent)
                break
            except REDIS_UNAVAILABLE:
                if time.monotonic() > deadline:
                    raise
                if delay == 0.05:
                    log.warning("redis away: recording a sent reply", extra={"mid": entry.mid})
                await asyncio.sleep(delay)
                # Short steps: once Redis is back, this must win the race against a sweeper
                # that finds the delivery lock expired.
                delay = min(delay * 2, 0.2)
        # Only a hint for echoes that overtake WAHA's answer; it expires on its own.
        with contextlib.suppress(*REDIS_UNAVAILABLE):
            await self._redis.delete(session_keys.inflight(entry.chat_id))

    async def _mark_sent(
        self,
        keys: EngineConversationKeys,
        session_keys: WahaSessionKeys,
        token: str,
        entry: OutboxEntry,
        sent: SentMessage,
    ) -> int:
        """Remember the id as ours (before the reply leaves the outbox, so a later echo is
        always recognised), then take the reply off the outbox. 0: it was recorded already."""
        short_id = sent.short_id
        if short_id:
            await self._redis.set(session_keys.ours(short_id), "1", ex=OURS_TTL_SECONDS)
        removed: int = await OUTBOX_SENT(
            self._redis,
            [keys.outbox, keys.history_meta, keys.outbox_pending],
            [entry.mid, sent.id, short_id, token],
        )
        return removed

    async def settle_echo(
        self, token: str, marker: InflightSend, sent: SentMessage, echo_at_ms: int
    ) -> bool:
        """The echo (`message.any`, fromMe) of a reply whose send was under way and is not
        recorded: WhatsApp has it, so it is recorded now and never sent again. This closes the
        window where a sender dies (SIGKILL, or Redis away until it is killed) after WAHA
        accepted a send and before recording it: the dead sender's lock keeps the reply from
        being sent again until it expires, and the echo, durable like every webhook, arrives
        well before. True when the reply was taken off the outbox here.

        Only the reply that the marker names, at the head of the outbox, with the echo's text,
        is recorded. An echo of an older send with the same text (possible only after that
        send was made again by another sender, once the lock expired) is at least a lock's
        lifetime older than the marker and is told apart by its timestamp."""
        keys = self._keys(token)
        head = await self._redis.lindex(keys.outbox, 0)
        if head is None or not marker.mid:
            return False
        entry = OutboxEntry.decode(head)
        if entry.mid != marker.mid or entry.text != marker.text:
            return False
        if echo_at_ms and echo_at_ms < marker.at_ms - self.config.lock_ms // 2:
            return False
        session, _ = split_conversation_token(token)
        session_keys = WahaSessionKeys(session, self.config.prefix)
        if not await self._mark_sent(keys, session_keys, token, entry, sent):
            return False
        OUTBOX_SENDS.labels("sent").inc()
        log.warning(
            "a send was recorded from its echo (its sender stopped before recording it)",
            extra={"conversation": token, "mid": entry.mid},
        )
        return True

    async def _courtesy(self, call: Any) -> None:
        """sendSeen and typing are courtesy: only a 422 (session down) stops the reply."""
        try:
            await call
        except WahaSessionNotWorking:
            raise
        except WahaError as exc:
            log.info("courtesy call failed", extra={"error": str(exc)})

    async def _dead(
        self, keys: EngineConversationKeys, token: str, entry: OutboxEntry, exc: WahaError
    ) -> None:
        reason = orjson.dumps({"status": exc.status, "answer": exc.answer, "error": str(exc)})
        await OUTBOX_DEAD(
            self._redis,
            [keys.outbox, keys.outbox_dlq, keys.history_meta, keys.outbox_pending],
            [entry.mid, token, reason, now_ms()],
        )
        OUTBOX_SENDS.labels("dead").inc()
        log.warning("reply dead-lettered", extra={"conversation": token, "status": exc.status})


async def run_sweeper(sender: Sender, stop: asyncio.Event, interval: float = 0.25) -> None:
    """Deliver what is due until `stop` is set."""
    while not stop.is_set():
        try:
            await sender.sweep_once()
        except Exception:
            log.exception("outbox sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
